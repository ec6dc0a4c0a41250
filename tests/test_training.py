"""The recipes end to end: outputs, resuming a killed run, fast failures. (Real learning, on
real images: test_own_images.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_models import expected_trainable_parameters

from keras_fastres.callbacks import HistoryCSV, paper_learning_rate, read_history
from keras_fastres.commands.train import main, parse_args
from keras_fastres.training.config import TrainConfig
from keras_fastres.training.run import experiment, train

from conftest import run_recipe, wait_for_backup

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
# As from a user's shell: TensorFlow's log level unset, so the recipes keep it quiet.
USER_ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def test_recipe_end_to_end_on_synthetic_data(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert run_recipe("cifar10", ["--synthetic", "--synthetic-size", "256", "64", "--depth", "8",
                                  "--epochs", "2", "--output-dir", run, "--export"],
                      monkeypatch) == 0
    out = capsys.readouterr().out
    assert "test error" in out and "s/epoch" in out and f"Exported a SavedModel to {run}" in out

    rows = read_history(run / "history.csv")
    assert list(rows[0]) == list(HistoryCSV.COLUMNS) and len(rows) == 2
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([0.1, 0.01])

    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test_error", "mean_epoch_seconds", "images_per_second", "depth", "variant",
                "dataset", "epochs", "versions", "device"):
        assert key in metrics
    assert (metrics["depth"], metrics["variant"], metrics["dataset"], metrics["epochs"]) == (
        8, "type1", "cifar10", 2)
    assert 0 <= metrics["test_error"] <= 1 and metrics["mean_epoch_seconds"] > 0
    assert metrics["mean_epoch_seconds"] == pytest.approx(float(rows[1]["epoch_seconds"]))
    assert {"keras", "tensorflow", "keras_fastres"} <= set(metrics["versions"])
    # Settings whose values are no words are recorded as the command line writes them.
    assert (metrics["jit_compile"], metrics["lr_scaling"]) == ("auto", "none")
    # The paper's count (test_models' equations); the total adds each BN's moving mean and
    # variance (one BN per block of 16, 32, 64 channels, and the final one).
    trainable = expected_trainable_parameters(8, "type1", "A")
    assert metrics["trainable_parameters"] == trainable
    assert metrics["total_parameters"] == trainable + 2 * (16 + 32 + 64 + 64)

    png = (run / "error_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (run / "backup").exists()

    # The trained model, and its SavedModel export answering the same probabilities.
    import keras
    import tensorflow as tf

    import keras_fastres  # noqa: F401 (registers the blocks)
    model = keras.saving.load_model(run / "model.keras")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    served = tf.saved_model.load(str(run / "export" / "1")).signatures["serving_default"]
    np.testing.assert_allclose(served(images=tf.constant(images))["probabilities"],
                               model.predict(images.astype("float32"), verbose=0), atol=1e-5)
    assert metrics["export_dir"] == str(run / "export" / "1")

    # Starting the finished run again would overwrite it: refused, at once. (In this process:
    # the recipe's own command line is the same main().)
    again = main(TrainConfig(), ["--synthetic", "--synthetic-size", "256", "64", "--depth",
                                 "8", "--epochs", "2", "--output-dir", str(run)])
    assert again == 1 and "already holds a finished run" in capsys.readouterr().err

    compare = main(TrainConfig(), ["--compare", str(run), "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert compare == 0
    assert (tmp_path / "comparison.png").read_bytes().startswith(b"\x89PNG")
    assert "cifar10 ResNet-8 type1" in out and "  1  " in out
    # The same run twice, or through a link, would count as two repeats: refused.
    (tmp_path / "link").symlink_to(run)
    for twice in ([run, run], [run, tmp_path / "link"]):
        assert main(TrainConfig(), ["--compare", *map(str, twice)]) == 2
        assert "twice" in capsys.readouterr().err


def test_killed_run_resumes_from_its_last_finished_epoch(tmp_path, capsys):
    """SIGKILL to a process of its own; the resumed and the uninterrupted runs in this one."""
    run, epochs = tmp_path / "run", 6
    args = ["--synthetic", "--synthetic-size", "256", "64", "--depth", "8", "--epochs",
            str(epochs), "--output-dir", str(run)]
    first = subprocess.Popen([sys.executable, str(ROOT / "recipes" / "cifar10.py"), *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    wait_for_backup(run, first, generations=2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished_before_kill = len(read_history(run / "history.csv"))
    assert 2 <= finished_before_kill < epochs and not (run / "metrics.json").exists()
    # Its newest backup damaged as a full disk would leave it: the run continues from the
    # generation before, and still ends as the uninterrupted run (below).
    newest, previous = sorted((run / "backup").glob("epoch-*"), reverse=True)
    weights = newest / "model.keras"
    weights.write_bytes(weights.read_bytes()[:4096])

    assert main(TrainConfig(), args) == 0
    second = capsys.readouterr()
    assert f"Resuming {run} after epoch {int(previous.name[len('epoch-'):])}." in second.out
    assert (f"warning: damaged backup skipped ({weights}: " in second.err
            and f"continuing from {previous.name} instead." in second.err)
    rows = read_history(run / "history.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx(
        [paper_learning_rate(e, epochs) for e in range(epochs)])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == epochs

    # Without --seed the run drew one and kept it with its backup, so the killed and resumed
    # run is bit for bit the uninterrupted run with that seed: same weights, same data order,
    # same augmentation. Another seed gives other weights.
    seed = metrics["seed"]
    assert isinstance(seed, int)
    assert main(TrainConfig(), [*args[:-1], str(tmp_path / "same"), "--seed", str(seed)]) == 0
    resumed = model_weights(run / "model.keras")
    assert all(np.array_equal(a, b)
               for a, b in zip(resumed, model_weights(tmp_path / "same" / "model.keras")))
    train(TrainConfig(source="synthetic", synthetic_size=(256, 64), depth=8, epochs=epochs,
                      seed=seed + 1, output_dir=str(tmp_path / "other"), verbose=0))
    assert not all(np.array_equal(a, b)
                   for a, b in zip(resumed, model_weights(tmp_path / "other" / "model.keras")))


def model_weights(path):
    import keras

    import keras_fastres  # noqa: F401 (registers the blocks)
    return keras.saving.load_model(path).get_weights()


def test_without_network_the_tfds_recipe_fails_fast_with_a_clear_message(tmp_path, capsys):
    """No network (the socket refuses, as without a route): one line within seconds. (With a
    network the recipe would download CIFAR-100; this machine's network is not asked.)"""
    from unittest import mock

    from keras_fastres import data
    start = time.monotonic()
    with mock.patch.dict("os.environ", {"https_proxy": "", "HTTPS_PROXY": ""}), \
            mock.patch.object(data.catalog.socket, "create_connection",
                              side_effect=OSError("no route")):
        code = main(TrainConfig(dataset="cifar100"), ["--depth", "20", "--data-dir",
                                                      str(tmp_path / "tfds")])
    assert time.monotonic() - start < 60
    error = capsys.readouterr().err
    assert code == 1 and error.startswith("error: ") and error.count("\n") == 1, error
    assert "cannot be reached" in error and "--source archive" in error
    assert "--synthetic" in error


@pytest.mark.parametrize("args, message", [
    (["--depth", "21", "--synthetic"], "6n + 2"),
    (["--source", "archive"], "needs data_dir"),
    (["--source", "archive", "--data-dir", "/no/such/cifar"], "/no/such/cifar does not exist"),
    (["--epochs", "0", "--synthetic"], "epochs must be a positive integer"),
])
def test_bad_arguments_fail_before_any_work(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where the default output directory (runs/...) would go
    assert main(TrainConfig(), args) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no run directory, nothing written


@pytest.mark.parametrize("precision, compute", [("float32", "float32"),
                                                ("mixed_bfloat16", "bfloat16"),
                                                ("mixed_float16", "float16")])
def test_precision_policies_and_loss_scaling(precision, compute):
    import keras

    from keras_fastres.training.config import build_and_compile

    model = build_and_compile(TrainConfig(depth=8, precision=precision), num_classes=10)
    assert model.get_layer("stage1_block1").compute_dtype == compute
    assert model.output.dtype == "float32"  # the classifier computes in float32
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        precision == "mixed_float16")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    with pytest.raises(ValueError, match="precision must be one of"):
        build_and_compile(TrainConfig(depth=8, precision="float8"), num_classes=10)


def test_xla_defaults_to_on_with_gpus_only():
    import tensorflow as tf

    from keras_fastres.training.config import build_and_compile
    from keras_fastres.utils.machine import resolve_jit_compile

    gpus = bool(tf.config.list_physical_devices("GPU"))
    assert resolve_jit_compile(None) is gpus
    assert resolve_jit_compile(True) is True and resolve_jit_compile(False) is False
    assert build_and_compile(TrainConfig(depth=8), 10).jit_compile is gpus
    config = parse_args(TrainConfig(), ["--jit-compile", "on", "--precision", "mixed_bfloat16"])
    assert config.jit_compile is True and config.precision == "mixed_bfloat16"


def test_a_resume_with_other_settings_is_refused_naming_each(tmp_path, capsys):
    run = tmp_path / "run"
    started = ["--synthetic", "--depth", "8", "--epochs", "6", "--seed", "1",
               "--output-dir", str(run)]
    state = {"finished_epochs": 2,
             "experiment": experiment(parse_args(TrainConfig(), started), 1)}
    stored = run / "backup" / "epoch-0002" / "state.json"
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps(state))

    def refused(argv, defaults=None):
        assert main(defaults or TrainConfig(), argv) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "another --output-dir" in error
        return error

    error = refused(["--synthetic", "--depth", "14", "--epochs", "2", "--learning-rate", "0.5",
                     "--batch-size", "64", "--seed", "1", "--output-dir", str(run)])
    for change in ("depth 8 -> 14", "epochs 6 -> 2", "learning_rate 0.1 -> 0.5",
                   "batch_size 128 -> 64"):
        assert change in error
    assert "seed" not in error.split("(")[1].split(")")[0]  # the seed was the same
    assert "seed 1 -> 2" in refused([*started[:-3], "2", *started[-2:]])
    assert "dataset 'cifar10' -> 'cifar100'" in refused(started, TrainConfig(dataset="cifar100"))
    assert json.loads(stored.read_text()) == state  # untouched
    assert sorted(p.name for p in run.iterdir()) == [".lock", "backup"]


@pytest.mark.parametrize("changed, defaults, named", [
    (["--variant", "preact"], {}, "variant 'type1' -> 'preact'"),
    (["--shortcut", "B"], {}, "shortcut 'A' -> 'B'"),
    (["--drop-path-rate", "0.1"], {}, "drop_path_rate 0.0 -> 0.1"),
    (["--extra-augmentation", "mixup"], {}, "extra_augmentation [] -> ['mixup']"),
    (["--precision", "mixed_bfloat16"], {}, "precision 'float32' -> 'mixed_bfloat16'"),
    (["--synthetic-size", "512", "64"], {}, "synthetic_size [1024, 256] -> [512, 64]"),
    (["--lr-scaling", "linear"], {}, "lr_scaling None -> 'linear'"),
    ([], {"weight_decay": 5e-4}, "weight_decay 0.0001 -> 0.0005"),
    ([], {"momentum": 0.95}, "momentum 0.9 -> 0.95"),
])
def test_every_setting_of_the_experiment_is_checked_on_resume(changed, defaults, named,
                                                              tmp_path, capsys):
    run = tmp_path / "run"
    started = ["--synthetic", "--depth", "8", "--seed", "1", "--output-dir", str(run)]
    stored = run / "backup" / "epoch-0001" / "state.json"
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps(
        {"finished_epochs": 1, "experiment": experiment(parse_args(TrainConfig(), started), 1)}))
    assert main(TrainConfig(**defaults), [*started, *changed]) == 2
    error = capsys.readouterr().err
    assert f"another experiment ({named})" in error and error.count("\n") == 1


def test_a_second_process_on_one_output_directory_is_refused(tmp_path, capsys):
    """The first run in a process of its own; the second, refused, in this one."""
    run = tmp_path / "run"
    args = ["--synthetic", "--depth", "8", "--epochs", "1000", "--synthetic-size", "256", "64",
            "--output-dir", str(run)]
    first = subprocess.Popen([sys.executable, str(ROOT / "recipes" / "cifar10.py"), *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_for_backup(run, first)
        assert main(TrainConfig(), args) == 1
        assert first.poll() is None  # the first was training all along
        assert capsys.readouterr().err == (
            f"error: Another process (PID {first.pid}) is training in {run}; wait for it to "
            f"end, or pass another --output-dir.\n")
    finally:
        first.kill()  # (SIGINT could be ignored: CI may run the tests in the background)
        first.wait()
    # The first's outputs are its own: one history row per backed-up or running epoch, no
    # metrics (unfinished).
    rows = read_history(run / "history.csv")
    newest = max(int(p.name.split("-")[1]) for p in (run / "backup").glob("epoch-*"))
    assert newest >= 1 and [int(r["epoch"]) for r in rows][:newest] == list(range(1, newest + 1))
    assert not (run / "metrics.json").exists()


def test_an_output_directory_that_cannot_be_created_is_refused_before_any_work(tmp_path,
                                                                             capsys):
    (tmp_path / "file").write_text("not a folder")
    for output in (tmp_path / "file", tmp_path / "file" / "run"):
        assert main(TrainConfig(), ["--synthetic", "--output-dir", str(output)]) == 2
        error = capsys.readouterr().err
        assert error == (f"error: The output directory {output} cannot be created: "
                         f"{tmp_path / 'file'} is a file. Pass another --output-dir.\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_negative_weight_decay_is_refused_as_such(tmp_path):
    with pytest.raises(ValueError, match="weight_decay must be a number >= 0 .* got -1"):
        train(TrainConfig(weight_decay=-1, source="synthetic", output_dir=str(tmp_path / "r")))
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_says_how_to_continue(monkeypatch, capsys):
    from keras_fastres.commands import train as training

    def interrupted(config, progress):
        raise KeyboardInterrupt
    monkeypatch.setattr(training, "train", interrupted)
    assert main(TrainConfig(), ["--synthetic", "--depth", "8"]) == 130
    error = capsys.readouterr().err
    assert ("Interrupted. Run the same command again to continue from the last finished epoch "
            "(saved in runs/cifar10-synthetic-resnet8-type1/backup).") in error


def test_tensorflow_errors_are_one_line_and_name_workers_only_in_a_cluster(monkeypatch, capsys):
    import tensorflow as tf

    from keras_fastres.commands import train as training

    def failing(config, progress):
        raise tf.errors.InternalError(None, None, "collective aborted\nstack ...")
    monkeypatch.setattr(training, "train", failing)
    assert main(TrainConfig(), ["--synthetic"]) == 1
    assert capsys.readouterr().err == "error: TensorFlow: collective aborted\n"
    assert main(TrainConfig(), ["--synthetic", "--strategy", "multi-worker"]) == 1
    assert "If a worker was lost, start every worker again" in capsys.readouterr().err


def test_a_backup_with_no_usable_generation_is_one_line_naming_the_file(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--synthetic", "--synthetic-size", "128", "64", "--depth", "8", "--epochs", "4",
            "--seed", "1", "--output-dir", str(run)]
    generation = run / "backup" / "epoch-0002"
    generation.mkdir(parents=True)
    (generation / "state.json").write_text(json.dumps(
        {"finished_epochs": 2, "experiment": experiment(parse_args(TrainConfig(), argv), 1)}))
    (generation / "model.keras").write_bytes(b"")  # emptied by a crash
    assert main(TrainConfig(), argv) == 1  # a damaged backup is a failure, not a usage error
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{generation / 'model.keras'}: " in error
    assert f"Delete {run / 'backup'} to train this run again from its first epoch" in error
    assert (generation / "model.keras").read_bytes() == b""  # left for the user to see
