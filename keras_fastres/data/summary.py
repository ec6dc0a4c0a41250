"""What a run trains on, said before its first epoch and kept in its metrics.json
(`data_summary`): the source, the classes with their train and test counts, the image size,
the normalisation and, for a folder, the cache, the resize mode, skipped and ignored files and
images of odd shapes."""

import numpy as np


def data_summary(images, normalization):
    """What a run trains on, for its log and metrics.json: source, classes with their train
    and test counts, image size, normalisation, and for a folder the cache, the resize mode,
    the skipped and ignored files and the images of odd shapes."""
    train = np.bincount(images.train.labels, minlength=images.num_classes)
    test = np.bincount(images.test.labels, minlength=images.num_classes)
    about = {"source": images.name,
             "classes": {name: [int(a), int(b)] for name, a, b in
                         zip(images.class_names, train, test)},
             "image_size": list(images.image_shape[:2]),
             "normalization": (normalization if isinstance(normalization, str) else
                               {"mean": [round(v, 3) for v in normalization[0]],
                                "std": [round(v, 3) for v in normalization[1]]}),
             "from_disk": images.from_disk}
    details = images.details
    if details is not None:
        about.update({"cache": details.cache, "cache_entry": details.cache_entry,
                      "resize": details.resize, "skipped_files": len(details.skipped),
                      "ignored_files": len(details.ignored),
                      "far_from_aspect": details.far_aspect,
                      "far_smaller": details.far_smaller})
    return about


def summary_lines(about):
    """`data_summary` as the lines a run logs before its first epoch."""
    classes = about["classes"]
    shown = ", ".join(f"{name} {a}/{b}" for name, (a, b) in list(classes.items())[:12])
    lines = [f"Data: {about['source']}"
             + (f" (cache {about['cache']}: {about['cache_entry']})" if "cache" in about else "")
             + (", read from disk a batch at a time" if about["from_disk"] else ""),
             f"  {len(classes)} classes, train/test images: {shown}"
             + (", ..." if len(classes) > 12 else ""),
             f"  {sum(a for a, _ in classes.values()):,} training and "
             f"{sum(b for _, b in classes.values()):,} test images of "
             f"{about['image_size'][0]}x{about['image_size'][1]}"
             + (f", resize {about['resize']}" if "resize" in about else "")]
    norm = about["normalization"]
    lines.append("  normalisation: " + (f"{norm}'s published statistics" if isinstance(norm, str)
                                         else f"mean {norm['mean']}, std {norm['std']} (of the "
                                              f"training images)"))
    if "cache" in about:
        lines.append(f"  skipped {about['skipped_files']} files that could not be decoded, "
                     f"ignored {about['ignored_files']} that are not images; "
                     f"{about['far_from_aspect']} images 2x or more off the size's aspect, "
                     f"{about['far_smaller']} under half its side")
    return lines
