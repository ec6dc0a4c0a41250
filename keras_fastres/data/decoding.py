"""One image file to uint8 RGB pixels of a fixed size, as training and predict read it
(`decode_image`), and the worker processes that decode a folder into a memory-mapped array.

Every still format Pillow opens is read (PNG, JPEG, BMP, GIF's first frame, WebP, TIFF...);
a JPEG's EXIF orientation is applied (phones store photos sideways with a tag), so an image is
trained on and classified the way it is shown. Three ways to reach the size (`RESIZE_MODES`):

    stretch  the whole image scaled to H x W, whatever its aspect (CIFAR-like data)
    crop     the largest centred window of the target's aspect, scaled to H x W
    pad      the whole image scaled to fit inside H x W, centred on zeros (letterbox)

Scaling is Pillow's bilinear filter, which widens with the reduction (antialiased).

This module imports neither TensorFlow nor this package: it runs as the decoding worker,

    python -I decoding.py        (its work as JSON lines on stdin; see `work`)

so that a worker starts in a fraction of a second (a worker importing TensorFlow would take
seconds) and Pillow's header parsing, which holds the GIL, runs on every core.
"""

import io
import json
import os
import selectors
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps

RESIZE_MODES = ("stretch", "crop", "pad")
MAX_PIXELS = 64 * 2 ** 20  # 64 megapixels: 8192x8192, or a 50-megapixel camera's photo
ORIENTATION = 0x0112  # the EXIF tag
CHUNK = 64  # files per progress report of a worker
FAR_ASPECT = 2.0  # an image whose aspect is this far from the target's is counted as such
FAR_SMALLER = 0.5  # ... and one with a side under this part of the target's


def image_suffixes():
    """The file name endings (lower case, with the dot) of every format Pillow can open."""
    Image.init()
    return tuple(sorted(suffix for suffix, name in Image.registered_extensions().items()
                        if name in Image.OPEN))


def image_size_pair(image_size):
    """(height, width) of an `image_size` given as one int or a one-item sequence (square), or a
    (height, width) pair (`--image-size H [W]`), checked."""
    try:
        pair = (image_size,) if isinstance(image_size, int) else tuple(image_size)
    except TypeError:  # not a sequence
        pair = ()
    pair = pair * 2 if len(pair) == 1 else pair
    if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 4
                             for s in pair):
        raise ValueError(f"image size must be one integer (square) or a (height, width) pair, "
                         f"each at least 4 (the network halves it twice); got {image_size!r}.")
    return pair


def check_resize(resize):
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}.")


def _summary(error):
    """One line: the error's type and first line (as keras_fastres.errors.summary)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def decode_image(path, height, width, max_pixels=MAX_PIXELS, resize="stretch"):
    """uint8 `(height, width, 3)` pixels of an image file: upright (EXIF orientation), RGB
    (grayscale, 16-bit, palette and CMYK converted, alpha dropped), resized by `resize`. A
    ValueError saying why when the file cannot be used (not an image Pillow reads, damaged, or a
    header declaring more than `max_pixels` pixels, which is then not decoded)."""
    return _decode(path, height, width, max_pixels, resize)[0]


def _decode(path, height, width, max_pixels, resize):
    """`decode_image`'s pixels and the file's upright (columns, rows)."""
    image: Image.Image
    try:
        image = Image.open(path)  # reads the header only
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(_summary(error)) from None
    with image:
        columns, rows = image.size
        if columns * rows > max_pixels:
            raise ValueError(f"its header declares {columns}x{rows} pixels, more than "
                             f"{max_pixels:,}: not decoded (a decompression bomb?)")
        try:
            orientation = image.getexif().get(ORIENTATION, 1)
            sideways = orientation in (5, 6, 7, 8)
            if sideways:
                columns, rows = rows, columns
            if image.format == "JPEG" and (columns > width or rows > height):
                # Decoded at a smaller scale (1/2 to 1/8), never below the asked size.
                image.draft("RGB", (height, width) if sideways else (width, height))
            if orientation in range(2, 9):
                image = ImageOps.exif_transpose(image)
            if image.mode.startswith("I"):  # 16-bit grayscale: scaled to 8 bits, not clipped
                image = Image.fromarray(np.clip(np.round(
                    np.asarray(image, np.float64) / 257), 0, 255).astype(np.uint8), "L")
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(_resize(image, height, width, resize), np.uint8), (columns, rows)
        except (OSError, SyntaxError, ValueError, EOFError) as error:  # Pillow's "damaged"
            raise ValueError(_summary(error)) from None


def _resize(image, height, width, resize):
    columns, rows = image.size
    if resize == "crop" and columns * height != rows * width:
        if columns * height > rows * width:  # wider than the target: the centre columns
            kept = max(1, round(rows * width / height))
            left = (columns - kept) // 2
            image = image.crop((left, 0, left + kept, rows))
        else:
            kept = max(1, round(columns * height / width))
            top = (rows - kept) // 2
            image = image.crop((0, top, columns, top + kept))
    elif resize == "pad" and columns * height != rows * width:
        scale = min(width / columns, height / rows)
        inner = (max(1, round(columns * scale)), max(1, round(rows * scale)))
        canvas = Image.new("RGB", (width, height))
        canvas.paste(image.resize(inner, Image.Resampling.BILINEAR),
                     ((width - inner[0]) // 2, (height - inner[1]) // 2))
        return canvas
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return image


def odd_shape(columns, rows, height, width):
    """(far from the target's aspect, far smaller than the target) for an image's size."""
    ratio = (columns / rows) / (width / height)
    return (max(ratio, 1 / ratio) >= FAR_ASPECT,
            columns < FAR_SMALLER * width or rows < FAR_SMALLER * height)


def decode_into(images, rows_and_paths, height, width, max_pixels, resize, report):
    """Decodes each (row, path) into `images[row]`; `report(done, skipped, wide, small)` after
    every CHUNK files and after the last, with that chunk's count, its [(row, reason)] skipped and
    its counts of images far from the target's aspect and far smaller than it."""
    skipped, wide, small, done = [], 0, 0, 0
    for row, path in rows_and_paths:
        try:
            images[row], (columns, rows) = _decode(path, height, width, max_pixels, resize)
            far_aspect, far_smaller = odd_shape(columns, rows, height, width)
            wide, small = wide + far_aspect, small + far_smaller
        except ValueError as error:
            skipped.append((row, str(error)))
        done += 1
        if done == CHUNK:
            report(done, skipped, wide, small)
            skipped, wide, small, done = [], 0, 0, 0
    if done:
        report(done, skipped, wide, small)


def work(lines, out=sys.stdout):
    """The worker: the first of `lines` (JSON) is {"output": an .npy file of uint8
    (N, H, W, 3), "max_pixels", "resize"}; each next one a chunk of at most CHUNK files,
    {"rows": [...], "paths": [...]}, whose images it writes into their rows, then one JSON line
    to `out`: {"done", "skipped": [[row, reason]], "wide", "small"}. Ends with `lines`."""
    settings = json.loads(next(lines))
    images = np.load(settings["output"], mmap_mode="r+")
    height, width = images.shape[1:3]

    def report(done, skipped, wide, small):
        out.write(json.dumps({"done": done, "skipped": skipped, "wide": wide,
                              "small": small}) + "\n")
        out.flush()
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides
    for line in lines:
        chunk = json.loads(line)
        decode_into(images, zip(chunk["rows"], chunk["paths"]), height, width,
                    settings["max_pixels"], settings["resize"], report)
    images.flush()


def decode_files(paths, output, max_pixels=MAX_PIXELS, resize="stretch", workers=0,
                 progress=None):
    """Decodes `paths` into the rows of `output`, an .npy file of uint8 (N, H, W, 3); returns
    ([(row, reason)] of the files skipped, images far from the target's aspect, images far
    smaller than it). `workers`: 0 decodes in this process; N starts N worker processes, each
    sent chunks of CHUNK files as it finishes others. `progress(done)`: told the files done so
    far. Any
    exception here (Ctrl-C, SIGTERM raised as one) ends the workers before it propagates."""
    progress = progress or (lambda done: None)
    skipped, counts, done = [], [0, 0], 0

    def report(count, lost, wide, small):
        nonlocal done
        done += count
        skipped.extend(lost)
        counts[0] += wide
        counts[1] += small
        progress(done)
    if not workers:
        images = np.load(output, mmap_mode="r+")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            height, width = images.shape[1:3]
            decode_into(images, enumerate(map(str, paths)), height, width, max_pixels, resize,
                        report)
        images.flush()
    else:
        _decode_in_workers(paths, output, max_pixels, resize, workers, report)
    return sorted(skipped), counts[0], counts[1]


def _decode_in_workers(paths, output, max_pixels, resize, workers, report):
    """`workers` processes, each sent a chunk of files whenever it reports one done (two ahead,
    so that none waits): a busy core's worker takes fewer chunks, and all end together."""
    chunks = iter([(list(range(start, min(start + CHUNK, len(paths)))),
                    [str(path) for path in paths[start:start + CHUNK]])
                   for start in range(0, len(paths), CHUNK)])
    processes: dict[Any, Any] = {}  # the worker of each stdout
    errors: dict[Any, list[str]] = {}  # the lines of each stderr
    waiting: dict[Any, int] = {}  # chunks sent to each worker, not yet reported
    pending: dict[Any, bytes] = {}  # the unfinished line of each stream
    selector = selectors.DefaultSelector()

    def send(process):
        chunk = next(chunks, None)
        if chunk is None:
            if not waiting[process] and not process.stdin.closed:
                process.stdin.close()  # the worker ends
            return
        process.stdin.write(json.dumps({"rows": chunk[0], "paths": chunk[1]}) + "\n")
        process.stdin.flush()
        waiting[process] += 1

    def received(stream, line):
        if stream in errors:
            errors[stream].append(line)
            return
        result = json.loads(line)
        process = processes[stream]
        waiting[process] -= 1
        send(process)
        report(result["done"], [tuple(item) for item in result["skipped"]], result["wide"],
               result["small"])
    try:
        for _ in range(min(workers, -(-len(paths) // CHUNK))):
            # A session of its own: Ctrl-C reaches this process, which ends the workers. The
            # answers are read as raw bytes: a buffered reader could hold a second report
            # that select() then never announces, and both sides would wait.
            process: Any = subprocess.Popen(
                [sys.executable, "-I", __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, bufsize=0, start_new_session=True)
            process.stdin = io.TextIOWrapper(process.stdin, write_through=True)
            processes[process.stdout] = process
            errors[process.stderr] = []
            waiting[process] = 0
            process.stdin.write(json.dumps({"output": str(output), "max_pixels": max_pixels,
                                            "resize": resize}) + "\n")
            send(process)
            send(process)
            for stream in (process.stdout, process.stderr):
                pending[stream] = b""
                selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                *lines, pending[key.fileobj] = (pending[key.fileobj] + data).split(b"\n")
                for line in lines:
                    received(key.fileobj, line.decode("utf-8", "replace"))
        for process in processes.values():
            if process.wait() != 0:
                raise RuntimeError(f"A decoding worker failed (exit status {process.returncode})"
                                   f": {' '.join(errors[process.stderr][-5:]).strip()}")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                try:
                    stream.close()
                except OSError:  # a pipe to a killed worker
                    pass
        selector.close()


if __name__ == "__main__":
    work(iter(sys.stdin))
