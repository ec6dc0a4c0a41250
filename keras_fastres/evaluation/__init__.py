"""Evaluation: what a model gets right and wrong on labelled images (`evaluate`,
`Evaluation`), its figures and its written report (fastres-evaluate)."""

from keras_fastres.evaluation.evaluate import evaluate
from keras_fastres.evaluation.evaluation import Evaluation, disagreements

__all__ = ["Evaluation", "disagreements", "evaluate"]
