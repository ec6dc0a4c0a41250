"""Error curves per epoch, like the paper's figures 6-8.

Figures are made with `matplotlib.figure.Figure`, not pyplot: no window, no backend switched
(a notebook's stays its own), nothing kept open between plots.
"""

import matplotlib.ticker
from matplotlib.figure import Figure

from keras_fastres.utils import files


def plot_runs(runs, path, train_error=False, title=None):
    """Test error (%) per epoch of each (label, history rows) in `runs`, into a PNG at `path`
    (written beside it and renamed into place: a link planted at `path` is replaced, never
    written through). With `train_error`, the training error too, dashed."""
    with files.replacing(path, "wb") as file:
        error_figure(runs, train_error, title).savefig(file, dpi=120, format="png")


def error_figure(runs, train_error=False, title=None):
    """The figure `plot_runs` saves: one line per run (and per training error), x the 1-based
    epoch, y the error in %."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for label, rows in runs:
        epochs = [int(row["epoch"]) for row in rows]
        line, = axes.plot(epochs, [100 * float(row["test_error"]) for row in rows],
                          label=f"{label} test")
        if train_error:
            axes.plot(epochs, [100 * (1 - float(row["accuracy"])) for row in rows], "--",
                      color=line.get_color(), label=f"{label} train")
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("error (%)")
    axes.grid(alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return figure
