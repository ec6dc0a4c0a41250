"""What a classifier gets right and wrong on labelled images: `Evaluation`, its numbers.

The metrics are scikit-learn's and SciPy's (accuracy's confidence interval: Wilson's score
interval); the expected calibration error, which neither computes for several classes, is the
usual binned one (Guo et al. 2017): top-1 confidence in 15 equal bins, the mean gap between a
bin's accuracy and its confidence, weighted by its images.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import (
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

CALIBRATION_BINS = 15


@dataclass(frozen=True)
class Evaluation:
    """A model's answers on labelled images, and what follows from them.

    Attributes:
        class_names: the model's classes (output i is `class_names[i]`).
        labels: int `(N,)`, the true class of each image (an index into `class_names`).
        probabilities: float `(N, num_classes)`, the model's answer for each image.
        sources: what each image is: its file, or "test image i" for an array.
        model, data: what was evaluated on what, as given.
    The figures are in `keras_fastres.evaluation.figures`, the written report in
    `keras_fastres.evaluation.report`.
    """

    class_names: tuple
    labels: np.ndarray
    probabilities: np.ndarray
    sources: tuple
    model: str = ""
    data: str = ""
    pixels: Callable[[list], Sequence | np.ndarray] | None = field(default=None, repr=False,
                                                                  compare=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def images(self, indices) -> Sequence | np.ndarray:
        """The uint8 `(H, W, 3)` pixels of the images at `indices`, as the model saw them."""
        if self.pixels is None:
            raise ValueError("This evaluation keeps no images (made without evaluate()).")
        return self.pixels(list(indices))

    @property
    def predictions(self) -> np.ndarray:
        """int `(N,)`: the top class of each image."""
        return self.probabilities.argmax(axis=1)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def correct(self) -> int:
        return int(np.sum(self.predictions == self.labels))

    @property
    def accuracy(self) -> float:
        return self.correct / len(self.labels)

    def accuracy_interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Wilson's score interval of the accuracy: the test sets are small."""
        interval = binomtest(self.correct, len(self.labels)).proportion_ci(
            confidence, method="wilson")
        return float(interval.low), float(interval.high)

    def top_k_accuracy(self, k: int) -> float:
        """The share of images whose class is among the model's `k` most probable."""
        if k >= self.num_classes:  # every class is among them
            return 1.0
        return float(top_k_accuracy_score(self.labels, self.probabilities, k=k,
                                          labels=np.arange(self.num_classes)))

    def confusion_matrix(self) -> np.ndarray:
        """int `(num_classes, num_classes)`: row the true class, column the predicted one."""
        if "confusion" not in self._cache:
            self._cache["confusion"] = confusion_matrix(
                self.labels, self.predictions, labels=np.arange(self.num_classes))
        return self._cache["confusion"]

    def per_class(self) -> list[dict]:
        """For each class: name, support (its images), precision, recall, F1."""
        precision, recall, f1, support = precision_recall_fscore_support(
            self.labels, self.predictions, labels=np.arange(self.num_classes), zero_division=0)
        return [{"class": name, "support": int(s), "precision": float(p), "recall": float(r),
                 "f1": float(f)} for name, p, r, f, s in
                zip(self.class_names, precision, recall, f1, support)]

    def most_confused(self, count: int = 5) -> list[tuple[str, str, int]]:
        """(true class, predicted class, images) of the largest off-diagonal cells, most first."""
        matrix = self.confusion_matrix().copy()
        np.fill_diagonal(matrix, 0)
        order = np.argsort(matrix, axis=None, kind="stable")[::-1][:count]
        pairs = [np.unravel_index(i, matrix.shape) for i in order]
        return [(self.class_names[t], self.class_names[p], int(matrix[t, p]))
                for t, p in pairs if matrix[t, p]]

    def errors(self) -> list[dict]:
        """The misclassified images, most confident first: source, index, true class, predicted
        class and its probability."""
        wrong = np.flatnonzero(self.predictions != self.labels)
        confidence = self.probabilities[wrong, self.predictions[wrong]]
        order = wrong[np.argsort(-confidence, kind="stable")]
        return [{"source": str(self.sources[i]), "index": int(i),
                 "true": self.class_names[self.labels[i]],
                 "predicted": self.class_names[self.predictions[i]],
                 "probability": float(self.probabilities[i, self.predictions[i]])}
                for i in order]

    def calibration(self, bins: int = CALIBRATION_BINS) -> dict:
        """The reliability diagram's numbers: per bin of top-1 confidence, its images, mean
        confidence and accuracy; and the expected calibration error."""
        confidence = self.probabilities.max(axis=1)
        hit = self.predictions == self.labels
        index = np.minimum((confidence * bins).astype(int), bins - 1)
        rows: list[dict] = []
        ece = 0.0
        for b in range(bins):
            chosen = index == b
            if not chosen.any():
                rows.append({"images": 0, "confidence": None, "accuracy": None})
                continue
            mean_confidence, accuracy = float(confidence[chosen].mean()), float(hit[chosen].mean())
            rows.append({"images": int(chosen.sum()), "confidence": mean_confidence,
                         "accuracy": accuracy})
            ece += chosen.sum() * abs(accuracy - mean_confidence) / len(hit)
        return {"bins": rows, "expected_calibration_error": float(ece)}

    def summary(self) -> dict:
        """Everything above as JSON-ready values (the report's metrics.json)."""
        low, high = self.accuracy_interval()
        return {
            "model": self.model, "data": self.data, "images": len(self.labels),
            "class_names": list(self.class_names), "accuracy": self.accuracy,
            "accuracy_95": [low, high], "error": 1 - self.accuracy,
            "top_5_accuracy": self.top_k_accuracy(5), "per_class": self.per_class(),
            "most_confused": [list(pair) for pair in self.most_confused()],
            "confusion_matrix": self.confusion_matrix().tolist(),
            "expected_calibration_error": self.calibration()["expected_calibration_error"],
            "errors": len(self.errors())}


def disagreements(first: Evaluation, second: Evaluation) -> list[dict]:
    """The images two models (evaluated on the same images) classify differently: source,
    index, true class, and each model's class and probability."""
    if first.sources != second.sources or not np.array_equal(first.labels, second.labels):
        raise ValueError("The two evaluations are of different images; evaluate both models "
                         "on the same data.")
    differ = np.flatnonzero(first.predictions != second.predictions)
    return [{"source": str(first.sources[i]), "index": int(i),
             "true": first.class_names[first.labels[i]],
             "first": first.class_names[first.predictions[i]],
             "first_probability": float(first.probabilities[i, first.predictions[i]]),
             "second": second.class_names[second.predictions[i]],
             "second_probability": float(second.probabilities[i, second.predictions[i]])}
            for i in differ]
