"""Runs a recipe as its command line would, and saves this process's model weights at the start
and at the end of training, and the run's seed, to an .npz file, so that tests can compare
workers and devices.

    python tests/record_weights.py OUT.npz recipes/cifar10.py [recipe arguments...]
"""

import runpy
import sys

import numpy as np

from keras_fastres.training import distribute, run

out, recipe, *arguments = sys.argv[1:]
fit = distribute.Trainer.fit
choose_seed = run.run_seed
seeds = []


def record_seed(*args, **kwargs):
    seeds.append(choose_seed(*args, **kwargs))
    return seeds[-1]


def fit_and_record(self, *args, **kwargs):
    initial = self.model.get_weights()
    logs = fit(self, *args, **kwargs)
    final = self.model.get_weights()
    np.savez(out, **{f"initial_{i}": w for i, w in enumerate(initial)},
             **{f"final_{i}": w for i, w in enumerate(final)}, seed=seeds[-1])
    return logs


distribute.Trainer.fit = fit_and_record
run.run_seed = record_seed
sys.argv = [recipe, *arguments]
runpy.run_path(recipe, run_name="__main__")
