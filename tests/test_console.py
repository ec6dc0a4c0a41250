"""The commands: entry points, quiet start-up, every default in --help, one-line errors."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from keras_fastres.commands import benchmark, evaluate, export, predict
from keras_fastres.commands.train import main, parse_args
from keras_fastres.training.config import TrainConfig, option_name

# As a user's shell has it: TensorFlow's log level not set, so the commands choose it.
USER_ENV = {k: v for k, v in os.environ.items()
            if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_FASTRES_COMMAND")}


def test_installed_and_module_commands_start_quietly_and_fail_in_one_line(tmp_path):
    """No TensorFlow start-up lines, no runpy warning, no traceback: the error alone."""
    installed = Path(sys.executable).parent
    commands = [
        ([sys.executable, "-m", "keras_fastres.commands.export", "--model", str(tmp_path / "nothing"),
          "--export-dir", str(tmp_path / "out")], "No model at"),
        ([str(installed / "fastres-predict"), str(tmp_path), str(tmp_path)], "is a folder"),
        ([str(installed / "fastres-serve"), str(tmp_path)], f"No model in {tmp_path}"),
        ([str(installed / "fastres-evaluate"), str(tmp_path / "nothing"), str(tmp_path)],
         "no such model file or folder"),
    ]
    # Side by side: each start is mostly TensorFlow's import.
    started = [(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=USER_ENV), message)
               for command, message in commands]
    for process, message in started:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, stderr  # a wrong argument
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
        assert message in stderr


@pytest.mark.parametrize("command, argv, default", [
    (lambda argv: main(TrainConfig(), argv), [], "(default: 160)"),
    (export.main, [], "(default: saved_model)"),
    (predict.main, [], "(default: 3)"),
    (evaluate.main, [], "(default: 256)"),
    (benchmark.main, ["train"], "(default: 128)"),
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
    # One entry per setting the recipes take (TrainConfig's option fields), --synthetic and
    # --compare: none missing, none twice.
    settings = [option_name(f) for f in dataclasses.fields(TrainConfig)
                if f.metadata["option"] and not f.metadata["only_fastres_train"]]
    assert sorted(entry.split(maxsplit=1)[0] for entry in entries) == sorted(
        [*settings, "--synthetic", "--compare"])
    for entry in entries:
        option, text = entry.split(maxsplit=1)
        text = " ".join(text.split())
        assert "default" in text or "None:" in text or option in ("--synthetic", "--compare"), (
            entry)


@pytest.mark.parametrize("argv, message", [
    (["--synthetic-size", "0", "64"], "synthetic_size must be a positive integer, got (0, 64)"),
    (["--cpu-replicas", "-1", "--strategy", "mirrored"],
     "cpu_replicas must be a positive integer, got -1"),
    (["--batch-size", "0"], "batch_size must be a positive integer, got 0"),
    (["--seed", "-1"], "seed must be an integer from 0 to 4294967295, got -1"),
    (["--seed", str(2 ** 32)], "seed must be an integer from 0 to 4294967295, got 4294967296"),
])
def test_counts_and_seeds_out_of_range_are_refused_in_one_line_before_any_work(
        argv, message, tmp_path, capsys):
    assert main(TrainConfig(), ["--synthetic", "--output-dir", str(tmp_path / "run"),
                                *argv]) == 2
    assert capsys.readouterr().err == f"error: {message}.\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("gib", ["inf", "1e308", "0", "nan"])
def test_a_memory_budget_that_is_no_finite_positive_size_is_refused(gib, tmp_path, capsys):
    from keras_fastres.commands.train import command
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "b").mkdir()
    assert command(["--data", str(tmp_path / "data"), "--max-memory", gib, "--output-dir",
                    str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (f"error: max_memory must be a positive, finite number "
                                       f"of GiB, got {float(gib)!r}.\n")
    assert not (tmp_path / "run").exists()


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


def test_positive_integer_takes_integers_from_one():
    import argparse

    from keras_fastres.utils.console import check_positive_integers, positive_integer
    assert positive_integer("1") == 1 and positive_integer("42") == 42
    for text in ("0", "-3", "2.5", "ten", ""):
        with pytest.raises(argparse.ArgumentTypeError,
                           match=f"must be an integer >= 1, got '{text}'"):
            positive_integer(text)
    check_positive_integers(rounds=1, steps=3)
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=rf"steps must be a positive integer, got {bad!r}"):
            check_positive_integers(rounds=1, steps=bad)


def test_writable_file_wants_an_existing_writable_folder(tmp_path):
    import argparse

    from keras_fastres.utils.console import writable_file
    assert writable_file(str(tmp_path / "out.json")) == str(tmp_path / "out.json")
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder; give a file name"):
        writable_file(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match=f"the folder {tmp_path / 'no'} does not"):
        writable_file(str(tmp_path / "no" / "out.json"))


def test_program_and_command_detection_follow_argv(monkeypatch):
    from keras_fastres.utils import console
    monkeypatch.delenv(console.COMMAND_VARIABLE, raising=False)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/fastres-export", "--help"])
    assert console.program("keras_fastres.commands.export") == "fastres-export"
    assert console.started_as_command()
    monkeypatch.setattr(sys, "argv", ["/path/to/pytest"])
    assert console.program("keras_fastres.commands.export") == (
        "python -m keras_fastres.commands.export")
    assert not console.started_as_command()
    monkeypatch.setattr(sys, "argv", ["-m"])  # runpy, while it imports the package
    assert console.started_as_command()
    monkeypatch.setattr(sys, "argv", ["recipes/cifar10.py"])
    monkeypatch.setenv(console.COMMAND_VARIABLE, "1")
    assert console.started_as_command()


def test_help_formatter_states_defaults_except_none_and_off():
    import argparse

    from keras_fastres.utils.console import HelpFormatter
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--rounds", default=10, help="how many")
    parser.add_argument("--json", default=None, help="also write JSON")
    parser.add_argument("--export", action="store_true", help="export at the end")
    text = " ".join(parser.format_help().split())
    assert "how many (default: 10)" in text
    assert "also write JSON" in text and "(default: None)" not in text
    assert "export at the end" in text and "(default: False)" not in text


def test_the_quiet_start_only_quiets_commands(monkeypatch):
    from keras_fastres.utils import console
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setattr(sys, "argv", ["/path/to/pytest"])
    monkeypatch.delenv(console.COMMAND_VARIABLE, raising=False)
    with console.quiet_tensorflow_start():  # a library import: nothing changes
        assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    monkeypatch.setattr(sys, "argv", ["/usr/bin/fastres-train"])
    monkeypatch.setitem(sys.modules, "tensorflow", sys.modules.get("tensorflow"))
    with console.quiet_tensorflow_start():  # TensorFlow already imported: nothing to hide
        assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ


def test_the_quiet_start_hides_what_is_written_to_descriptor_2_while_tensorflow_loads(
        monkeypatch, capfd):
    """In a command, before TensorFlow is imported (here: as if it were not), the C++ runtime's
    start-up lines written straight to file descriptor 2 are dropped; Python's own stderr
    still reaches the terminal, and descriptor 2 is whole again afterwards."""
    from keras_fastres.utils import console
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/fastres-train"])
    monkeypatch.delitem(sys.modules, "tensorflow")
    python_stderr = sys.stderr
    with console.quiet_tensorflow_start():
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
        os.write(2, b"cuInit failed: a C++ start-up line\n")
        print("a Python warning", file=sys.stderr, flush=True)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    assert sys.stderr is python_stderr
    os.write(2, b"after\n")
    error = capfd.readouterr().err
    assert "a C++ start-up line" not in error
    assert "a Python warning" in error and error.endswith("after\n")


def test_a_keras_backend_that_is_none_is_one_line_before_keras_loads(monkeypatch, capsys):
    from keras_fastres.utils import console
    monkeypatch.setenv("KERAS_BACKEND", "nonsense")
    with pytest.raises(SystemExit) as stopped:
        console.require_backend_installed()
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "error: KERAS_BACKEND='nonsense' names no Keras backend this package runs on; use "
        "tensorflow (the default), jax or torch.\n")
