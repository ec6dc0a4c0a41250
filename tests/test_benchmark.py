"""The benchmark's report: its fields, its arithmetic and its FLOP count. No timing asserts."""

import json
import statistics
from pathlib import Path

import pytest

from keras_fastres import FastResNet
from keras_fastres.benchmarks import pipeline, training
from keras_fastres.benchmarks.pipeline import run_pipeline_benchmark
from keras_fastres.benchmarks.report import format_markdown, format_table
from keras_fastres.benchmarks.training import (
    forward_multiply_adds,
    run_benchmark,
    train_flops_per_image,
)

from conftest import FakeClock, run_recipe


def table(report, layout=training):
    return format_table(report, layout.COLUMNS, layout.summary(report))


def markdown(report, layout=training):
    return format_markdown(report, layout.COLUMNS, layout.summary(report))

ROOT = Path(__file__).resolve().parent.parent


def hand_count_resnet20():
    """Multiply-adds of ResNet-20's forward pass: output positions x kernel size, per conv."""
    stem = 32 * 32 * (3 * 3 * 3 * 16)
    stage1 = 6 * 32 * 32 * (3 * 3 * 16 * 16)
    stage2 = 16 * 16 * (3 * 3 * 16 * 32) + 5 * 16 * 16 * (3 * 3 * 32 * 32)
    stage3 = 8 * 8 * (3 * 3 * 32 * 64) + 5 * 8 * 8 * (3 * 3 * 64 * 64)
    dense = 64 * 10
    return stem + stage1 + stage2 + stage3 + dense


@pytest.mark.parametrize("variant", ["v1", "preact", "type1", "type2"])
def test_resnet20_flops_match_a_hand_count(variant):
    model = FastResNet(20, variant)
    assert forward_multiply_adds(model) == hand_count_resnet20() == 40_551_040  # "about 41M"
    assert train_flops_per_image(model) == 2 * 3 * hand_count_resnet20()


def test_projection_shortcuts_add_their_multiply_adds():
    extra = 16 * 16 * (16 * 32) + 8 * 8 * (32 * 64)  # the two 1x1 stride-2 projections
    assert forward_multiply_adds(FastResNet(20, shortcut="B")) == hand_count_resnet20() + extra


def test_deeper_networks_scale_as_the_paper_says():
    # PAPER.md: about 126M multiply-adds for ResNet-56 and 253M for ResNet-110.
    assert round(forward_multiply_adds(FastResNet(56)) / 1e6) == 125
    assert round(forward_multiply_adds(FastResNet(110)) / 1e6) == 253


def test_the_report_is_what_the_timed_steps_took(monkeypatch):
    """Real models train, but each step takes what a fake clock says: preact's 40 ms, 50 ms,
    60 ms in the three rounds, type1's 30 ms each time; the matmul peak 100 GFLOP/s."""
    import tensorflow as tf

    clock = FakeClock()
    step_ms = {"preact": [40, 50, 60], "type1": [30, 30, 30]}
    real_init = training.TrainSteps.__init__

    def init(steps, case, images, labels):
        real_init(steps, case, images, labels)
        call, durations = steps._call, iter([0, *step_ms[case.variant]])  # warm-up, rounds

        def timed_call():
            call()  # the real step runs
            clock.advance(next(durations) / 1000)
        steps._call = timed_call
    monkeypatch.setattr(training.TrainSteps, "__init__", init)
    monkeypatch.setattr(training, "time", clock)
    monkeypatch.setattr(training, "matmul_peak", lambda precision, rounds=1: 100.0)
    report = run_benchmark(depths=(8,), variants=("preact", "type1"), batch_size=4, rounds=3,
                           steps=1, warmup_steps=1)
    assert report["batch_size"] == 4 and report["rounds"] == 3 and report["device"]
    assert report["matmul_peak_gflops"] == {"float32": 100.0}
    results = {r["variant"]: r for r in report["results"]}
    assert set(results) == {"preact", "type1"}
    for variant, result in results.items():
        step = statistics.median(step_ms[variant]) / 1000  # 50 ms and 30 ms
        assert result["step_seconds_per_round"] == pytest.approx(
            [ms / 1000 for ms in step_ms[variant]])
        assert result["step_seconds"] == pytest.approx(step)
        assert result["images_per_second"] == pytest.approx({"preact": 80, "type1": 400 / 3}[
            variant])
        assert result["epoch_seconds"] == pytest.approx(step * 50_000 / 4)
        flops = train_flops_per_image(FastResNet(8, variant))
        assert result["train_gflop_per_image"] == pytest.approx(flops / 1e9)
        assert result["peak_fraction"] == pytest.approx(flops * 4 / step / 1e9 / 100.0)
        assert result["precision"] == "float32" and result["batch_norm"] == "fused"  # auto
        assert result["jit_compile"] is bool(tf.config.list_physical_devices("GPU"))
    assert results["type1"]["ratio_to_preact"] == pytest.approx(0.6)
    assert results["preact"]["ratio_to_preact"] == 1.0
    # The peak is measured in every round, interleaved with the models; the median is used.
    assert report["matmul_peak_gflops_per_round"] == {"float32": [100.0] * 3}
    assert report["peak_disturbed"] is False  # a few % of 100 GFLOP/s at most

    text_table, text_markdown = table(report), markdown(report)
    for text in (text_table, text_markdown):
        assert "type1" in text and "preact" in text and "GFLOP/s" in text
    assert text_markdown.count("\n| ") == 3  # header and two rows


def test_both_batch_norms_side_by_side_each_with_its_own_baseline():
    report = run_benchmark(depths=(8,), variants=("preact", "type1"), batch_size=2, rounds=1,
                           steps=1, warmup_steps=1, batch_norms=("keras", "fused", "auto"))
    results = {(r["variant"], r["batch_norm"]): r for r in report["results"]}
    assert set(results) == {(v, b) for v in ("preact", "type1") for b in ("keras", "fused")}
    for implementation in ("keras", "fused"):
        preact, type1 = results["preact", implementation], results["type1", implementation]
        assert preact["ratio_to_preact"] == 1.0
        assert type1["ratio_to_preact"] == pytest.approx(
            type1["step_seconds"] / preact["step_seconds"])
    assert report["backend"] == "tensorflow"
    assert "keras" in table(report) and "fused" in table(report)


def test_ratio_is_missing_without_a_preact_baseline():
    report = run_benchmark(depths=(8,), variants=("type1",), batch_size=2, rounds=1, steps=1,
                           warmup_steps=1)
    assert report["results"][0]["ratio_to_preact"] is None
    assert " - " in table(report)


@pytest.mark.parametrize("kwargs, message", [
    ({"variants": ("fast",)}, "variants must be taken from"),
    ({"precisions": ("float8",)}, "precisions must be taken from"),
    ({"depths": (21,)}, r"6n \+ 2"),
    ({"rounds": 0}, "rounds must be a positive integer"),
    ({"batch_norms": ("cudnn",)}, r"batch_norm must be one of \('auto', 'fused', 'keras'\)"),
])
def test_bad_benchmark_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_benchmark(**{"depths": (8,), **kwargs})


def test_benchmark_recipe_writes_json(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.json"
    assert run_recipe("benchmark", ["--depths", "8", "--variants", "preact,type1",
                                    "--batch-size", "2", "--rounds", "1", "--steps", "1",
                                    "--batch-norm", "keras,fused", "--json", out],
                      monkeypatch) == 0
    result = capsys.readouterr()
    assert "round 1/1" in result.err  # progress
    report = json.loads(out.read_text())
    assert [(r["variant"], r["batch_norm"]) for r in report["results"]] == [
        ("preact", "keras"), ("preact", "fused"), ("type1", "keras"), ("type1", "fused")]
    assert "vs preact" in result.out


def test_pipeline_benchmark_counts_every_image():
    report = run_pipeline_benchmark(batch_size=64, rounds=2, images=1000, image_sizes=(32, 16))
    result, smaller = report["results"]
    assert (report["kind"], result["images"], result["batch_size"]) == ("pipeline", 1000, 64)
    assert (result["image_size"], smaller["image_size"]) == (32, 16)
    assert smaller["images_delivered_per_round"] == [1000, 1000]
    # Counted from the batches the pipeline yielded: 15 full batches of 64 and one of 40.
    assert result["images_delivered"] == 1000
    assert result["images_delivered_per_round"] == [1000, 1000]
    assert len(result["pipeline_images_per_second_per_round"]) == 2
    assert result["pipeline_images_per_second"] == statistics.median(
        result["pipeline_images_per_second_per_round"])
    assert "pipeline images/s" in table(report, pipeline) and "16x16" in table(report, pipeline)
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        run_pipeline_benchmark(rounds=0)


def test_loader_benchmark_counts_the_images_it_decoded(tmp_path, capsys):
    from PIL import Image

    from keras_fastres.commands.benchmark import main

    for index in range(12):
        (tmp_path / f"class{index % 2}").mkdir(exist_ok=True)
        Image.new("RGB", (64, 64), (index, 0, 0)).save(tmp_path / f"class{index % 2}/{index}.jpg")
    (tmp_path / "class0" / "broken.jpg").write_bytes(b"no jpeg")
    assert main(["loader", str(tmp_path), "--image-size", "16", "--rounds", "2", "--workers",
                 "1,2", "--json", str(tmp_path / "loader.json")]) == 0
    one, two = json.loads((tmp_path / "loader.json").read_text())["results"]
    for workers, result in ((1, one), (2, two)):
        assert (result["images"], result["skipped"], result["image_size"]) == (12, 1, "16x16")
        assert result["workers"] == workers and len(result["loader_images_per_second_per_round"]) == 2
    assert one["speedup"] == 1 and two["speedup"] == pytest.approx(
        two["loader_images_per_second"] / one["loader_images_per_second"])
    assert "loader images/s" in capsys.readouterr().out
    assert not list(tmp_path.glob("*/folders"))  # each round's cache was its own, now gone
    with pytest.raises(SystemExit) as refused:
        main(["loader", str(tmp_path / "none")])
    assert refused.value.code == 2


def test_the_loader_benchmark_on_a_folder_it_cannot_read_is_one_line(tmp_path, monkeypatch,
                                                                      capsys):
    """A folder without read permission (listing it refused: the tests run as root, whom
    chmod does not stop)."""
    import os

    from keras_fastres.commands.benchmark import main
    (tmp_path / "a").mkdir()
    listdir = os.listdir

    def refused(path="."):
        if isinstance(path, (str, os.PathLike)) and Path(path) == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)
    monkeypatch.setattr(os, "listdir", refused)
    assert main(["loader", str(tmp_path), "--rounds", "1", "--workers", "1"]) == 1
    error = capsys.readouterr().err  # after the progress lines, one line and no traceback
    assert error.endswith(f"\nerror: Cannot read the folder {tmp_path} (Permission denied).\n")
    assert "Traceback" not in error and error.count("error:") == 1


def test_a_fraction_above_the_peak_is_never_printed_without_a_warning():
    report = {"device": "CPU", "keras": "3", "backend": "tensorflow", "tensorflow": "2",
              "batch_size": 4, "rounds": 3, "steps_per_round": 1,
              "matmul_peak_gflops": {"float32": 88.0},
              "matmul_peak_gflops_per_round": {"float32": [88.0, 250.0, 60.0]},
              "peak_disturbed": True}
    text = training.summary(report)
    assert "float32 88.0 GFLOP/s (60-250 over the rounds)" in text
    assert "WARNING: a model ran above the measured matmul peak" in text
    assert "WARNING" not in training.summary({**report, "peak_disturbed": False})


def test_steps_per_call_are_compared_in_one_process():
    report = run_benchmark(depths=(8,), variants=("type1",), batch_size=2, rounds=2, steps=1,
                           warmup_steps=1, steps_per_execution=(4, 1))
    by_calls = {r["steps_per_execution"]: r for r in report["results"]}
    assert sorted(by_calls) == [1, 4]
    for result in by_calls.values():
        assert result["images_per_second"] == pytest.approx(2 / result["step_seconds"])
    assert "steps/call" in table(report)
    with pytest.raises(ValueError, match="steps_per_execution 0 must be a positive integer"):
        run_benchmark(depths=(8,), steps_per_execution=(0,))


def test_the_report_for_gpu_owners_runs_quick_on_the_cpu(tmp_path, capsys, monkeypatch):
    out = tmp_path / "report.json"
    assert run_recipe("benchmark", ["report", "--quick", "--json", out], monkeypatch) == 0
    result = capsys.readouterr()
    report = json.loads(out.read_text())
    assert report["kind"] == "report" and report["quick"] and report["device"]
    assert {"keras", "tensorflow", "keras_fastres"} <= set(report["versions"])
    assert {r["jit_compile"] for r in report["training"]["results"]} == {False, True}
    assert [r["steps_per_execution"] for r in report["steps_per_execution"]["results"]] == [1, 4]
    host, device = report["data_placement"]
    assert (host["data_placement"], device["data_placement"]) == ("host", "device")
    assert device["ratio_to_host"] == pytest.approx(
        device["images_per_second"] / host["images_per_second"])
    markdown = out.with_suffix(".md").read_text()
    assert markdown.startswith("# keras-fastres report (quick): ") and "| device |" in markdown
    assert markdown.strip() in result.out


def test_a_bad_setting_exits_2_in_one_line(capsys):
    from keras_fastres.commands.benchmark import main
    assert main(["--depths", "21", "--variants", "type1"]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("error: depth must be an integer of the form 6n + 2")


def test_a_report_whose_json_name_ends_in_md_is_refused(tmp_path, capsys):
    """The Markdown copy goes to FILE with .md: with FILE.md it would overwrite the JSON."""
    from keras_fastres.commands.benchmark import main
    with pytest.raises(SystemExit) as refused:
        main(["report", "--quick", "--json", str(tmp_path / "report.md")])
    assert refused.value.code == 2
    assert "give a name such as report.json" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_each_benchmark_is_a_subcommand_and_the_old_flags_still_select_it(capsys):
    from keras_fastres.commands.benchmark import SUBCOMMANDS, build_parser, with_subcommand
    assert with_subcommand([]) == ["train"]
    assert with_subcommand(["--depths", "8"]) == ["train", "--depths", "8"]
    for name in SUBCOMMANDS:
        assert with_subcommand([name, "--rounds", "2"]) == [name, "--rounds", "2"]
    assert capsys.readouterr().err == ""
    old = {("--inference", "--depths", "8"): ["inference", "--depths", "8"],
           ("--rounds", "2", "--pipeline"): ["pipeline", "--rounds", "2"],
           ("--serve",): ["serve"],
           ("--report", "--quick"): ["report", "--quick"],
           ("--image-size", "8", "--loader", "DIR"): ["loader", "--image-size", "8", "DIR"],
           ("--loader=DIR", "--workers", "1"): ["loader", "DIR", "--workers", "1"]}
    for argv, expected in old.items():
        assert with_subcommand(list(argv)) == expected
        flag = argv[[a.split("=")[0] for a in argv].index(f"--{expected[0]}")].split("=")[0]
        assert capsys.readouterr().err == (
            f"warning: {flag} is deprecated and goes in 0.5; use 'fastres-benchmark "
            f"{expected[0]}{' DIR' if expected[0] == 'loader' else ''}'\n")
    args = build_parser().parse_args(["inference"])  # each subcommand has its own defaults
    assert (args.depths, args.variants) == ([110], ["preact", "type1"])
    args = build_parser().parse_args(["train"])
    assert (args.depths, args.variants) == ([20, 56, 110], ["preact", "type1", "type2", "v1"])
    with pytest.raises(SystemExit):  # an option of another benchmark is refused
        build_parser().parse_args(["pipeline", "--steps", "3"])
