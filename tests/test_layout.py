"""The package's layering: no import cycle (imports inside functions included), and the command
lines import the library, never the reverse."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "keras_fastres"


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports():
    """{module: the package's modules it imports anywhere in its code}."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module if node.level == 0 else None
                assert base, f"{path}: relative import"
                # `from package import module` imports the module; `from module import name`
                # the module itself.
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                            for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None
    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def longest_chain(graph):
    memo = {}

    def depth(node):
        if node not in memo:
            memo[node] = 1 + max((depth(t) for t in graph[node]), default=0)
        return memo[node]
    return max(depth(node) for node in graph)


def test_the_package_has_no_import_cycle():
    graph = package_imports()
    assert len(graph) > 20 and "keras_fastres.training.run" in graph["keras_fastres.commands.train"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert longest_chain({"a": {"b"}, "b": {"c"}, "c": set()}) == 3


def test_only_the_commands_import_the_commands():
    for module, targets in package_imports().items():
        if not module.startswith("keras_fastres.commands"):
            assert not [t for t in targets if t.startswith("keras_fastres.commands")], module


def test_only_the_commands_parse_arguments():
    for module, path in ((module_name(p), p) for p in PACKAGE.rglob("*.py")):
        imports = {alias.name for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Import) for alias in node.names}
        if not module.startswith("keras_fastres.commands") and module != "keras_fastres.utils.console":
            assert "argparse" not in imports, module


def test_only_the_commands_print_or_switch_global_state():
    """The library returns, logs and warns: no print(), no matplotlib.use(), no logger's level
    or file descriptor changed outside commands/ and utils/console.py (the commands' helpers,
    run only in a command)."""
    for module, path in ((module_name(p), p) for p in PACKAGE.rglob("*.py")):
        if module.startswith("keras_fastres.commands") or module == "keras_fastres.utils.console":
            continue
        calls = [node.func for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call)]
        printed = [f"line {c.lineno}" for c in calls if isinstance(c, ast.Name) and c.id == "print"]
        switched = [f"line {c.lineno}" for c in calls if isinstance(c, ast.Attribute)
                    and c.attr == "use" and getattr(c.value, "id", None) == "matplotlib"]
        # A logger's level or a file descriptor changed (compact.py's and catalog.py's were).
        quieted = [f"line {c.lineno}: {c.attr}" for c in calls if isinstance(c, ast.Attribute)
                   and c.attr in ("setLevel", "set_verbosity", "dup2")]
        assert not printed and not switched and not quieted, (module, printed, switched, quieted)


# The model zoo: the package's top-level modules. Everything else is a sub-package named for its
# job; the model zoo may use the shared helpers (utils), the exceptions and the decoder's
# resize modes, never the application around it.
MODEL_ZOO = {"keras_fastres", "keras_fastres.models", "keras_fastres.blocks",
             "keras_fastres.batch_norm", "keras_fastres.callbacks", "keras_fastres.errors",
             "keras_fastres.preparation"}
SUB_PACKAGES = {"data", "training", "serving", "evaluation", "benchmarks", "commands", "utils"}


def module_level(tree):
    """The statements of a module that run when it is imported (not those inside functions)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def test_the_top_level_holds_the_model_zoo_and_the_sub_packages():
    top = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert {f"keras_fastres.{name}" for name in top} == MODEL_ZOO - {"keras_fastres"}
    assert {path.parent.name for path in PACKAGE.glob("*/__init__.py")} == SUB_PACKAGES
    allowed = MODEL_ZOO | {"keras_fastres.data.decoding", "keras_fastres.serving.folding"}
    for module, targets in package_imports().items():
        if module not in MODEL_ZOO:
            continue
        # Imported at the top of the module, not inside a function (the lazy exports).
        tree = ast.parse((PACKAGE.parent / (module.replace(".", "/") + (
            "/__init__.py" if module == "keras_fastres" else ".py"))).read_text())
        eager = {alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
                 for node in module_level(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in node.names}
        eager = {t for t in targets if t in eager or any(e.startswith(t + ".") for e in eager)}
        outside = {t for t in eager if t not in allowed and not t.startswith("keras_fastres.utils")
                   and t not in {"keras_fastres.data", "keras_fastres.serving"}}
        assert not outside, (module, outside)


def test_the_models_on_jax_import_no_tensorflow():
    """What an import loads is a property of a fresh process: under KERAS_BACKEND=jax,
    importing the package and building a model must not import TensorFlow."""
    import importlib.util
    import os
    import subprocess
    import sys

    import pytest
    if importlib.util.find_spec("jax") is None and not os.environ.get("CI"):
        pytest.skip("jax is not installed (pip install -e '.[jax]'); CI installs it")
    result = subprocess.run(
        [sys.executable, "-c", "import sys, keras_fastres; keras_fastres.FastResNet(8); "
                               "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                               "('tensorflow', 'tensorflow_datasets')))"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def argument_checks():
    """{argument name: the functions whose ValueError says "<name> must ..."}, over the package."""
    import re
    checks = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                        and getattr(node.exc.func, "id", None) == "ValueError" and node.exc.args):
                    continue
                message = node.exc.args[0]
                first = (message.values[0] if isinstance(message, ast.JoinedStr) and message.values
                         else message)
                text = first.value if isinstance(first, ast.Constant) else ""
                if isinstance(text, str) and (match := re.match(r"(\w+) must\b", text)):
                    checks.setdefault(match[1], set()).add(f"{module_name(path)}.{function.name}")
    return checks


def test_each_argument_is_checked_in_one_place():
    """A setting the model zoo, the blocks and the training config all take (drop_path_rate,
    shortcut, resize, ...) is checked by one function that the others call, so that its rule
    and its message cannot drift apart."""
    checks = argument_checks()
    assert {"drop_path_rate", "shortcut", "resize", "variant", "depth"} <= set(checks)
    # Two different rules: load_cifar takes the two CIFARs, a training run any TFDS set too.
    assert checks.pop("dataset") == {"keras_fastres.data.cifar.check_dataset",
                                     "keras_fastres.data.check_dataset_name"}
    repeated = {name: sorted(where) for name, where in checks.items() if len(where) > 1}
    assert not repeated, repeated


def test_the_file_names_of_the_exports_are_spelled_once():
    literals = ("model.onnx", "model.tflite", "saved_model.pb", "model.keras")
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in literals:
                assert path.name in ("export.py", "models.py"), (path, node.lineno, node.value)


def test_the_decoding_workers_module_imports_neither_keras_nor_tensorflow():
    """It runs as the decoding worker process (`python -I decoding.py`), started in a fraction
    of a second, and the model zoo's image preparation decodes with it."""
    path = PACKAGE / "data" / "decoding.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported and not imported & {"keras", "tensorflow", "keras_fastres", "jax", "torch"}
    assert "keras_fastres.data.decoding" in package_imports()["keras_fastres.preparation"]
