"""ImagePreparation: how an image file becomes a model's input, kept with the model.

    file (any still format Pillow reads) -> upright (a JPEG's EXIF orientation applied)
    -> RGB (grayscale, 16-bit, palette, CMYK converted; alpha dropped)
    -> resized to `image_size` by `resize` -> uint8 (H, W, 3), raw pixels in [0, 255]

The training loader prepares its images this way (`keras_fastres.data`); so do
`fastres-predict`, the SavedModel's `serving_bytes` signature (in the graph), `fastres-serve`
and evaluation, each from the preparation saved with the model: a FastResNet's `.keras` file
holds it as an asset (assets/preparation.json), its exports as preparation.json (the
SavedModel's assets, beside a LiteRT model) or ONNX metadata ("preparation"). The network
itself does not use it, so it is not in the network's config: keras-hub keeps an
`ImageConverter` beside its backbones the same way.
"""

import json
from pathlib import Path

import keras
import numpy as np

from keras_fastres.data.decoding import check_resize, decode_image, image_size_pair
from keras_fastres.errors import DamagedFile

PREPARATION_FILE = "preparation.json"


@keras.saving.register_keras_serializable(package="keras_fastres")
class ImagePreparation:
    """How image files are prepared for a model, as its training images were.

    Args:
        image_size: the model's input (height, width), or one int for a square, each at
            least 4; default 32x32.
        resize: how a file of any size reaches `image_size`: "stretch" (default: the whole
            image, any aspect, as CIFAR-like data wants), "crop" (the largest centred window of
            the size's aspect) or "pad" (the whole image scaled to fit, centred on black).
            Scaling is Pillow's antialiased bilinear filter.

    A FastResNet carries one as `model.preparation` (by default its input size, "stretch");
    set another before saving or exporting, e.g.
    `model.preparation = ImagePreparation((64, 64), "crop")`.
    """

    def __init__(self, image_size=(32, 32), resize: str = "stretch"):
        self._image_size = image_size_pair(image_size)
        check_resize(resize)
        self._resize = resize

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the prepared images."""
        return self._image_size

    @property
    def resize(self) -> str:
        """"stretch", "crop" or "pad"."""
        return self._resize

    def prepare_file(self, path) -> np.ndarray:
        """uint8 `(height, width, 3)` pixels of an image file; a ValueError saying why when the
        file cannot be used (not an image, damaged, or a header declaring a decompression
        bomb)."""
        height, width = self._image_size
        return decode_image(path, height, width, resize=self._resize)

    def prepare_bytes(self, image_bytes):
        """The same inside a TensorFlow graph: string `(N,)` encoded files -> uint8
        `(N, height, width, 3)` (JPEG, PNG, GIF, BMP; see `keras_fastres.serving.decode`)."""
        from keras_fastres.serving.decode import decode_batch
        height, width = self._image_size
        return decode_batch(image_bytes, height, width, self._resize)

    def get_config(self) -> dict:
        return {"image_size": list(self._image_size), "resize": self._resize}

    @classmethod
    def from_config(cls, config: dict) -> "ImagePreparation":
        return cls(**config)

    def to_json(self) -> str:
        return json.dumps(self.get_config()) + "\n"

    @classmethod
    def from_json(cls, text: str, source) -> "ImagePreparation":
        """The preparation `to_json` wrote; a `DamagedFile` naming `source` for anything else."""
        try:
            config = json.loads(text)
            if not isinstance(config, dict) or set(config) != {"image_size", "resize"}:
                raise ValueError(f"keys {sorted(config) if isinstance(config, dict) else config}"
                                 f", not ['image_size', 'resize']")
            return cls.from_config(config)
        except ValueError as error:
            raise DamagedFile(f"{source} is not an image preparation this package wrote "
                              f"({str(error)[:200]}); export the model again.") from None

    def save(self, folder) -> Path:
        """Writes `folder/preparation.json`; returns it."""
        path = Path(folder) / PREPARATION_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder) -> "ImagePreparation | None":
        """The preparation saved in `folder`, or None when it holds none."""
        path = Path(folder) / PREPARATION_FILE
        if not path.is_file():
            return None
        return cls.from_json(path.read_text(encoding="utf-8", errors="replace"), path)

    def __eq__(self, other) -> bool:
        return isinstance(other, ImagePreparation) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((self._image_size, self._resize))

    def __repr__(self) -> str:
        return f"ImagePreparation(image_size={self._image_size}, resize={self._resize!r})"
