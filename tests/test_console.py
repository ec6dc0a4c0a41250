"""The commands: entry points, quiet start-up, every default in --help, one-line errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from keras_fastres import benchmark, export, predict
from keras_fastres.training import TrainConfig, main, parse_args

# As a user's shell has it: TensorFlow's log level not set, so the commands choose it.
USER_ENV = {k: v for k, v in os.environ.items()
            if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_FASTRES_COMMAND")}


def test_installed_and_module_commands_start_quietly_and_fail_in_one_line(tmp_path):
    """No TensorFlow start-up lines, no runpy warning, no traceback: the error alone."""
    installed = Path(sys.executable).parent
    commands = [
        ([sys.executable, "-m", "keras_fastres.export", "--model", str(tmp_path / "nothing"),
          "--export-dir", str(tmp_path / "out")], "No model at"),
        ([str(installed / "fastres-predict"), str(tmp_path), str(tmp_path)], "is a folder"),
    ]
    for command, message in commands:
        result = subprocess.run(command, capture_output=True, text=True, env=USER_ENV,
                                timeout=300)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (
            result.stderr)
        assert message in result.stderr


@pytest.mark.parametrize("command, argv, default", [
    (lambda argv: main(TrainConfig(), argv), [], "(default: 160)"),
    (export.main, [], "(default: saved_model)"),
    (predict.main, [], "(default: 3)"),
    (benchmark.main, [], "(default: 128)"),
])
def test_help_shows_the_defaults(command, argv, default, capsys):
    with pytest.raises(SystemExit) as exit:
        command([*argv, "--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert default in text


def test_every_training_option_states_its_default_or_what_happens_without_it(capsys):
    with pytest.raises(SystemExit):
        main(TrainConfig(), ["--help"])
    described = capsys.readouterr().out.split("show this help message and exit", 1)[1]
    entries = re.split(r"\n  (?=--)", described)[1:]  # one per option, its help included
    assert len(entries) == 22  # --help aside
    for entry in entries:
        option, text = entry.split(maxsplit=1)
        text = " ".join(text.split())
        assert "default" in text or "None:" in text or option in ("--synthetic", "--compare"), (
            entry)


@pytest.mark.parametrize("argv", [["--synthetic-size", "0", "64"], ["--cpu-replicas", "-1"]])
def test_counts_below_one_are_refused_as_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        parse_args(TrainConfig(), argv)
    assert exit.value.code == 2 and "must be an integer >= 1" in capsys.readouterr().err


def test_fastres_train_chooses_the_dataset():
    config = parse_args(TrainConfig(), ["--dataset", "cifar100", "--synthetic"],
                        choose_dataset=True)
    assert config.dataset == "cifar100" and config.source == "synthetic"
    with pytest.raises(SystemExit):
        parse_args(TrainConfig(), ["--dataset", "cifar100"])  # the recipes fix their dataset


def test_benchmark_json_into_a_missing_folder_is_refused_before_the_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        benchmark.main(["--json", str(tmp_path / "missing" / "out.json"), "--depths", "8"])
    assert exit.value.code == 2
    assert f"the folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.main(["--rounds", "0"])
    assert "--rounds: must be an integer >= 1, got '0'" in capsys.readouterr().err
