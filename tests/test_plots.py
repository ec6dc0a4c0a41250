"""The error curves plot the history's numbers: checked on the figure's own line data."""

import numpy as np

from keras_fastres.training.plots import error_figure, plot_runs


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
    without_train = error_figure([("a", rows([0.5], [0.5]))])
    assert [line.get_label() for line in without_train.axes[0].lines] == ["a test"]


def test_plot_runs_writes_a_png(tmp_path):
    plot_runs([("a", rows([0.5, 0.4], [0.5, 0.6]))], tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")


def test_plotting_leaves_matplotlibs_backend_alone(tmp_path):
    """A notebook's backend stays its own: importing the plotting modules (their code executed
    again here, as a first import would, into fresh module objects: a reload would leave the
    registered modules' classes changed under the modules that imported them) and plotting
    switch nothing."""
    import importlib.util

    import matplotlib

    from keras_fastres.training import compare, plots

    def executed_afresh(module):
        spec = importlib.util.spec_from_file_location(f"fresh_{module.__name__}",
                                                      module.__file__)
        fresh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fresh)
        return fresh
    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        fresh_plots = executed_afresh(plots)
        executed_afresh(compare)
        fresh_plots.plot_runs([("a", rows([0.5, 0.4], [0.5, 0.6]))], tmp_path / "curve.png")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
    finally:
        matplotlib.use(previous)
