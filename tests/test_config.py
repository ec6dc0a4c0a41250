"""TrainConfig is the one source of the training settings: the command line, the checks and the
experiment a resume may not change all follow from its fields (docs/cli.md, generated from the
parser, documents every option: tests/test_docs.py)."""

import dataclasses

import pytest

from keras_fastres.commands.train import build_parser, options, parse_args
from keras_fastres.training.config import TrainConfig, check_config, experiment_fields, setting
from keras_fastres.training.run import experiment


def option_strings(parser):
    return {name for action in parser._actions for name in action.option_strings
            if name.startswith("--") and name != "--help"}


def test_every_option_is_a_setting_and_every_setting_but_three_is_an_option():
    names = option_strings(build_parser(TrainConfig(), choose_dataset=True))
    settings = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(TrainConfig)}
    # momentum and weight decay are the paper's, set in a recipe's TrainConfig; verbose is
    # chosen from the terminal. --synthetic is --source's shorthand; --compare is no setting.
    assert names == settings - {"--momentum", "--weight-decay", "--verbose"} | {
        "--synthetic", "--compare"}
    assert "--dataset" not in option_strings(build_parser(TrainConfig()))  # the recipes' own


def test_no_options_give_the_recipes_own_settings():
    recipe = TrainConfig(dataset="cifar100", depth=56, epochs=10)
    assert parse_args(recipe, []) == recipe
    assert parse_args(TrainConfig(), [], choose_dataset=True) == TrainConfig()


def test_options_map_to_settings_and_words_to_values():
    config = parse_args(TrainConfig(), [
        "--dataset", "cifar100", "--depth", "20", "--variant", "preact", "--shortcut", "B",
        "--epochs", "3", "--batch-size", "64", "--learning-rate", "0.05",
        "--drop-path-rate", "0.1", "--extra-augmentation", "mixup", "cutmix",
        "--precision", "mixed_bfloat16", "--batch-norm", "keras", "--jit-compile", "off",
        "--strategy", "mirrored", "--cpu-replicas", "2", "--lr-scaling", "linear",
        "--steps-per-execution", "16", "--data-placement", "device",
        "--synthetic", "--synthetic-size", "10", "5", "--data-dir", "/data", "--seed", "7",
        "--output-dir", "out", "--export"], choose_dataset=True)
    assert config == TrainConfig(
        dataset="cifar100", depth=20, variant="preact", shortcut="B", epochs=3, batch_size=64,
        learning_rate=0.05, drop_path_rate=0.1, extra_augmentation=("mixup", "cutmix"),
        precision="mixed_bfloat16", batch_norm="keras", jit_compile=False,
        strategy="mirrored", cpu_replicas=2, lr_scaling="linear", steps_per_execution=16,
        data_placement="device", source="synthetic",
        synthetic_size=(10, 5), data_dir="/data", seed=7, output_dir="out", export=True)
    assert parse_args(TrainConfig(), ["--jit-compile", "on"]).jit_compile is True
    assert parse_args(TrainConfig(), ["--steps-per-execution", "auto"]).steps_per_execution is None
    assert parse_args(TrainConfig(), ["--source", "archive"]).source == "archive"


def test_the_experiment_is_the_settings_marked_so():
    assert experiment_fields(TrainConfig()) == (
        "dataset", "data", "image_size", "validation_fraction", "train_split", "test_split",
        "no_flip", "init_from", "resize", "depth", "variant", "shortcut", "epochs", "batch_size", "learning_rate",
        "momentum", "weight_decay", "drop_path_rate", "extra_augmentation", "precision",
        "lr_scaling", "source", "synthetic_size")
    stored = experiment(TrainConfig(source="synthetic"), seed=3)
    assert stored["seed"] == 3 and stored["synthetic_size"] == [1024, 256]
    assert "synthetic_size" not in experiment(TrainConfig(), seed=3)  # only for synthetic data


def test_a_new_setting_is_one_field():
    """What adding a setting takes: the field. Its option, its parsing, its check and its
    place in the experiment follow."""
    Extended = dataclasses.make_dataclass("Extended", [(
        "label_smoothing", float,
        setting(0.0, "label smoothing", experiment=True, choices=(0.0, 0.1, 0.2)))],
        bases=(TrainConfig,))
    assert "--label-smoothing" in option_strings(build_parser(Extended()))
    config = parse_args(Extended(), ["--label-smoothing", "0.1", "--synthetic"])
    assert config.label_smoothing == 0.1
    assert experiment(config, seed=0)["label_smoothing"] == 0.1
    with pytest.raises(ValueError, match=r"label_smoothing must be one of \(0.0, 0.1, 0.2\)"):
        check_config(Extended(label_smoothing=0.5))
    assert [f.name for f in options(Extended())][-1] == "label_smoothing"


@pytest.mark.parametrize("changes, message", [
    ({"variant": "fast"},
     r"variant must be one of \('preact', 'type1', 'type2', 'v1'\), got 'fast'"),
    ({"dataset": "mnist"}, r"dataset must be one of \('cifar10', 'cifar100'\)"),
    ({"extra_augmentation": ("mixup", "blur")}, r"extra_augmentation must be taken from"),
    ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
    ({"synthetic_size": (10, 0)}, r"synthetic_size must be a positive integer"),
    ({"jit_compile": "yes"}, r"jit_compile must be one of \(None, True, False\)"),
    ({"lr_scaling": "sqrt"}, r"lr_scaling must be one of \(None, 'linear'\)"),
    ({"learning_rate": 0}, r"learning_rate must be a positive number"),
    ({"drop_path_rate": 1.0}, r"drop_path_rate must be in \[0, 1\)"),
    ({"depth": 21}, r"6n \+ 2"),
    ({"weight_decay": -1}, r"weight_decay must be a number >= 0"),
    ({"cpu_replicas": 2}, r"cpu_replicas is for strategy 'mirrored' only"),
    ({"source": "archive"}, r"source 'archive' needs data_dir"),
    ({"steps_per_execution": 0}, r"steps_per_execution must be a positive integer, got 0"),
    ({"data_placement": "gpu"}, r"data_placement must be one of \('auto', 'host', 'device'\)"),
    ({"data_placement": "device", "extra_augmentation": ("mixup",)},
     r"data_placement 'device' crops and flips on the accelerator"),
])
def test_bad_settings_are_refused_naming_the_setting(changes, message):
    with pytest.raises(ValueError, match=message):
        check_config(dataclasses.replace(TrainConfig(), **changes))
    check_config(TrainConfig())  # the defaults pass
