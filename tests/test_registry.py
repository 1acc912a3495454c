"""Model registry: versions in, atomic promotion the runner follows, rollback, damaged versions refused."""
import json
import shutil
import subprocess
import sys

import pytest

from inspection.cli import main
from inspection.deploy.registry import Registry, RegistryError, resolve_package


def _version(exported, tmp_path, name):
    pkg = tmp_path / f"src-{name}"
    shutil.copytree(exported["package"], pkg)
    meta = json.loads((pkg / "metadata.json").read_text())
    meta["model_version"] = name
    (pkg / "metadata.json").write_text(json.dumps(meta))
    return pkg


def test_promote_and_rollback_move_the_pointer_the_runner_reads(exported, tmp_path):
    reg = Registry(tmp_path / "models")
    assert reg.current() is None
    reg.add(_version(exported, tmp_path, "v1"))
    reg.add(_version(exported, tmp_path, "v2"), parent="v1")
    reg.promote("v1", "first model")
    reg.promote("v2", "nightly")
    pointer = tmp_path / "models" / "current"
    assert reg.current() == "v2" and resolve_package(pointer) == reg.path("v2")
    assert reg.rollback("bad night") == "v1" and resolve_package(pointer) == reg.path("v1")
    assert [h["action"] for h in reg.history()] == ["promote", "promote", "rollback"]
    rows = {r["version"]: r for r in reg.list()}
    assert rows["v1"]["current"] and rows["v2"]["parent"] == "v1" and rows["v2"]["state"] == "ok"
    assert 0 <= rows["v1"]["metrics"]["fp32"]["auroc"] <= 1
    with pytest.raises(RegistryError, match="already registered"):
        reg.add(reg.path("v1"))


def test_damaged_or_unknown_versions_leave_production_untouched(exported, tmp_path):
    reg = Registry(tmp_path / "models")
    reg.add(_version(exported, tmp_path, "v1"))
    reg.add(_version(exported, tmp_path, "v2"))
    reg.promote("v1")
    (reg.path("v2") / "model.onnx").write_bytes(b"truncated")
    with pytest.raises(RegistryError, match="damaged, production pointer unchanged"):
        reg.promote("v2")
    with pytest.raises(RegistryError, match="no version 'v9'"):
        reg.promote("v9")
    with pytest.raises(RegistryError, match="no earlier production version"):
        reg.rollback()
    assert reg.current() == "v1"
    assert [r["state"].split(":")[0] for r in reg.list()] == ["ok", "damaged"]
    broken = tmp_path / "broken"
    shutil.copytree(exported["package"], broken)
    (broken / "rescore.onnx").unlink()
    with pytest.raises(Exception, match="missing"):
        reg.add(broken)
    assert not list((tmp_path / "models" / "versions").glob(".*partial*"))
    outside = _version(exported, tmp_path, "v3")  # a graph outside the package, listed with its right hash
    shutil.copy(outside / "model.onnx", tmp_path / "elsewhere.onnx")
    meta = json.loads((outside / "metadata.json").read_text())
    meta["files"]["../elsewhere.onnx"] = meta["files"]["model.onnx"]
    meta["variants"]["fp32"]["file"] = "../elsewhere.onnx"
    (outside / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="plain file names"):
        reg.add(outside)
    assert not (tmp_path / "models" / "versions" / "v3").exists()
    assert not list((tmp_path / "models" / "versions").glob(".*partial*"))
    (reg.path("v2") / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)  # deep JSON: damaged, no crash
    assert [r["state"].split(":")[0] for r in reg.list()] == ["ok", "damaged"]


def test_a_copy_refused_after_copying_leaves_nothing_behind(exported, tmp_path, monkeypatch):
    from inspection.deploy import registry

    reg = Registry(tmp_path / "models")
    checks = iter([None])  # the source passes; the copy, checked again, does not
    real = registry.load_package
    monkeypatch.setattr(registry, "load_package",
                        lambda p: real(p) if next(checks, "copy") is None else (_ for _ in ()).throw(
                            registry.PackageError("copy damaged")))
    with pytest.raises(registry.PackageError, match="copy damaged"):
        reg.add(_version(exported, tmp_path, "v1"))
    assert not [p for p in (tmp_path / "models" / "versions").iterdir()]


def test_a_second_writer_waits_for_the_lock_and_then_gives_up_cleanly(exported, tmp_path):
    reg = Registry(tmp_path / "models", lock_timeout=0.5)
    reg.add(_version(exported, tmp_path, "v1"))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(tmp_path / 'models' / '.lock')!r}, 'w'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('locked', flush=True); time.sleep(5)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RegistryError, match="holds the registry lock"):
        reg.promote("v1")
    holder.kill()
    holder.wait()
    reg.promote("v1")
    assert reg.current() == "v1"


def test_models_cli(exported, tmp_path, capsys):
    args = ["--registry", str(tmp_path / "models")]
    assert main(["models", "add", str(_version(exported, tmp_path, "v1")), *args]) == 0
    assert main(["models", "promote", "v1", *args]) == 0
    assert main(["models", "list", *args]) == 0
    out = capsys.readouterr().out
    assert "* v1" in out and "ok" in out
    assert main(["models", "rollback", *args]) == 2
    assert "no earlier production version" in capsys.readouterr().err
    assert main(["models", "promote", *args]) == 2
    assert main(["models", "add", str(_version(exported, tmp_path, "v2")), "--promote", *args]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"added": "v2", "current": "v2"}
