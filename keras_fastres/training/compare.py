"""Finished runs side by side, as the paper's Table 1 reports them: per configuration, the
number of runs, the test error's mean and standard deviation, the seconds per epoch and their
ratio to the pre-activation baseline; and the test error curves on one figure."""

import json
import statistics
from pathlib import Path

from keras_fastres.callbacks import read_history
from keras_fastres.errors import summary
from keras_fastres.training.config import TrainConfig, experiment_fields
from keras_fastres.training.plots import plot_runs

# What makes runs repeats of one configuration: their experiment, less the seed.
CONFIGURATION = tuple(f for f in experiment_fields(TrainConfig()) if f != "seed")


def read_run(run_dir):
    """(history rows, metrics dict or None for an unfinished run) of a recipe run directory,
    or a ValueError naming the file that is missing or unreadable."""
    run_dir = Path(run_dir)
    rows = read_history(run_dir / "history.csv")
    if not rows:
        raise ValueError(f"{run_dir} has no history.csv; give directories of recipe runs.")
    path = run_dir / "metrics.json"
    if not path.exists():
        return rows, None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} cannot be read as JSON ({error}).") from None
    needed = {"test_error", "mean_epoch_seconds", "dataset", "depth", "variant"}
    missing = sorted(needed - set(metrics)) if isinstance(metrics, dict) else sorted(needed)
    if missing:
        raise ValueError(f"{path} is not the metrics of a finished run (it lacks {missing}).")
    return rows, metrics


def configuration(metrics):
    return tuple((key, json.dumps(metrics.get(key), sort_keys=True)) for key in CONFIGURATION)


def label(metrics):
    return f"{metrics['dataset']} ResNet-{metrics['depth']} {metrics['variant']}"


def distinct_labels(keys):
    """{configuration: label}: `label`, and where configurations share one, the settings in
    which they differ (`init_from=a.keras`, `data=/photos/b`), so that no two read alike."""
    bases = {key: label({name: json.loads(value) for name, value in key}) for key in keys}
    labels = {}
    for key, base in bases.items():
        alike = [other for other in bases if bases[other] == base]
        differing = [(name, value) for name, value in key
                     if len({dict(other)[name] for other in alike}) > 1]
        labels[key] = base + (" (" + ", ".join(f"{name}={json.loads(value)}"
                                               for name, value in differing) + ")"
                              if differing else "")
    return labels


def summarize(finished):
    """One row per configuration of the finished runs' metrics, in order of first appearance:
    label (`distinct_labels`), runs, test error mean and std (%; std None for one run), mean
    seconds per epoch and the ratio to the preact configuration that differs only in the
    variant (None without)."""
    groups: dict[tuple, list[dict]] = {}
    for metrics in finished:
        groups.setdefault(configuration(metrics), []).append(metrics)
    rows = []
    labels = distinct_labels(groups)
    for key, runs in groups.items():
        errors = [100 * m["test_error"] for m in runs]
        seconds = statistics.mean(m["mean_epoch_seconds"] for m in runs)
        rows.append({"key": key, "label": labels[key], "runs": len(runs),
                     "error_mean": statistics.mean(errors),
                     "error_std": statistics.stdev(errors) if len(errors) > 1 else None,
                     "epoch_seconds": seconds})
    for row in rows:
        baseline = next((other for other in rows if dict(other["key"])["variant"] == '"preact"'
                         and all(a == b for a, b in zip(other["key"], row["key"])
                                 if a[0] != "variant")), None)
        row["ratio_to_preact"] = (row["epoch_seconds"] / baseline["epoch_seconds"]
                                  if baseline else None)
    return rows


def format_summary(rows):
    header = ("configuration", "runs", "test error %", "s/epoch", "vs preact")
    cells = [(row["label"], str(row["runs"]),
              f"{row['error_mean']:.2f}" + (f" +- {row['error_std']:.2f}"
                                            if row["error_std"] is not None else ""),
              f"{row['epoch_seconds']:.2f}",
              "-" if row["ratio_to_preact"] is None else f"{row['ratio_to_preact']:.3f}")
             for row in rows]
    widths = [max(len(c) for c in column) for column in zip(header, *cells)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths)))
                     for line in [header, *cells])


def compare_runs(run_dirs, figure):
    """Plots the test error of every run on one figure at `figure` and returns the summary
    table of the finished ones (`format_summary`), with a line naming any unfinished run. A
    ValueError when a run is given twice (by the same path or through a link): it would
    count as two repeats of its configuration."""
    seen: dict[Path, Path] = {}
    for run_dir in map(Path, run_dirs):
        first = seen.setdefault(run_dir.resolve(), run_dir)
        if first is not run_dir:
            raise ValueError(f"--compare is given the run {first.resolve()} twice ({first} and "
                             f"{run_dir}); give each run once.")
    runs = [(Path(run_dir), *read_run(run_dir)) for run_dir in run_dirs]
    finished = [metrics for _, _, metrics in runs if metrics]
    rows = summarize(finished)
    text = format_summary(rows) if finished else "no finished run"
    unfinished = [str(run_dir) for run_dir, _, metrics in runs if metrics is None]
    if unfinished:
        text += f"\nunfinished, plotted but not in the table: {', '.join(unfinished)}"
    labels = {row["key"]: row["label"] for row in rows}
    try:
        plot_runs([(labels[configuration(metrics)] if metrics else run_dir.name, rows)
                   for run_dir, rows, metrics in runs], figure, title="test error")
    except OSError as error:  # the table is still worth having
        raise PlotNotWritten(text, f"Could not write {figure}: {summary(error)}; pass an "
                                   f"--output-dir you can write to.") from None
    return text


class PlotNotWritten(OSError):
    """The comparison's plot could not be written; `table` holds the comparison's table."""

    def __init__(self, table, message):
        super().__init__(message)
        self.table = table
