"""The package's shape: the top level, the Keras boundary, no import cycles, explicit exports.

Imports are read from the source (every ``import`` statement, lazy ones inside
functions included), so these tests see what a reader of the code sees.
"""

from __future__ import annotations

import ast
import graphlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rsna"
OWNER_TOP_LEVEL = {"pyproject.toml", "README.md", "rsna", "notebooks", "tests", "scripts"}
#: The modules at the bottom: everything may import them, they import only each other.
CORE = {"rsna", "rsna.errors", "rsna.files", "rsna.parallel"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TRAINING = {m for m in MODULES if m == "rsna.training" or m.startswith("rsna.training.")}
DATA = {m for m in MODULES if m == "rsna.data" or m.startswith("rsna.data.")}
#: Every module outside rsna/training may not load TensorFlow or Keras.
KERAS_FREE = sorted(set(MODULES) - TRAINING)


def imported_modules(path: Path) -> set[str]:
    """The rsna modules `path` imports anywhere in its body (a package stands for its
    ``__init__``; ``from package import module`` counts as the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "rsna"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "rsna":
                continue
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


def test_top_level_is_the_owners_and_nothing_is_a_symlink():
    tracked = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    rows = [line.split(maxsplit=3) for line in tracked.stdout.splitlines()]
    top = {path.split("/")[0] for *_, path in rows}
    assert {name for name in top if not name.startswith(".")} == OWNER_TOP_LEVEL
    links = [path for mode, *_, path in rows if mode == "120000"]
    assert links == [], f"symlinks: {links}"
    assert not (ROOT / "src").exists()


def test_keras_free_modules_load_no_tensorflow_in_a_fresh_interpreter():
    """Import them one by one and name the first after which TF or Keras is loaded."""
    code = (
        "import importlib, sys\n"
        f"for name in {KERAS_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "    bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "    if bad:\n"
        "        print(name, 'loads', bad); sys.exit(1)\n"
        "print('ok', len(sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert {"rsna.metrics", "rsna.evaluate", "rsna.submission", "rsna.cli"} <= set(KERAS_FREE)
    assert {"rsna.data.dicom", "rsna.data.cache", "rsna.data.series"} <= set(KERAS_FREE)


def test_no_import_cycles_lazy_imports_included():
    graph = {name: imported_modules(path) - {name} for name, path in MODULES.items()}
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
    assert set(order) >= set(MODULES)


def test_each_folder_imports_only_what_it_may():
    for name, path in MODULES.items():
        imports = imported_modules(path)
        if name in CORE:
            allowed = CORE
        elif name in DATA:
            allowed = CORE | DATA
        elif name in TRAINING:
            allowed = set(MODULES) - {"rsna.cli", "rsna.demo"}
        elif name in ("rsna.cli", "rsna.demo"):
            allowed = set(MODULES)
        else:  # keras-free top level: config, metrics, evaluate, submission, plots, ...
            allowed = set(MODULES) - TRAINING - {"rsna.cli", "rsna.demo"}
        assert imports <= allowed, f"{name} imports {sorted(imports - allowed)}"


def test_the_checks_above_can_fail(tmp_path):
    cyclic = tmp_path / "m.py"
    cyclic.write_text(
        "def f():\n    from rsna.data.dicom import read_hu\n    import rsna.training.fold\n"
    )
    assert imported_modules(cyclic) == {"rsna.data.dicom", "rsna.training.fold"}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())


def top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                elements = target.elts if isinstance(target, ast.Tuple) else [target]
                names |= {e.id for e in elements if isinstance(e, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_declares_what_it_exports(name):
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    declared = [
        node
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        and any(
            getattr(t, "id", "") == "__all__"
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
    ]
    assert declared, f"{name} has no __all__"
    exported = ast.literal_eval(declared[0].value)
    defined = top_level_names(tree)
    assert not [e for e in exported if e not in defined and name != "rsna"], (
        f"{name} exports names it does not define: {[e for e in exported if e not in defined]}"
    )


def private_imports(path: Path) -> list[str]:
    """``from rsna... import _x`` and ``module._x`` on an imported rsna module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rsna"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    bad.append(f"from {node.module} import {alias.name}")
                if f"{node.module}.{alias.name}" in MODULES:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules |= {a.asname for a in node.names if a.name.startswith("rsna") and a.asname}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            bad.append(f"{node.value.id}.{node.attr}")
    return bad


def test_no_module_or_test_uses_another_modules_private_names():
    sources = [
        *MODULES.values(),
        *sorted((ROOT / "tests").rglob("*.py")),
        *sorted((ROOT / "scripts").glob("*.py")),
    ]
    found = {str(p.relative_to(ROOT)): private_imports(p) for p in sources}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_package_root_exports_lazily():
    code = (
        "import sys, rsna\n"
        "assert 'tensorflow' not in sys.modules and 'pandas' not in sys.modules\n"
        "from rsna import LABELS, load_config, preprocess, read_hu, weighted_log_loss\n"
        "assert 'tensorflow' not in sys.modules and LABELS[-1] == 'any'\n"
        "from rsna import DataGenerator\n"
        "from rsna.training.generator import DataGenerator as direct\n"
        "assert DataGenerator is direct and 'keras' in sys.modules\n"
        "try:\n"
        "    rsna.nope\n"
        "except AttributeError as exc:\n"
        "    assert 'nope' in str(exc)\n"
        "else:\n"
        "    raise SystemExit('rsna.nope did not fail')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_every_exported_name_resolves():
    import rsna

    for name in rsna.__all__:
        assert getattr(rsna, name) is not None, name
