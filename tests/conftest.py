"""Shared fixtures: a tiny synthetic dataset with mixed formats, sizes and channels, and a tiny config."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from inspection.datasets.synthetic import generate
from inspection.model.config import load_config

# A test that uses one of these trains a model or starts a real server, browser or camera: it is marked `slow`,
# and `make quick` (pytest -m "not slow") leaves it out, as it does tests marked slow by hand (real back-off
# waits, repeated kills). `make test` runs everything.
SLOW_FIXTURES = {"exported", "trained", "postgres", "open_log", "broker", "camera", "server", "plc_runner",
                 "torch_free_log", "shared_log", "line_log"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """36 good + 3 types x 8 defects; gray and color, PNG and JPEG, sizes 72-120 px, with masks."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    generate(root, n_good=36, n_per_type=8, size=96, seed=3, defect_types=("scratch", "hole", "stain"),
             size_jitter=0.25, gray_fraction=0.3, jpeg_fraction=0.3)
    return root


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_dataset, dst)
    return dst


def tiny_config(root, base=None, **overrides):
    """The tiny test model on `root`, over the config file `base` (the defaults when None)."""
    sets = [f"data.root={root}", "data.image_size=[64, 64]", "model.backbone=tiny", "model.pretrained=false",
            "train.epochs=2", "train.batch_size=8", "train.lr=0.003", "eval.overlays=4"]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(base, sets)


@pytest.fixture(scope="session")
def exported(tiny_dataset, tmp_path_factory):
    """A tiny ABN trained for 2 epochs, a plain CNN, and the ABN's exported package."""
    from inspection.core.layout import scan_dataset
    from inspection.training.export import export_package
    from inspection.training.train import train

    runs = tmp_path_factory.mktemp("export")
    cfg = tiny_config(tiny_dataset)
    manifest = scan_dataset(tiny_dataset, cfg.data)
    best = train(cfg, manifest, runs / "abn", kind="abn", progress=False)
    cnn = train(tiny_config(tiny_dataset, **{"train.epochs": 1}), manifest, runs / "cnn", kind="cnn", progress=False)
    package = export_package(best, runs / "package", progress=False)
    return {"best": best, "cnn": cnn, "package": package, "manifest": manifest, "cfg": cfg, "root": runs}


def always_fail(package, dst: Path) -> Path:
    """A copy of a package whose threshold fails every part (the runner then logs every frame)."""
    shutil.copytree(package, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    meta["variants"]["fp32"]["threshold"] = 0.0
    meta["decision"]["review_band"] = 0.0
    (dst / "metadata.json").write_text(json.dumps(meta))
    return dst


class PostgresServer:
    """A real PostgreSQL server (Debian's `postgresql`, installed by `make postgres`) in a temporary folder.

    Runs as the `postgres` user when the tests run as root (initdb refuses root), on a free loopback port.
    """

    def __init__(self):
        import glob
        import os
        import socket
        import subprocess

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
        if not found[-1]:
            raise RuntimeError("PostgreSQL server not installed: run `make postgres` (Debian's postgresql)")
        self.bin = Path(found[-1]).parent
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        folder = self.folder = Path(tempfile.mkdtemp(prefix="inspection-pg-"))  # pytest's tmp is root-only
        if self.as_user:
            shutil.chown(folder, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data, self.run = folder / "data", subprocess.run
        self._pg("initdb", "-D", self.data, "-U", "inspection", "--auth=trust", "-E", "UTF8")
        self.options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {folder} -c fsync=off -c max_connections=200"
        self.start()
        self.n = 0

    def _pg(self, tool, *args):
        r = self.run([*self.as_user, str(self.bin / tool), *map(str, args)], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{tool} failed: {r.stderr[-2000:]}")

    def url(self, db="inspection") -> str:
        return f"postgresql://inspection@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        import psycopg

        self.n += 1
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE t{self.n}")
        return self.url(f"t{self.n}")

    def stop(self):
        self._pg("pg_ctl", "-D", self.data, "-m", "fast", "stop")

    def remove(self):
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def start(self):
        self._pg("pg_ctl", "-D", self.data, "-w", "-l", self.folder / "server.log", "-o", self.options, "start")


@pytest.fixture(scope="session")
def postgres():
    server = PostgresServer()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def open_log(request, tmp_path):
    """open_log(name, **kw): a failure log in tmp_path/name, on SQLite or on a new PostgreSQL database.

    The same name opens the same log again (a second process's view)."""
    from inspection.deploy.store.factory import open_store

    dbs, stores = {}, []

    def open_(name="log", **kw):
        if name not in dbs:
            dbs[name] = "" if request.param == "sqlite" else request.getfixturevalue("postgres").new_database()
        stores.append(open_store(dbs[name], tmp_path / name, fsync=False, **kw))
        return stores[-1]
    open_.backend = request.param
    yield open_
    for s in stores:
        s.close()


def git_repo(path: Path, files: dict[str, bytes]) -> Path:
    """A git repository at `path` holding `files` (name → bytes) in one commit; returns its .git folder (the
    dataset converters read public sets from such copies)."""
    path.mkdir()
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "HOME": str(path), "PATH": "/usr/bin:/bin"}
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "data"]):
        subprocess.run(["git", "-C", str(path), *cmd], check=True, env=env)
    return path / ".git"
