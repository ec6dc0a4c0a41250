"""The error curves plot the history's numbers: checked on the figure's own line data."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from keras_fastres.callbacks import HistoryCSV
from keras_fastres.plots import compare_runs, error_figure, plot_runs


def rows(test_errors, accuracies):
    return [{"epoch": str(e + 1), "test_error": str(t), "accuracy": str(a)}
            for e, (t, a) in enumerate(zip(test_errors, accuracies))]


def test_the_curves_are_the_errors_in_percent_per_epoch():
    figure = error_figure([("preact", rows([0.5, 0.25, 0.125], [0.4, 0.7, 0.9])),
                           ("type1", rows([0.6, 0.3], [0.3, 0.6]))], train_error=True,
                          title="cifar10")
    [axes] = figure.axes
    lines = {line.get_label(): line.get_xydata() for line in axes.lines}
    assert set(lines) == {"preact test", "preact train", "type1 test", "type1 train"}
    np.testing.assert_allclose(lines["preact test"], [[1, 50], [2, 25], [3, 12.5]])
    np.testing.assert_allclose(lines["preact train"], [[1, 60], [2, 30], [3, 10]])
    np.testing.assert_allclose(lines["type1 test"], [[1, 60], [2, 30]])
    assert axes.lines[1].get_linestyle() == "--"  # the training error, dashed
    assert axes.lines[0].get_color() == axes.lines[1].get_color()  # one colour per run
    assert axes.get_title() == "cifar10" and axes.get_ylabel() == "error (%)"
    plt.close(figure)
    without_train = error_figure([("a", rows([0.5], [0.5]))])
    assert [line.get_label() for line in without_train.axes[0].lines] == ["a test"]
    plt.close(without_train)


def test_plot_and_compare_write_pngs_labelled_by_the_runs(tmp_path, monkeypatch):
    plot_runs([("a", rows([0.5, 0.4], [0.5, 0.6]))], tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
    run = tmp_path / "run"
    run.mkdir()
    history = HistoryCSV(run / "history.csv")
    for epoch, error in enumerate((0.9, 0.8)):
        history.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5, "test_error": error})
    (run / "metrics.json").write_text(json.dumps(
        {"dataset": "cifar10", "depth": 20, "variant": "type1"}))
    drawn = []
    monkeypatch.setattr("keras_fastres.plots.error_figure",
                        lambda runs, *args, **kwargs: drawn.append(runs) or plt.figure())
    compare_runs([run], tmp_path / "comparison.png")
    [[(label, history_rows)]] = drawn
    assert label == "cifar10 ResNet-20 type1"
    assert [float(r["test_error"]) for r in history_rows] == [0.9, 0.8]
    with pytest.raises(ValueError, match="has no history.csv"):
        compare_runs([tmp_path / "empty"], tmp_path / "x.png")
