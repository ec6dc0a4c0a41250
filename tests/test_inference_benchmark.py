"""The serving benchmark's report: every runtime timed, its fields and its arithmetic."""

import json
import statistics
from pathlib import Path

import pytest

from keras_fastres.benchmarks import inference
from keras_fastres.benchmarks.inference import run_inference_benchmark
from keras_fastres.benchmarks.report import format_markdown, format_table

from conftest import run_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_inference_report_fields_and_arithmetic():
    report = run_inference_benchmark(depths=(8,), variants=("type1",), batch_size=4, rounds=2,
                                     batches=1, latency_calls=3)
    assert report["kind"] == "inference" and report["onnxruntime"]
    results = {(r["runtime"], r["folded"]): r for r in report["results"]}
    assert set(results) == {("saved_model", True), ("saved_model", False), ("onnxruntime", True)}
    unfolded = results["saved_model", False]["images_per_second"]
    for result in results.values():
        assert (result["depth"], result["variant"], result["batch_size"]) == (8, "type1", 4)
        assert result["images_per_second"] == statistics.median(
            result["images_per_second_per_round"])
        assert 0 < result["latency_ms_p50"] <= result["latency_ms_p99"]
        assert result["ratio_to_unfolded"] == pytest.approx(
            result["images_per_second"] / unfolded)
    for text in (format(report, inference.COLUMNS, inference.summary(report))
                 for format in (format_table, format_markdown)):
        assert "onnxruntime" in text and "batch-1 p99 ms" in text


def test_bad_inference_arguments():
    with pytest.raises(ValueError, match="variants must be taken from"):
        run_inference_benchmark(depths=(8,), variants=("fast",))
    with pytest.raises(ValueError, match="latency_calls must be a positive integer"):
        run_inference_benchmark(depths=(8,), latency_calls=0)


def test_benchmark_recipe_inference_writes_json(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.json"
    assert run_recipe("benchmark", ["--inference", "--depths", "8", "--variants", "preact",
                                    "--batch-size", "2", "--rounds", "1", "--json", out],
                      monkeypatch) == 0
    result = capsys.readouterr()
    report = json.loads(out.read_text())
    assert {(r["runtime"], r["folded"]) for r in report["results"]} == {
        ("saved_model", True), ("saved_model", False), ("onnxruntime", True)}
    assert all(r["variant"] == "preact" and r["depth"] == 8 for r in report["results"])
    assert "vs unfolded" in result.out
