"""The line-side helpers must import and work without torch (the line PC has no PyTorch)."""
import re
import subprocess
import sys

import pytest


def _python(code: str, *args) -> str:
    """Run code in a fresh interpreter (its import blocker in place); it must print "ok" last."""
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "ok"
    return r.stdout


CODE = """
import sys

class BlockTorch:  # any 'import torch' raises, and torch never enters sys.modules
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is not available on the line side")

sys.meta_path.insert(0, BlockTorch())
import numpy as np
import inspection, inspection.boxes, inspection.preprocess, inspection.imageio, inspection.overlay, inspection.metrics
from inspection.boxes import attention_to_boxes
from inspection.preprocess import prepare, to_input
frame = np.zeros((120, 160, 3), np.float32)
x = to_input([prepare(frame, (64, 64))], (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
att = np.zeros((8, 8), np.float32); att[2:4, 2:4] = 1
assert x.shape == (1, 3, 64, 64) and len(attention_to_boxes(att, (120, 160))) == 1
assert "torch" not in sys.modules
print("ok")
"""


def test_line_side_helpers_import_without_torch():
    assert _python(CODE).strip() == "ok"


LINE_SIDE = """
import sys

BLOCKED = ("torch", "torchvision", "PIL", "sklearn", "scipy", "matplotlib", "pydantic", "yaml", "tqdm", "training")

class Block:  # the line PC has onnxruntime, numpy and OpenCV only
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed on the line side")

sys.meta_path.insert(0, Block())
import numpy as np
from deploy.runtime import Runtime, read_frame
from inspection.cli import main

package, image = sys.argv[1], sys.argv[2]
rt = Runtime(package, backend="cpu")
result = rt.inspect([read_frame(image)], color="BGR")[0]
assert result.verdict in ("pass", "review", "fail"), result
assert 0 <= rt.rescore(read_frame(image), result.attention, color="BGR")["defect_score"] <= 1
assert main(["predict", "--package", package, image]) == 0
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
assert not loaded, loaded
print("ok")
"""


def test_runtime_and_predict_run_with_only_onnxruntime_numpy_opencv(exported):
    image = f"{exported['manifest'].root}/{exported['manifest'].split('test')[0].path}"
    _python(LINE_SIDE, exported["package"], image)


RUNNER = """
import sys

BLOCKED = ("torch", "torchvision", "PIL", "sklearn", "scipy", "matplotlib", "pydantic", "tqdm", "training")

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed on the line side")

sys.meta_path.insert(0, Block())
from inspection.cli import main

package, data, log = sys.argv[1:4]
code = main(["run", "--package", package, "--set", f"source.path={data}", "--set", "source.limit=12",
             "--set", f"log.folder={log}", "--set", "jsonl=", "--set", "reload_s=0"])
assert code == 0, code
assert main(["failures", "--log", log]) == 0
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
assert not loaded, loaded
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
print("ok")
"""


@pytest.fixture(scope="module")
def torch_free_log(exported, tmp_path_factory):
    """A failure log written by the runner with torch & co. blocked (shared by the runner and review tests)."""
    log = tmp_path_factory.mktemp("torch-free") / "log"
    out = _python(RUNNER, exported["package"], exported["manifest"].root, log)
    return log, out.splitlines()[-2].split()


def test_line_runner_runs_without_torch(torch_free_log):
    assert (torch_free_log[0] / "review_log.md").exists()


def _declared(*extras) -> set[str]:
    """Distributions pyproject.toml installs for the core plus `extras` (lower case, no version)."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for e in extras for d in project["optional-dependencies"][e]]
    return {re.split(r"[<>=\[ ]", d)[0].lower().replace("_", "-") for d in specs}


def test_the_line_extra_declares_every_package_the_runner_imports(torch_free_log):
    """`pip install inspection[line]` (the slim runner image) is enough for `inspection run`."""
    _assert_declared(torch_free_log[1], "line")


REVIEW = RUNNER.replace('"pydantic", ', "").split("from inspection.cli import main")[0] + """
from pathlib import Path
from fastapi.testclient import TestClient
from deploy.review.app import ReviewConfig, create_app

package, log = sys.argv[1:3]
app = create_app(ReviewConfig(Path(log), Path(package)))
app.state.review.accounts.add_user("lead", "lead-password", "lead")
client = TestClient(app)
assert client.post("/login", data={"user": "lead", "password": "lead-password"}).status_code == 200
assert client.get("/").status_code == client.get("/stats").status_code == 200
assert client.get("/api/stats").json()["days"][0]["inspected"] == 12
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
assert not loaded, loaded
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
print("ok")
"""


def test_review_station_runs_without_torch(exported, torch_free_log):
    """The review server needs FastAPI (hence pydantic) but no torch, PIL, SciPy or training code."""
    out = _python(REVIEW, exported["package"], torch_free_log[0])
    # httpx and what it imports come with the TestClient the test drives the app with, not with the app
    _assert_declared(out.splitlines()[-2].split(), "review", ignore={"httpx", "httpx2", "anyio", "sniffio", "pygments"})


def _assert_declared(modules: list[str], *extras, ignore=()) -> None:
    from importlib.metadata import PackageNotFoundError, packages_distributions
    from importlib.metadata import requires as requires_installed

    def requires(dist):  # a dependency for another Python or platform is not installed here
        try:
            return requires_installed(dist)
        except PackageNotFoundError:
            return []

    owners = packages_distributions()
    modules = set(modules) - {"_distutils_hack"}  # setuptools' .pth hook in every venv, not an import of ours
    used = {d.lower().replace("_", "-") for m in modules for d in owners.get(m, [])} - {"inspection", *ignore}
    declared = _declared(*extras)
    # what the declared distributions pull in themselves is installed with them
    pulled, todo = set(), list(declared)
    while todo:
        for r in requires(todo.pop()) or []:
            name = re.split(r"[<>=!~;\[ (]", r)[0].lower().replace("_", "-")
            if "extra ==" not in r and name not in pulled | declared:
                pulled.add(name)
                todo.append(name)
    assert used and used <= declared | pulled, used - declared - pulled
    assert not {"torch", "pillow", "scipy", "scikit-learn", "matplotlib"} & (declared | pulled)


TRAIN_WITHOUT_TORCH = RUNNER.split("from inspection.cli import main")[0].replace(  # as Python says it
    'raise ImportError(f"{name} is not installed on the line side")',
    'raise ModuleNotFoundError(f"No module named {name!r}", name=name)') + """
import contextlib, io
from inspection.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = main(["train", "--data", sys.argv[1], "--quiet"])
assert code == 2 and "pip install 'inspection[train]'" in err.getvalue(), (code, err.getvalue())
print("ok")
"""


def test_training_on_a_line_side_install_says_which_extra_to_install(tiny_dataset):
    _python(TRAIN_WITHOUT_TORCH, tiny_dataset)


def _imports(path) -> set[str]:
    """Top-level package names a module imports, at any depth of its code (function-level imports too)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_layers_point_one_way():
    """inspection/ (the CLI aside) imports neither training/ nor deploy/; deploy/ never imports training/; the
    torch-free modules (the whole line side and the review station, evaluation and layout) import no torch."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    core = [p for p in (root / "inspection").glob("*.py") if p.name != "cli.py"]
    for p in core:
        assert not _imports(p) & {"training", "deploy"}, f"{p.name} imports a higher layer"
    deploy = list((root / "deploy").rglob("*.py"))
    for p in deploy:
        assert "training" not in _imports(p), f"deploy/{p.relative_to(root / 'deploy')} imports training/"
    torch_free = [p for p in deploy if p.name != "export.py"] + [
        root / "inspection" / f"{m}.py" for m in ("boxes", "decision", "evaluation", "imageio", "layout", "metrics",
                                                  "overlay", "preprocess")]
    for p in torch_free:
        assert not _imports(p) & {"torch", "torchvision"}, f"{p.relative_to(root)} imports torch"
