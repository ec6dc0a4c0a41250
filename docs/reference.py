"""Writes the two generated pages of the documentation, so that they cannot drift from the code:

    docs/cli.md   every command's --help, from the commands' own parsers
    docs/api.md   the API reference: each name of `keras_fastres.__all__`, rendered from its
                  docstring by mkdocstrings (`::: module.name`), after the hand-written guide
                  in docs/api-guide.md

    python docs/reference.py           writes them
    python docs/reference.py --check   exit 1 when either differs from what it would write

tests/test_docs.py runs the check.
"""

import argparse
import contextlib
import importlib
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
COMMANDS = ("train", "evaluate", "export", "predict", "serve", "benchmark")
WIDTH = "100"  # columns of the --help text, whatever the terminal


@contextlib.contextmanager
def as_installed(command):
    """argv[0] and the width a command's parser is built with: its installed name."""
    argv, columns = sys.argv, os.environ.get("COLUMNS")
    sys.argv, os.environ["COLUMNS"] = [f"fastres-{command}"], WIDTH
    try:
        yield
    finally:
        sys.argv = argv
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def parsers():
    """{command: its argparse parser} (fastres-train's with --dataset, as installed)."""
    found = {}
    for command in COMMANDS:
        module = importlib.import_module(f"keras_fastres.commands.{command}")
        with as_installed(command):
            if command == "train":
                from keras_fastres.training.config import TrainConfig
                found[command] = module.build_parser(TrainConfig(), choose_dataset=True)
            else:
                found[command] = module.build_parser()
    return found


def subparsers(parser):
    """{name: parser} of a parser's subcommands (fastres-benchmark's)."""
    return {name: sub for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def cli_page():
    lines = ["# The CLI reference", "",
             "Every command's `--help`, generated from the commands' own parsers by "
             "`docs/reference.py` (a test keeps this page equal to them). Exit statuses: 0 "
             "done, 1 the work failed or was refused, 2 a wrong argument or setting, 130 "
             "Ctrl-C, 143 SIGTERM.", ""]
    for command, parser in parsers().items():
        with as_installed(command):
            lines += [f"## fastres-{command}", "", "```text", parser.format_help().rstrip(),
                      "```", ""]
            for name, sub in subparsers(parser).items():
                lines += [f"### fastres-{command} {name}", "", "```text",
                          sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def api_page():
    import keras_fastres
    lines = [(DOCS / "api-guide.md").read_text().rstrip(), "", "## Reference", "",
             "Each public name of `keras_fastres`, from its docstring.", ""]
    for name in keras_fastres.__all__:
        value = getattr(keras_fastres, name)
        module = getattr(value, "__module__", None) if callable(value) else None
        lines += [f"### `{name}`", "", f"::: {module or 'keras_fastres'}.{name}",
                  "    options:", "      show_root_heading: false", ""]
    return "\n".join(lines)


def main(argv):
    pages = {"cli.md": cli_page(), "api.md": api_page()}
    stale = [name for name, text in pages.items()
             if not (DOCS / name).exists() or (DOCS / name).read_text() != text + "\n"]
    if "--check" in argv:
        for name in stale:
            print(f"docs/{name} differs from the code: run python docs/reference.py",
                  file=sys.stderr)
        return 1 if stale else 0
    for name, text in pages.items():
        (DOCS / name).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
