"""An `Evaluation` drawn: the confusion matrix, the worst errors as images, the reliability
diagram. Each function returns a `matplotlib.figure.Figure` (no pyplot: no window, no backend
switched); `save` writes one as a PNG that appears only when complete."""

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from keras_fastres.utils import files

GRID_LIMIT = 36  # misclassified images drawn, most confident first
VALUES_UP_TO = 20  # classes whose matrix cells are written out; larger ones are colours only


def confusion_figure(evaluation) -> Figure:
    """Counts (left) and each true class's row normalised to 1 (right), readable at 100
    classes: cell values written up to 20 classes, tick labels thinned beyond."""
    count = evaluation.num_classes
    side = min(4 + 0.35 * count, 24)
    figure = Figure(figsize=(2 * side + 1, side))
    matrix = evaluation.confusion_matrix()
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    names = list(evaluation.class_names)
    for axes, values, title, fmt in zip(figure.subplots(1, 2), (matrix, normalised),
                                        ("images", "share of the true class"), ("d", ".2f")):
        ConfusionMatrixDisplay(values, display_labels=names).plot(
            ax=axes, include_values=count <= VALUES_UP_TO, values_format=fmt, colorbar=False,
            xticks_rotation="vertical")
        axes.set_title(title)
        if count > 40:  # every n-th name, so that they stay legible
            step = -(-count // 40)
            axes.set_xticks(range(0, count, step), names[::step])
            axes.set_yticks(range(0, count, step), names[::step])
    figure.tight_layout()
    return figure


def errors_figure(evaluation, limit: int = GRID_LIMIT) -> Figure:
    """The `limit` most confident errors, one tile each: the image, its true class, the
    predicted class and its probability."""
    errors = evaluation.errors()[:limit]
    return tiles_figure(evaluation, [(error["index"], f"true {error['true']}\n"
                                      f"{error['predicted']} {100 * error['probability']:.0f}%")
                                     for error in errors], "no errors")


def disagreements_figure(evaluation, differ, limit: int = GRID_LIMIT) -> Figure:
    """The images two models classify differently (`evaluation.disagreements`), each titled
    with the true class and both answers."""
    return tiles_figure(evaluation, [(d["index"], f"true {d['true']}\n{d['first']} "
                                     f"{100 * d['first_probability']:.0f}% / {d['second']} "
                                     f"{100 * d['second_probability']:.0f}%")
                                     for d in differ[:limit]], "no disagreements")


def tiles_figure(evaluation, tiles, empty) -> Figure:
    """One tile per (image index, title), six to a row; `empty` written when there are none."""
    columns = max(1, min(6, len(tiles)))
    rows = max(1, -(-len(tiles) // columns))
    # Constrained layout keeps each tile's two-line title inside the figure.
    figure = Figure(figsize=(2.3 * columns, 2.7 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes in grid:
        axes.axis("off")
    pixels = evaluation.images([index for index, _ in tiles]) if tiles else []
    for axes, (_, title), image in zip(grid, tiles, pixels):
        axes.imshow(image)
        axes.set_title(title, fontsize=8)
    if not tiles:
        grid[0].text(0.5, 0.5, empty, ha="center", va="center")
    return figure


def reliability_figure(evaluation) -> Figure:
    """Accuracy against confidence per bin of top-1 confidence, beside the diagonal of a
    calibrated model; the expected calibration error in the title."""
    calibration = evaluation.calibration()
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    bins = len(calibration["bins"])
    centres = (np.arange(bins) + 0.5) / bins
    accuracy = [row["accuracy"] if row["images"] else 0 for row in calibration["bins"]]
    axes.bar(centres, accuracy, width=1 / bins, edgecolor="black", label="accuracy")
    axes.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
    axes.set_xlabel("confidence (top-1 probability)")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_title(f"expected calibration error "
                   f"{100 * calibration['expected_calibration_error']:.1f}%")
    axes.legend(loc="upper left")
    figure.tight_layout()
    return figure


def save(figure: Figure, path) -> None:
    """`figure` as a PNG at `path`, written beside it and renamed into place."""
    with files.replacing(path, "wb") as file:
        figure.savefig(file, dpi=100, format="png")
