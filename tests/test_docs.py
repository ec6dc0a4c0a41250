"""The documentation tells the truth about the code: the generated pages (the CLI reference
from the commands' parsers, the API reference from `keras_fastres.__all__`) are current, every
option and every public name is in them, and the examples marked runnable run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))
import reference  # noqa: E402 (docs/reference.py)

RUNNABLE = re.compile(r"<!-- runnable -->\n```python\n(.*?)```", re.DOTALL)


def run_examples(markdown, folder):
    """Runs each Python block of `markdown` marked `<!-- runnable -->`, in order, in one
    namespace, in `folder`; returns how many ran. An example that fails raises, naming it."""
    blocks = RUNNABLE.findall(markdown)
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for index, code in enumerate(blocks):
            try:
                exec(compile(code, f"<example {index + 1}>", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"example {index + 1} failed: {error!r}\n{code}") from error
    finally:
        os.chdir(cwd)
    return len(blocks)


def test_the_generated_pages_are_the_codes():
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "reference.py"), "--check"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_cli_reference_lists_every_option_of_every_command():
    page = (ROOT / "docs" / "cli.md").read_text()
    for command, parser in reference.parsers().items():
        assert f"## fastres-{command}" in page
        for each in [parser, *reference.subparsers(parser).values()]:
            for action in each._actions:
                for option in action.option_strings:
                    assert option in page, (command, option)


def test_the_api_reference_renders_every_public_name():
    import keras_fastres
    page = (ROOT / "docs" / "api.md").read_text()
    for name in keras_fastres.__all__:
        assert f"### `{name}`" in page and re.search(rf"^::: [\w.]+\.{name}$", page, re.M), name


@pytest.mark.parametrize("page", ["README.md", "docs/api-guide.md", "docs/serving.md"])
def test_the_runnable_examples_run(page, tmp_path):
    assert run_examples((ROOT / page).read_text(), tmp_path) >= 1


def test_a_broken_example_fails_the_runner(tmp_path):
    broken = ("<!-- runnable -->\n```python\nfrom keras_fastres import FastResNet\n"
              "FastResNet(depth=21)\n```\n")
    with pytest.raises(AssertionError, match="example 1 failed: ValueError"):
        run_examples(broken, tmp_path)
