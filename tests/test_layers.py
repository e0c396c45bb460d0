"""The package's layers (issue #14): no import cycle, and model families reached only through the interface.

Imports are read from the source (ast), function-level ones included, so an import hidden inside a function
still counts. A package's own `__init__` running before its submodules is Python's import order, not a
dependency, so `lit_inheritune.models.common` does not "import" `lit_inheritune.models`.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lit_inheritune"
NAME = "lit_inheritune"
MODELS = f"{NAME}.models"
HF_FAMILY = f"{NAME}.models.hf"


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package is its __init__)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = (NAME, *path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules `module` imports anywhere in its file (top level or inside functions)."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a import b` imports the module a.b when there is one, else names from a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    names = module_names(package)
    return {module: imports_of(module, path, set(names)) for module, path in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def outside_models(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: deps for m, deps in graph.items() if m != MODELS and not m.startswith(MODELS + ".")}


def hf_importers(graph: dict[str, set[str]]) -> list[str]:
    """Modules outside the models package that import the Hugging Face family."""
    return sorted(m for m, deps in outside_models(graph).items() if HF_FAMILY in deps)


def is_hf_names(package: Path = PACKAGE) -> list[str]:
    """`is_hf` / `_is_hf` (a model-family branch by name) anywhere outside the models package."""
    found = []
    for module, path in module_names(package).items():
        if module == MODELS or module.startswith(MODELS + "."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [node.name]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [n for alias in node.names for n in (alias.name.rpartition(".")[2], alias.asname) if n]
            found += [f"{module}: {name}" for name in names if name.lstrip("_") == "is_hf"]
    return found


def test_the_graph_sees_top_level_and_function_level_imports():
    graph = import_graph()
    assert "lit_inheritune.errors" in graph["lit_inheritune.checks"]  # top level
    assert "lit_inheritune.data.prepare" in graph["lit_inheritune.checks"]  # inside check_data
    assert "lit_inheritune.config" in graph["lit_inheritune.__main__"]  # `from lit_inheritune import config`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_only_the_models_package_imports_a_model_family_and_no_is_hf_branch_is_left():
    graph = import_graph()
    assert hf_importers(graph) == []
    assert is_hf_names() == []
    # the interface imports neither family: they are loaded by name (models/__init__.py, FAMILIES)
    assert not graph[MODELS] & {HF_FAMILY, f"{MODELS}.gpt"}
    assert graph[f"{MODELS}.common"] <= {"lit_inheritune.errors"}
    # the tokenizer keeps a registry of spec kinds that the families fill; it reaches into no model module
    assert not {m for m in graph[f"{NAME}.tokenizer"] if m == MODELS or m.startswith(MODELS + ".")}


@pytest.mark.subprocess
def test_the_interface_and_the_checks_load_no_torch():
    """The config checks run before torch is imported (the start-up bar of issue #12), model families and all."""
    code = ("import sys, lit_inheritune.checks, lit_inheritune.models, lit_inheritune.tokenizer; "
            "from lit_inheritune.config import compose; from lit_inheritune.models import family_of; "
            "assert family_of(compose(['model=hf']).model).pretrained; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'transformers', 'lightning')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
