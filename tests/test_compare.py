"""--compare: the paper's Table 1 from finished runs (mean +- std over seeds, seconds per epoch,
ratio to preact) and one figure of their test error curves."""

import json

import pytest

from keras_fastres.callbacks import HistoryCSV
from keras_fastres.commands.train import main
from keras_fastres.training.compare import compare_runs, read_run, summarize
from keras_fastres.training.config import TrainConfig


def finished_run(directory, variant, seed, test_error, seconds, depth=20):
    directory.mkdir(parents=True)
    history = HistoryCSV(directory / "history.csv")
    for epoch, error in enumerate((0.9, test_error)):
        history.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5, "test_error": error})
    settings = {key: value for key, value in vars(TrainConfig()).items()}
    settings.update(depth=depth, variant=variant, seed=seed, test_error=test_error,
                    mean_epoch_seconds=seconds, extra_augmentation=[], synthetic_size=[1, 1],
                    lr_scaling="none", jit_compile="auto")
    (directory / "metrics.json").write_text(json.dumps(settings))
    return directory


def test_runs_of_one_configuration_give_mean_std_and_the_ratio_to_preact(tmp_path):
    runs = [finished_run(tmp_path / f"preact-{s}", "preact", s, e, t)
            for s, e, t in ((1, 0.0750, 30.0), (2, 0.0770, 31.0), (3, 0.0780, 29.0))]
    runs += [finished_run(tmp_path / f"type1-{s}", "type1", s, e, t)
             for s, e, t in ((1, 0.0760, 22.0), (2, 0.0780, 22.2))]
    runs.append(finished_run(tmp_path / "type2", "type2", 1, 0.1000, 22.1, depth=56))
    rows = {row["label"]: row for row in summarize([read_run(r)[1] for r in runs])}
    preact, type1 = rows["cifar10 ResNet-20 preact"], rows["cifar10 ResNet-20 type1"]
    assert preact["runs"] == 3 and type1["runs"] == 2
    assert preact["error_mean"] == pytest.approx(7.6667, abs=1e-4)
    assert preact["error_std"] == pytest.approx(0.15275, abs=1e-4)  # sample std, n - 1
    assert type1["error_std"] == pytest.approx(0.14142, abs=1e-4)
    assert preact["ratio_to_preact"] == 1.0
    assert type1["ratio_to_preact"] == pytest.approx(22.1 / 30.0)
    other_depth = rows["cifar10 ResNet-56 type2"]
    assert other_depth["ratio_to_preact"] is None and other_depth["error_std"] is None

    text = compare_runs(runs, tmp_path / "comparison.png")
    assert "7.67 +- 0.15" in text and "0.737" in text and "10.00" in text
    assert (tmp_path / "comparison.png").read_bytes().startswith(b"\x89PNG")


def test_configurations_that_differ_beyond_the_label_are_told_apart(tmp_path):
    """Runs of one dataset, depth and variant that differ in their initialisation (or data,
    or any other setting) are two configurations, and their labels say how they differ."""
    scratch = finished_run(tmp_path / "scratch", "type1", 1, 0.10, 20.0)
    tuned = finished_run(tmp_path / "tuned", "type1", 1, 0.05, 20.0)
    metrics = json.loads((tuned / "metrics.json").read_text())
    (tuned / "metrics.json").write_text(json.dumps({**metrics, "init_from": "cifar.keras"}))
    other = finished_run(tmp_path / "other", "preact", 1, 0.09, 25.0)
    rows = summarize([read_run(r)[1] for r in (scratch, tuned, other)])
    assert [row["label"] for row in rows] == [
        "cifar10 ResNet-20 type1 (init_from=None)",
        "cifar10 ResNet-20 type1 (init_from=cifar.keras)",
        "cifar10 ResNet-20 preact"]  # alone with its label: nothing added


def test_the_command_prints_the_table_and_writes_the_figure_beside_the_runs(tmp_path, capsys):
    runs = [str(finished_run(tmp_path / "runs" / v, v, 1, e, t))
            for v, e, t in (("preact", 0.08, 30.0), ("type1", 0.07, 24.0))]
    assert main(TrainConfig(), ["--compare", *runs]) == 0
    out = capsys.readouterr().out
    assert "test error %" in out and "0.800" in out
    assert f"Wrote {tmp_path / 'runs' / 'comparison.png'}" in out
    assert (tmp_path / "runs" / "comparison.png").exists()


@pytest.mark.parametrize("metrics, message", [
    ("[]", "is not the metrics of a finished run"),
    ("{", "cannot be read as JSON"),
])
def test_unreadable_metrics_are_named(tmp_path, metrics, message, capsys):
    run = finished_run(tmp_path / "run", "type1", 1, 0.1, 1.0)
    (run / "metrics.json").write_text(metrics)
    assert main(TrainConfig(), ["--compare", str(run)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{run / 'metrics.json'}" in error and message in error


def test_a_damaged_history_is_named(tmp_path, capsys):
    run = finished_run(tmp_path / "run", "type1", 1, 0.1, 1.0)
    (run / "history.csv").write_text("epoch,loss\nseven,1\n")
    assert main(TrainConfig(), ["--compare", str(run)]) == 2
    error = capsys.readouterr().err
    assert f"{run / 'history.csv'} is not a history file" in error and error.count("\n") == 1
