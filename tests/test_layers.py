"""The floor plan, read from the code's own imports: which folder may import which, and what each may not need.

Bottom up (docs/architecture.md):
    core/       torch-free: numpy and OpenCV (PyYAML for settings files, Pillow for dataset images); what the
                line side may import from outside deploy/
    model/      the network, its losses and its config: torch (and pydantic for the config); imports core
    datasets/   the synthetic generator and the public sets' converters; imports core
    training/   train, predict, evaluate, report, export, gate, retrain: imports core, model, the deploy base
                (package, registry, runtime) and the store; only the demo also runs a line
    deploy/     the line side, never torch: the base (atomic < package < tensorrt, openvino, registry, runtime), then
                store < line, review; plc only under line; line and review never import each other
    cli/        the roof: wires everything, imported by nothing
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

DEPLOY_BASE = ["inspection.deploy.atomic", "inspection.deploy.package", "inspection.deploy.registry",
               "inspection.deploy.runtime", "inspection.deploy.tensorrt", "inspection.deploy.openvino"]
# Importer (longest prefix wins) → what of ours it may import. Anything not listed is refused, and a module that
# falls under no entry is an error (a new folder must be given its floor).
MAY_IMPORT = {
    "inspection": [],  # the package's __init__: imports nothing, so line-side imports stay light
    "inspection.core": ["inspection.core"],
    "inspection.model": ["inspection.core", "inspection.model"],
    "inspection.datasets": ["inspection.core", "inspection.datasets"],
    "inspection.deploy": [],  # the package's __init__
    "inspection.deploy.atomic": ["inspection.core"],
    "inspection.deploy.package": ["inspection.core", "inspection.deploy.atomic"],
    "inspection.deploy.tensorrt": ["inspection.core", "inspection.deploy.package"],
    "inspection.deploy.openvino": ["inspection.core", "inspection.deploy.package"],
    "inspection.deploy.registry": ["inspection.core", "inspection.deploy.atomic", "inspection.deploy.package"],
    "inspection.deploy.runtime": ["inspection.core", "inspection.deploy.package", "inspection.deploy.tensorrt",
                                  "inspection.deploy.openvino"],
    "inspection.deploy.store": ["inspection.core", *DEPLOY_BASE, "inspection.deploy.store"],
    "inspection.deploy.plc": ["inspection.core", "inspection.deploy.plc"],
    "inspection.deploy.line": ["inspection.core", *DEPLOY_BASE, "inspection.deploy.store", "inspection.deploy.plc",
                               "inspection.deploy.line"],
    "inspection.deploy.review": ["inspection.core", *DEPLOY_BASE, "inspection.deploy.store",
                                 "inspection.deploy.review"],
    "inspection.training": ["inspection.core", "inspection.model", *DEPLOY_BASE, "inspection.deploy.store",
                            "inspection.training"],
    "inspection.training.demo": ["inspection.core", "inspection.model", *DEPLOY_BASE, "inspection.deploy.store",
                                 "inspection.training", "inspection.datasets.synthetic",
                                 "inspection.deploy.line"],  # only the demo runs a line
    "inspection.cli": ["inspection"],
}
# What a floor may not import from outside the project, at any depth of its code (function-level imports too).
TRAINING_ONLY = {"torch", "torchvision", "pydantic", "sklearn", "scipy", "matplotlib", "tqdm"}
MAY_NOT_NEED = {
    "inspection.core": TRAINING_ONLY | {"onnxruntime", "fastapi", "psycopg", "asyncua", "pymodbus", "gi"},
    "inspection.deploy": TRAINING_ONLY,
}


def run_python(code: str, *args) -> None:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def _imports(path: Path) -> set[str]:
    """Names a module imports, at any depth of its code; for `from a import b` both a and a.b (b may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def _module(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _rule(importer: str, rules: dict) -> str:
    keys = [k for k in rules if importer == k or importer.startswith(k + ".")]
    if not keys or (max(keys, key=len) == "inspection" and importer != "inspection"):
        raise AssertionError(f"{importer} stands on no floor: give its folder an entry in MAY_IMPORT")
    return max(keys, key=len)


def layer_violations(root: Path) -> list[str]:
    """Every import the floor plan refuses, as 'importer -> imported'."""
    modules = {_module(p, root): p for p in sorted((root / "inspection").rglob("*.py"))}
    bad = []
    for importer, path in modules.items():
        allowed = MAY_IMPORT[_rule(importer, MAY_IMPORT)]
        refused = next((v for k, v in MAY_NOT_NEED.items() if importer == k or importer.startswith(k + ".")), set())
        for imported in sorted(_imports(path)):
            top = imported.split(".")[0]
            if top in refused:
                bad.append(f"{importer} -> {top}")
            if top != "inspection" or imported in ("inspection", importer):
                continue
            if imported not in modules and imported.rsplit(".", 1)[0] in modules:
                continue  # `from inspection.x import name`: the module inspection.x is checked
            if imported.startswith("inspection.cli") and not importer.startswith("inspection.cli"):
                bad.append(f"{importer} -> {imported} (nothing imports the CLI)")
            elif not any(imported == a or imported.startswith(a + ".") for a in allowed):
                bad.append(f"{importer} -> {imported}")
    return sorted(set(bad))


def test_layers_point_one_way():
    assert layer_violations(ROOT) == []


@pytest.mark.parametrize("module, line, expected", [
    ("deploy/review/accounts.py", "from inspection.deploy.line.runner import LineRunner",
     "inspection.deploy.review.accounts -> inspection.deploy.line.runner"),   # review and line are apart
    ("deploy/line/runner.py", "from inspection.model.abn import ABN",
     "inspection.deploy.line.runner -> inspection.model.abn"),                # the line side: core only
    ("deploy/line/runner.py", "from inspection.training.metrics import box_metrics",
     "inspection.deploy.line.runner -> inspection.training.metrics"),
    ("core/boxes.py", "from inspection.model.losses import map_probability",
     "inspection.core.boxes -> inspection.model.losses"),                     # the core imports nothing above it
    ("core/layout.py", "import tqdm", "inspection.core.layout -> tqdm"),
    ("deploy/store/stats.py", "import torch", "inspection.deploy.store.stats -> torch"),
    ("model/abn.py", "from inspection.training.train import train",
     "inspection.model.abn -> inspection.training.train"),
    ("datasets/synthetic.py", "from inspection.deploy.store.sql import SQLStore",
     "inspection.datasets.synthetic -> inspection.deploy.store.sql"),
])
def test_the_layer_rules_catch_a_wrong_import(tmp_path, module, line, expected):
    """A copy of the tree with one import that breaks a rule."""
    shutil.copytree(ROOT / "inspection", tmp_path / "inspection", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "inspection" / module
    path.write_text(path.read_text() + f"\n\ndef _wrong():\n    {line}\n")
    assert layer_violations(tmp_path) == [expected]


def test_a_module_on_no_floor_is_an_error(tmp_path):
    shutil.copytree(ROOT / "inspection", tmp_path / "inspection", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "inspection" / "helpers.py").write_text("import numpy\n")
    with pytest.raises(AssertionError, match="inspection.helpers stands on no floor"):
        layer_violations(tmp_path)


def test_every_module_imports_on_its_own():
    """No import circles: each module imports alone in a fresh interpreter."""
    names = [_module(p, ROOT) for p in sorted((ROOT / "inspection").rglob("*.py")) if p.name != "__main__.py"]
    code = ("import importlib, sys\nfor n in sys.argv[1:]:\n"
            "    for m in [k for k in sys.modules if k.startswith('inspection')]:\n"
            "        del sys.modules[m]\n"
            "    importlib.import_module(n)\nprint('ok')")
    run_python(code, *names)


def import_circles(root: Path) -> list[str]:
    """Circles among our modules, read from the code (function-level imports too), as 'a -> b -> a'."""
    modules = {_module(p, root): p for p in sorted((root / "inspection").rglob("*.py"))}
    edges = {}
    for m, p in modules.items():
        targets = {i if i in modules else i.rsplit(".", 1)[0] for i in _imports(p) if i.startswith("inspection.")}
        edges[m] = targets & set(modules) - {m, m.rsplit(".", 1)[0]}  # a module's own package __init__ is not a circle
    circles, state = [], {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                circles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    return circles


def test_no_import_circles(tmp_path):
    assert import_circles(ROOT) == []
    # the circle the store had: sql.py opened postgres.py, whose store is a subclass of sql.py's
    shutil.copytree(ROOT / "inspection", tmp_path / "inspection", ignore=shutil.ignore_patterns("__pycache__"))
    sql = tmp_path / "inspection/deploy/store/sql.py"
    opener = "\n\ndef _open():\n    from inspection.deploy.store.postgres import PostgresStore\n"
    sql.write_text(sql.read_text() + opener)
    assert import_circles(tmp_path) == ["inspection.deploy.store.sql -> inspection.deploy.store.postgres -> "
                                        "inspection.deploy.store.sql"]
