"""An `Evaluation` written to a folder, and said in a few lines.

    <folder>/report.txt        what the terminal shows: accuracy with its 95% interval, top-5,
                               calibration, per class, the most confused pairs
    <folder>/metrics.json      the numbers (`Evaluation.summary()`: stable keys)
    <folder>/errors.csv        every misclassified image: source, true, predicted, probability
    <folder>/confusion.png     the confusion matrix, counts and row-normalised
    <folder>/errors.png        the most confident errors as images
    <folder>/reliability.png   the reliability diagram
and with a second model (`compare`): disagreements.csv and disagreements.png, the images on
which the two models' classes differ.
"""

import csv
import io
import json
from pathlib import Path

from keras_fastres.evaluation import figures
from keras_fastres.evaluation.evaluation import Evaluation, disagreements
from keras_fastres.utils import files

SHOWN_CLASSES = 20  # per-class rows in the text; all of them are in metrics.json


def summary_text(evaluation: Evaluation, compare: Evaluation | None = None) -> str:
    low, high = evaluation.accuracy_interval()
    images = len(evaluation.labels)
    lines = [f"accuracy {100 * evaluation.accuracy:.2f}% ({evaluation.correct:,} of "
             f"{images:,} images; 95% interval {100 * low:.1f}-{100 * high:.1f}%), "
             f"top-5 {100 * evaluation.top_k_accuracy(5):.2f}%, expected calibration error "
             f"{100 * evaluation.calibration()['expected_calibration_error']:.1f}%"]
    per_class = sorted(evaluation.per_class(), key=lambda row: row["recall"])
    lines.append(f"{'class':<20} {'images':>7} {'precision':>9} {'recall':>7} {'F1':>6}")
    for row in per_class[:SHOWN_CLASSES]:
        lines.append(f"{row['class'][:20]:<20} {row['support']:>7,} {row['precision']:>9.3f} "
                     f"{row['recall']:>7.3f} {row['f1']:>6.3f}")
    if len(per_class) > SHOWN_CLASSES:
        lines.append(f"... {len(per_class) - SHOWN_CLASSES} more classes (lowest recall "
                     f"shown first; all in metrics.json)")
    confused = evaluation.most_confused()
    if confused:
        lines.append("most confused: " + ", ".join(f"{true} as {predicted} ({count})"
                                                   for true, predicted, count in confused))
    if compare is not None:
        differ = disagreements(evaluation, compare)
        lines.append(f"against {compare.model}: accuracy {100 * compare.accuracy:.2f}%, the "
                     f"two differ on {len(differ):,} of {images:,} images (top-1 agreement "
                     f"{100 * (1 - len(differ) / images):.2f}%)")
    return "\n".join(lines)


def _csv(rows, columns):
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_report(evaluation: Evaluation, folder, compare: Evaluation | None = None) -> Path:
    """Writes the report of `evaluation` (and its comparison with `compare`, the same images by
    another model) into `folder`; returns `folder`. Each file appears only when complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def write(name, text):
        with files.replacing(folder / name, "w") as file:
            file.write(text)
    summary = evaluation.summary()
    summary["calibration"] = evaluation.calibration()["bins"]
    if compare is not None:
        summary["compare"] = {"model": compare.model, "accuracy": compare.accuracy,
                              "disagreements": len(disagreements(evaluation, compare))}
    write("metrics.json", json.dumps(summary, indent=1) + "\n")
    write("report.txt", summary_text(evaluation, compare) + "\n")
    write("errors.csv", _csv(evaluation.errors(), ["source", "true", "predicted",
                                                   "probability"]))
    figures.save(figures.confusion_figure(evaluation), folder / "confusion.png")
    figures.save(figures.errors_figure(evaluation), folder / "errors.png")
    figures.save(figures.reliability_figure(evaluation), folder / "reliability.png")
    if compare is not None:
        differ = disagreements(evaluation, compare)
        write("disagreements.csv", _csv(differ, ["source", "true", "first", "first_probability",
                                                 "second", "second_probability"]))
        figures.save(figures.disagreements_figure(evaluation, differ),
                     folder / "disagreements.png")
    return folder
