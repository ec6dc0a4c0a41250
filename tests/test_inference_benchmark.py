"""The serving benchmark's report: every runtime timed, its fields and its arithmetic."""

import json
from pathlib import Path

import pytest

from keras_fastres.benchmarks import inference
from keras_fastres.benchmarks.inference import run_inference_benchmark
from keras_fastres.benchmarks.report import format_markdown, format_table

from conftest import FakeClock, run_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_throughput_and_latency_are_what_the_timed_calls_took(monkeypatch):
    """The real exports run, but each call takes what a fake clock says: per image 1 ms
    (SavedModel folded), 2 ms (unfolded), 4 ms (ONNX), 2.5 ms (ONNX int8), 3 ms (LiteRT) or
    0.5 ms (LiteRT int8) in a batch; the n-th single-image call of a runtime (the warm-up
    first) n times that."""
    clock = FakeClock()
    per_image_ms = {("saved_model", True): 1.0, ("saved_model", False): 2.0,
                    ("onnxruntime", True): 4.0, ("onnxruntime int8", True): 2.5,
                    ("litert", True): 3.0, ("litert int8", True): 0.5}
    real_runners = inference._runners

    def timed_runners(depth, variant, directory):
        def timed(run, ms, singles):
            def call(images):
                answer = run(images)
                singles[0] += len(images) == 1
                clock.advance(ms * (singles[0] if len(images) == 1 else len(images)) / 1000)
                return answer
            return call
        return {case: timed(run, per_image_ms[case], [0])
                for case, run in real_runners(depth, variant, directory).items()}
    monkeypatch.setattr(inference, "_runners", timed_runners)
    monkeypatch.setattr(inference, "time", clock)
    report = run_inference_benchmark(depths=(8,), variants=("type1",), batch_size=4, rounds=2,
                                     batches=1, latency_calls=3)
    assert report["kind"] == "inference" and report["onnxruntime"]
    results = {(r["runtime"], r["folded"]): r for r in report["results"]}
    assert set(results) == set(per_image_ms)
    for case, result in results.items():
        ms = per_image_ms[case]
        assert (result["depth"], result["variant"], result["batch_size"]) == (8, "type1", 4)
        assert result["images_per_second_per_round"] == pytest.approx([1000 / ms] * 2)
        assert result["images_per_second"] == pytest.approx(1000 / ms)
        # Six timed single calls took 2..7 ms-units: the median 4.5, the 99th percentile
        # (linear between the 5th and 6th of six) 6.95.
        assert result["latency_ms_p50"] == pytest.approx(4.5 * ms)
        assert result["latency_ms_p99"] == pytest.approx(6.95 * ms)
        assert result["ratio_to_unfolded"] == pytest.approx(2.0 / ms)
        assert result["ratio_to_onnx_float"] == pytest.approx(4.0 / ms)
    for text in (format(report, inference.COLUMNS, inference.summary(report))
                 for format in (format_table, format_markdown)):
        assert "onnxruntime int8" in text and "litert int8" in text and "batch-1 p99 ms" in text


def test_bad_inference_arguments():
    with pytest.raises(ValueError, match="variants must be taken from"):
        run_inference_benchmark(depths=(8,), variants=("fast",))
    with pytest.raises(ValueError, match="latency_calls must be a positive integer"):
        run_inference_benchmark(depths=(8,), latency_calls=0)


def test_benchmark_recipe_inference_writes_json(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.json"
    assert run_recipe("benchmark", ["inference", "--depths", "8", "--variants", "preact",
                                    "--batch-size", "2", "--rounds", "1", "--json", out],
                      monkeypatch) == 0
    result = capsys.readouterr()
    report = json.loads(out.read_text())
    assert {(r["runtime"], r["folded"]) for r in report["results"]} == set(inference.RUNTIMES)
    assert set(inference.RUNTIMES) == {
        ("saved_model", True), ("saved_model", False), ("onnxruntime", True),
        ("onnxruntime int8", True), ("litert", True), ("litert int8", True)}
    assert all(r["variant"] == "preact" and r["depth"] == 8 for r in report["results"])
    assert "vs unfolded" in result.out
