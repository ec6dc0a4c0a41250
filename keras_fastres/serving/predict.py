"""Classify image files with an exported SavedModel, without a server.

    python -m keras_fastres.predict runs/cifar10-resnet110-type1/export cat.png ship.jpg --top 3

Any image size: images are resized (antialiased) to the model's input. Class names are CIFAR's
when the model has 10 or 100 classes.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_fastres.data import CLASS_NAMES
from keras_fastres.console import (HelpFormatter, check_positive_integers, positive_integer,
                                   program)


def find_saved_model(export_dir):
    """`export_dir` itself if it holds a SavedModel, else its highest numbered version."""
    root = Path(export_dir)
    if (root / "saved_model.pb").is_file():
        return root
    versions = sorted((int(p.name) for p in root.glob("*") if p.name.isdigit()
                       and (p / "saved_model.pb").is_file()), reverse=True)
    if not versions:
        raise FileNotFoundError(f"No SavedModel in {root} nor in a numbered version below it.")
    return root / str(versions[0])


def load_image(path, height, width):
    """uint8 [height, width, 3] pixels of a PNG, JPEG, GIF or BMP file."""
    try:
        image = tf.io.decode_image(tf.io.read_file(str(path)), channels=3,
                                   expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        raise ValueError(f"Cannot read {path} as a PNG, JPEG, GIF or BMP image: "
                         f"{error.message.splitlines()[0]}") from None
    if tuple(image.shape[:2]) != (height, width):
        image = tf.image.resize(image, (height, width), antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image


def check_image_files(image_paths):
    """A ValueError naming the first path that is not a readable file (before any model loads)."""
    for path in map(Path, image_paths):
        if path.is_dir():
            raise ValueError(f"{path} is a folder; give image files (e.g. {path}/*.png).")
        if not path.is_file():
            raise ValueError(f"{path}: no such image file.")


def predict(export_dir, image_paths, top=3):
    """[(path, [(class name, probability), ...top]), ...] for each image file."""
    check_positive_integers(top=top)
    check_image_files(image_paths)
    serve = tf.saved_model.load(str(find_saved_model(export_dir))).signatures["serving_default"]
    height, width = serve.structured_input_signature[1]["images"].shape[1:3]
    images = tf.stack([load_image(path, height, width) for path in image_paths])
    probabilities = serve(images=images)["probabilities"].numpy()
    names = {len(n): n for n in CLASS_NAMES.values()}.get(probabilities.shape[1])
    results = []
    for path, row in zip(image_paths, probabilities):
        best = np.argsort(row)[::-1][:top]
        results.append((path, [(names[i] if names else f"class {i}", float(row[i])) for i in best]))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog=program("keras_fastres.predict"),
                                     formatter_class=HelpFormatter,
                                     description="Top classes of image files.")
    parser.add_argument("export_dir", help="an exported SavedModel or its versioned base dir")
    parser.add_argument("images", nargs="+", help="PNG/JPEG/GIF/BMP files, any size")
    parser.add_argument("--top", type=positive_integer, default=3,
                        help="how many classes to print per image")
    args = parser.parse_args(argv)
    try:
        results = predict(args.export_dir, args.images, args.top)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, classes in results:
        print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
