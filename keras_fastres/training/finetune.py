"""Fine-tuning (`fastres-train --init-from RUN_DIR|MODEL.keras`): a new run starts from the
weights of a trained FastResNet of the same depth, variant and shortcut. Convolutions and BNs
do not depend on the image size, so they load at any size; a classifier of another class count
is replaced (newly initialised); the input normalisation is the new data's."""

import json
import zipfile
from pathlib import Path

from keras_fastres.models import MODEL_FILE, load_model

KEPT_FROM_NEW_DATA = ("normalization",)  # layers whose values come from the new data
CLASSIFIER = "predictions"


def initialize_from(model, path):
    """Sets `model`'s weights from the model at `path` (a run folder or a .keras file), layer
    by layer by name; returns a line saying what was loaded and what replaced. A ValueError
    when the two networks differ in anything but the classifier's class count."""
    source = load_model(path)
    layers = {layer.name: layer for layer in _weighted(source)}
    extra = sorted(set(layers) - {layer.name for layer in _weighted(model)})
    if extra:
        raise _differs(model, path, f"it has layer {extra[0]}, which this one has not")
    loaded, replaced = 0, None
    for layer in _weighted(model):
        other = layers.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        other_shapes = [tuple(w.shape) for w in other.weights] if other is not None else None
        if other is None or other_shapes is None:
            raise _differs(model, path, f"layer {layer.name}: missing vs {shapes}")
        if layer.name == CLASSIFIER and other_shapes != shapes:
            replaced = (other_shapes[0][-1], shapes[0][-1])
            continue
        if other_shapes != shapes:
            raise _differs(model, path, f"layer {layer.name}: {other_shapes} vs {shapes}")
        layer.set_weights(other.get_weights())
        loaded += 1
    classifier = (f"the classifier replaced ({replaced[0]} -> {replaced[1]} classes, newly "
                  f"initialised)" if replaced else "the classifier included")
    old, new = getattr(source, "class_names", None), getattr(model, "class_names", None)
    if not replaced and old and new and old != new:
        differ = [f"{a} -> {b}" for a, b in zip(old, new) if a != b]
        classifier += (f" although the class names differ ({', '.join(differ[:3])}"
                       f"{', ...' if len(differ) > 3 else ''}): output i keeps the meaning it "
                       f"had, now named by the new data")
    return (f"Initialised from {Path(path)}: {loaded} layers loaded, {classifier}; the input "
            f"normalisation is the new training images'.")


def check_network(path, depth, variant, shortcut):
    """A ValueError when the FastResNet at `path` (a run folder or a .keras file) is not of
    this `depth`, `variant` and `shortcut`, read from the file's config without building it:
    before a run decodes its data. (A file that is no FastResNet, or cannot be read, is left
    to `initialize_from`, which names what is wrong.)"""
    model_file = Path(path) / MODEL_FILE if Path(path).is_dir() else Path(path)
    try:
        with zipfile.ZipFile(model_file) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > 2 ** 20:
                return
            config = json.loads(archive.read(info))
        arguments = config["config"] if config.get("class_name") == "FastResNet" else None
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return
    if not isinstance(arguments, dict):
        return
    theirs = {name: arguments.get(name) for name in ("depth", "variant", "shortcut")}
    ours = {"depth": depth, "variant": variant, "shortcut": shortcut}
    if theirs != ours:
        differ = "; ".join(f"{name} {theirs[name]!r} here {ours[name]!r}" for name in ours
                           if theirs[name] != ours[name])
        raise ValueError(f"--init-from {path}: its network differs from this run's ResNet-{depth} "
                         f"{variant} ({differ}); fine-tuning needs the same --depth, --variant "
                         f"and --shortcut.")


def _weighted(model):
    return [layer for layer in model.layers
            if layer.weights and layer.name not in KEPT_FROM_NEW_DATA]


def _differs(model, path, what):
    described = f"ResNet-{model.depth} {model.variant}" if hasattr(model, "depth") else ""
    return ValueError(f"--init-from {path}: its network differs from this run's {described} "
                      f"({what}); fine-tuning needs the same --depth, --variant and --shortcut.")
