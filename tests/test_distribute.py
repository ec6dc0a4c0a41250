"""The same recipe on one device, on two (logical CPU) devices and on two localhost workers.

The commands are the README's: `--strategy mirrored` with `--cpu-replicas 2` standing in for two
GPUs, and `--strategy multi-worker` with TF_CONFIG naming localhost ports standing in for hosts.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_fastres.callbacks import paper_learning_rate, read_history
from keras_fastres.commands.train import main
from keras_fastres.training.config import TrainConfig, check_parallel_settings
from keras_fastres.training.distribute import is_chief, make_strategy

from conftest import WeightRecorder, free_ports, wait_for_backup

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "recipes" / "cifar10.py")
RECORDER = str(ROOT / "tests" / "record_weights.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
SMALL = ["--synthetic", "--synthetic-size", "64", "16", "--depth", "8", "--batch-size", "32",
         "--seed", "0"]


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def start(args, weights=None, tf_config_value=None):
    command = [sys.executable, *([RECORDER, str(weights)] if weights else []), RECIPE, *args]
    env = {**ENV, **({"TF_CONFIG": tf_config_value} if tf_config_value else {})}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def finish(process, timeout=300):
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def weights(path, which):
    saved = np.load(path)
    return [saved[f"{which}_{i}"] for i in range(len(saved.files) // 2)]


def test_mirrored_on_two_devices_matches_one_device(tmp_path, monkeypatch, capsys):
    """The three runs in this process (conftest splits the CPU in two for the session)."""
    recorded = WeightRecorder(monkeypatch)
    common = [*SMALL, "--epochs", "1", "--lr-scaling", "linear"]
    for strategy, name in ((["one-device"], "single"), (["mirrored", "--cpu-replicas", "2"],
                                                        "mirrored")):
        assert main(TrainConfig(), [*common, "--strategy", *strategy,
                                    "--output-dir", str(tmp_path / name)]) == 0, (
            capsys.readouterr().err)
    metrics = json.loads((tmp_path / "mirrored" / "metrics.json").read_text())
    assert metrics["replicas"] == 2
    # --lr-scaling linear: 0.1 x global batch 32 / 128, and the schedule starts from it.
    assert metrics["learning_rate"] == pytest.approx(0.025)
    rows = read_history(tmp_path / "mirrored" / "history.csv")
    assert float(rows[0]["learning_rate"]) == pytest.approx(0.025)
    (start_one, start_two), (one, two) = recorded.initial, recorded.final
    for a, b in zip(start_one, start_two, strict=True):
        np.testing.assert_array_equal(a, b)  # same seed, same initial weights
    moved = max(np.max(np.abs(a - b)) for a, b in zip(one, start_one))
    assert moved > 1e-2  # two SGD steps changed the weights ...
    difference = max(np.max(np.abs(a - b)) for a, b in zip(one, two))
    assert difference < 1e-4  # ... identically on one device and on two
    # With the data on the devices each replica computes its own share of every batch there:
    # the same shares, the same weights, bit for bit.
    assert main(TrainConfig(), [*common, "--strategy", "mirrored", "--cpu-replicas", "2",
                                "--data-placement", "device", "--steps-per-execution", "2",
                                "--output-dir", str(tmp_path / "device")]) == 0
    for a, b in zip(recorded.final[2], two, strict=True):
        np.testing.assert_array_equal(a, b)


def test_two_localhost_workers_train_as_two_devices_of_one_machine(tmp_path, monkeypatch):
    """Without --seed: the workers agree on one drawn seed; their weights move, stay identical,
    and equal, bit for bit, those of two devices in one process (`--strategy mirrored`) trained
    with that seed: the same shares of each global batch, the same synchronised BN statistics and
    gradients summed over two replicas (a sum of two terms rounds the same in either order). That
    two devices train as one device with the global batch is the test above."""
    ports = free_ports(2)
    chief_dir, worker_dir = tmp_path / "chief", tmp_path / "worker"
    args = [*SMALL[:-2], "--epochs", "2", "--batch-norm", "keras"]
    cluster = [*args, "--strategy", "multi-worker"]
    worker = start([*cluster, "--output-dir", str(worker_dir)], tmp_path / "worker.npz",
                   tf_config(ports, 1))
    chief = start([*cluster, "--output-dir", str(chief_dir)], tmp_path / "chief.npz",
                  tf_config(ports, 0))
    chief_out, worker_out = finish(chief), finish(worker)
    assert f"outputs in {chief_dir}" in chief_out and "the chief wrote the outputs" in worker_out
    seed = int(np.load(tmp_path / "chief.npz")["seed"])
    assert int(np.load(tmp_path / "worker.npz")["seed"]) == seed
    assert json.loads((chief_dir / "metrics.json").read_text())["seed"] == seed
    chief_final = weights(tmp_path / "chief.npz", "final")
    for a, b in zip(chief_final, weights(tmp_path / "worker.npz", "final")):
        np.testing.assert_array_equal(a, b)
    moved = max(np.max(np.abs(a - b))
                for a, b in zip(chief_final, weights(tmp_path / "chief.npz", "initial")))
    assert moved > 1e-2

    # The two-device reference in this process (conftest splits the CPU in two), from the same
    # recipe's main().
    recorded = WeightRecorder(monkeypatch)
    assert main(TrainConfig(), [*args, "--seed", str(seed), "--strategy", "mirrored",
                                "--cpu-replicas", "2",
                                "--output-dir", str(tmp_path / "mirrored")]) == 0
    for a, b in zip(recorded.initial[0], weights(tmp_path / "chief.npz", "initial"), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(recorded.final[0], chief_final, strict=True):
        np.testing.assert_array_equal(a, b)
    assert {p.name for p in chief_dir.iterdir()} >= {"history.csv", "metrics.json",
                                                      "error_curve.png", "model.keras"}
    assert json.loads((chief_dir / "metrics.json").read_text())["replicas"] == 2
    assert not worker_dir.exists()  # only the chief wrote


def test_a_killed_worker_restarted_with_the_cluster_resumes(tmp_path):
    ports, run, epochs = free_ports(2), tmp_path / "run", 4
    args = ["--synthetic", "--synthetic-size", "256", "64", "--depth", "8", "--epochs",
            str(epochs), "--strategy", "multi-worker", "--output-dir", str(run)]
    worker, chief = start(args, tf_config_value=tf_config(ports, 1)), start(
        args, tf_config_value=tf_config(ports, 0))
    wait_for_backup(run, chief)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    # The chief's collectives fail at once; it says how to continue.
    _, chief_err = chief.communicate(timeout=120)
    assert chief.returncode == 1 and "start every worker again" in chief_err
    finished_before = len(read_history(run / "history.csv"))
    assert 1 <= finished_before < epochs

    worker, chief = start(args, tf_config_value=tf_config(ports, 1)), start(
        args, tf_config_value=tf_config(ports, 0))
    chief_out = finish(chief)
    finish(worker)
    assert f"Resuming {run} after epoch" in chief_out
    rows = read_history(run / "history.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx(
        [paper_learning_rate(e, epochs) for e in range(epochs)])
    assert not (run / "backup").exists()


def test_strategy_arguments_are_checked(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        make_strategy("multi-worker")
    with pytest.raises(ValueError, match="strategy must be one of"):
        make_strategy("horovod")
    with pytest.raises(ValueError, match="cpu_replicas is for strategy 'mirrored' only"):
        make_strategy("auto", cpu_replicas=2)
    assert is_chief(make_strategy("auto"))


def test_known_broken_combinations_are_refused():
    with pytest.raises(ValueError, match="XLA cannot compile a training step that spans several "
                                         "CPU replicas"):
        check_parallel_settings(2, jit_compile=True, precision="float32", gpus=False)
    with pytest.raises(ValueError, match="keras-team/keras#21366"):
        check_parallel_settings(2, jit_compile=True, precision="mixed_float16", gpus=True)
    check_parallel_settings(2, jit_compile=True, precision="mixed_bfloat16", gpus=True)
    check_parallel_settings(2, jit_compile=False, precision="mixed_float16", gpus=False)
    check_parallel_settings(1, jit_compile=True, precision="mixed_float16", gpus=False)


def test_the_recipe_checks_the_combination_before_any_work(tmp_path, capsys):
    assert main(TrainConfig(), [*SMALL, "--output-dir", str(tmp_path / "run"), "--strategy",
                                "mirrored", "--cpu-replicas", "2", "--jit-compile", "on"]) == 2
    assert "XLA cannot compile" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# The training loop for accelerators: several steps per call, data on the device, XLA.
# 200 images at batch 32: 7 steps an epoch, the last of 8 images, so no call size divides it.

def fit(steps_per_execution=1, placement="host", jit_compile=False, epochs=2,
        initial_epoch=0, model=None, callbacks=(), count_reads=None, images=200):
    import keras

    from keras_fastres import data
    from keras_fastres.training.config import TrainConfig, build_and_compile
    from keras_fastres.training.distribute import Trainer
    split = data.synthetic_cifar("cifar10", images, 16, seed=0)
    strategy = make_strategy("auto")
    if model is None:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = build_and_compile(TrainConfig(depth=8, jit_compile=jit_compile), 10)
    trainer = Trainer(model, strategy, jit_compile=jit_compile)
    if count_reads is not None:
        result = trainer.loss.result
        trainer.loss.result = lambda: count_reads.append(1) or result()
    trainer.fit(data.TrainingData(split.train, 32, 0, 10), data.test_dataset(split.test, 32, 10),
                epochs, callbacks=list(callbacks), initial_epoch=initial_epoch, verbose=0,
                steps_per_execution=steps_per_execution, data_placement=placement)
    return model


@pytest.fixture(scope="module")
def one_step_per_call():
    return fit().get_weights()


@pytest.mark.parametrize("steps_per_execution, placement", [
    (4, "host"), (16, "host"), (1, "device"), (3, "device")])
def test_steps_per_call_and_data_on_the_device_train_the_same_weights(
        steps_per_execution, placement, one_step_per_call):
    reads = []
    trained = fit(steps_per_execution, placement, count_reads=reads).get_weights()
    for a, b in zip(trained, one_step_per_call, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit
    # The loss is read back once per call and once at each epoch's end (and by the
    # evaluation): never once per step.
    calls = -(-6 // steps_per_execution) + 1 if placement == "device" else (
        -(-7 // steps_per_execution))
    assert len(reads) == 2 * (calls + 2)


def test_data_on_the_device_resumes_bit_exact(tmp_path, one_step_per_call):
    from keras_fastres.training.backup import Backup
    backup = Backup(tmp_path / "backup")
    backup.experiment = {"epochs": 2, "seed": 0}
    model = fit(3, "device", epochs=1, callbacks=[backup])
    fresh = fit(3, "device", epochs=0)  # a new process: new weights, then the backup
    assert Backup(tmp_path / "backup").restore(fresh) == 1
    resumed = fit(3, "device", epochs=2, initial_epoch=1, model=fresh).get_weights()
    for a, b in zip(resumed, one_step_per_call, strict=True):
        np.testing.assert_array_equal(a, b)
    assert model is not fresh


def test_keras_fit_with_the_package_callbacks_trains_the_recipes_weights():
    """The training path (docs/design.md): a library user's `model.fit`, given the batches of
    the recipe's data (TrainingData's epochs) and the package's callbacks, runs the same
    computation as the recipe's loop, so it ends with the same weights, bit for bit (the same
    operations in the same order: a cross-entropy mean plus the weight-decay penalties, SGD)."""
    import keras

    from keras_fastres import data
    from keras_fastres.callbacks import EpochTimer, paper_schedule
    from keras_fastres.training.config import TrainConfig, build_and_compile
    split = data.synthetic_cifar("cifar10", 200, 16, seed=0)
    keras.utils.set_random_seed(0)
    model = build_and_compile(TrainConfig(depth=8), 10)
    train = data.TrainingData(split.train, 32, 0, 10)
    timer = EpochTimer(200)
    for epoch in range(2):
        history = model.fit(train.epoch(epoch, 0, 1, 1), epochs=epoch + 1, initial_epoch=epoch,
                            shuffle=False,  # the epoch is shuffled already, as the recipe's
                            callbacks=[paper_schedule(2), timer], verbose=0)
    assert len(timer.epoch_seconds) == 2
    assert history.history["learning_rate"] == [pytest.approx(0.01)]  # the schedule ran
    reference = fit(callbacks=[paper_schedule(2)]).get_weights()  # the recipe's loop
    for a, b in zip(model.get_weights(), reference, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_whole_step_on_the_device_compiles_with_xla():
    """Crop, flip, forward, backward and update, several times per call, as one XLA program:
    after one call of three steps, the same weights but for XLA's own float rounding
    (norm-wise within 1e-5). Over many steps the rounding would reach ReLU kinks and grow."""
    compiled = fit(3, "device", jit_compile=True, epochs=1, images=96).get_weights()
    plain = fit(epochs=1, images=96).get_weights()
    difference = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(compiled, plain)))
    norm = np.sqrt(sum(np.sum(b ** 2) for b in plain))
    assert difference / norm < 1e-5 and difference > 0, difference / norm  # compiled, close
