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
import inspection
import inspection.core.boxes, inspection.core.preprocess, inspection.core.imageio, inspection.core.overlay
import inspection.core.novelty, inspection.core.layout, inspection.core.mapfile, inspection.core.settings
import inspection.training.metrics  # torch-free too (scikit-learn), though only training uses it
from inspection.core.boxes import attention_to_boxes
from inspection.core.preprocess import prepare, to_input
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

BLOCKED = ("torch", "torchvision", "PIL", "sklearn", "scipy", "matplotlib", "pydantic", "yaml", "tqdm",
           "inspection.training")

def blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)

class Block:  # the line PC has onnxruntime (and OpenVINO), numpy and OpenCV only
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ImportError(f"{name} is not installed on the line side")

sys.meta_path.insert(0, Block())
import numpy as np
from inspection.deploy.runtime import Runtime, read_frame
from inspection.cli import main

package, image = sys.argv[1], sys.argv[2]
rt = Runtime(package, backend="cpu")
result = rt.inspect([read_frame(image)], color="BGR")[0]
assert result.verdict in ("pass", "review", "fail"), result
assert 0 <= rt.rescore(read_frame(image), result.attention, color="BGR")["defect_score"] <= 1
assert main(["predict", "--package", package, image]) == 0
ov = Runtime(package, backend="openvino")  # the openvino extra: no torch either
assert ov.inspect([read_frame(image)], color="BGR")[0].verdict == result.verdict
loaded = sorted(m for m in sys.modules if blocked(m))
assert not loaded, loaded
print("ok")
"""


def test_runtime_and_predict_run_with_only_onnxruntime_numpy_opencv(exported):
    image = f"{exported['manifest'].root}/{exported['manifest'].split('test')[0].path}"
    _python(LINE_SIDE, exported["package"], image)


RUNNER = """
import sys

BLOCKED = ("torch", "torchvision", "PIL", "sklearn", "scipy", "matplotlib", "pydantic", "tqdm", "inspection.training")

def blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)

class Block:
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ImportError(f"{name} is not installed on the line side")

sys.meta_path.insert(0, Block())
from inspection.cli import main

package, data, log = sys.argv[1:4]
code = main(["run", "--package", package, "--set", f"source.path={data}", "--set", "source.limit=12",
             "--set", f"log.folder={log}", "--set", "jsonl=", "--set", "reload_s=0"])
assert code == 0, code
assert main(["failures", "--log", log]) == 0
loaded = sorted(m for m in sys.modules if blocked(m))
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
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for e in extras for d in project["optional-dependencies"][e]]
    return {re.split(r"[<>=\[ ]", d)[0].lower().replace("_", "-") for d in specs}


def test_the_line_extra_declares_every_package_the_runner_imports(torch_free_log):
    """`pip install inspection[line]` (the slim runner image) is enough for `inspection run`; where the openvino
    extra is installed too, backend auto takes it on an Intel CPU."""
    _assert_declared(torch_free_log[1], "line", "openvino")


REVIEW = RUNNER.replace('"pydantic", ', "").split("from inspection.cli import main")[0] + """
from pathlib import Path
from fastapi.testclient import TestClient
from inspection.deploy.review.app import ReviewConfig, create_app

package, log = sys.argv[1:3]
app = create_app(ReviewConfig(Path(log), Path(package)))
app.state.review.accounts.add_user("lead", "lead-password", "lead")
client = TestClient(app)
assert client.post("/login", data={"user": "lead", "password": "lead-password"}).status_code == 200
assert client.get("/").status_code == client.get("/stats").status_code == 200
assert client.get("/api/stats").json()["days"][0]["inspected"] == 12
loaded = sorted(m for m in sys.modules if blocked(m))
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
BLOCKED = BLOCKED + ("inspection.datasets",)  # the runner image trims it with the training code
from inspection.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = main(["train", "--data", sys.argv[1], "--quiet"])
assert code == 2 and "pip install 'inspection[train]'" in err.getvalue(), (code, err.getvalue())
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = main(["generate", "--out", sys.argv[1] + "-generated", "--quiet"])
assert code == 2 and "pip install 'inspection[train]'" in err.getvalue(), (code, err.getvalue())
print("ok")
"""


def test_training_on_a_line_side_install_says_which_extra_to_install(tiny_dataset):
    _python(TRAIN_WITHOUT_TORCH, tiny_dataset)


def test_the_wheel_holds_every_package(tmp_path):
    """packages.find: every folder under inspection/ with Python in it ships (with the review station's files)."""
    import shutil
    import zipfile
    from pathlib import Path

    root, src = Path(__file__).resolve().parent.parent, tmp_path / "src"  # a copy: no build/ left in the checkout
    shutil.copytree(root / "inspection", src / "inspection", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(root / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("inspection-*.whl"))).namelist()
    want = {p.relative_to(root).as_posix() for p in (root / "inspection").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")}
    assert want - set(names) == set(), sorted(want - set(names))
