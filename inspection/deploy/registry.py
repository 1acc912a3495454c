"""Model registry: a folder of versioned model packages and an atomic `current` pointer the line follows.

    registry/
      versions/<model_version>/   model packages (checked on the way in, never modified)
      registry.json               per version: added, parent, manifest hash, test metrics; promotion history
      current                     the production package's path (one line); the runner's `package:` points here
      .lock                       writers take it (promotions, additions); readers never wait

    >>> reg = Registry("models")
    >>> reg.add("runs/abn/package", parent=reg.current())
    >>> reg.promote("20261123-101500-ab12cd34")      # the line runners hot-reload it
    >>> reg.rollback()                                # back to the version promoted before

Torch-free (stdlib + inspection.deploy.package).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from inspection.core.errors import UserError
from inspection.deploy.atomic import write_atomic
from inspection.deploy.package import PackageError, load_package

POINTER = "current"


class RegistryError(UserError, RuntimeError):
    """A registry operation refused; the message says why and what is unchanged."""


class Registry:
    def __init__(self, root: str | Path, lock_timeout: float = 30.0):
        self.root = Path(root)
        self.versions = self.root / "versions"
        self.lock_timeout = lock_timeout

    @contextmanager
    def _locked(self):
        self.versions.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as f:
            deadline = time.time() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.time() > deadline:
                        raise RegistryError(f"{self.root}: another process holds the registry lock "
                                            f"(waited {self.lock_timeout:.0f} s); nothing was changed") from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _index(self) -> dict:
        path = self.root / "registry.json"
        if not path.exists():
            return {"versions": {}, "history": []}
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{path}: unreadable ({exc}); restore it from backup, nothing was changed") from None

    def _save(self, index: dict) -> None:
        write_atomic(self.root / "registry.json", json.dumps(index, indent=1))

    def current(self) -> str | None:
        """The promoted version, or None before the first promotion."""
        pointer = self.root / POINTER
        if not pointer.exists():
            return None
        return Path(pointer.read_text().strip()).name

    def path(self, version: str) -> Path:
        return self.versions / version

    def add(self, package: str | Path, parent: str | None = None, note: str = "",
            checkpoint: str | Path | None = None) -> str:
        """Copy a checked package in under its model version (with its training checkpoint, for later
        fine-tuning); return the version."""
        meta = load_package(package)
        version = meta["model_version"]
        if "/" in version or version.startswith("."):
            raise RegistryError(f"{package}: model version {version!r} cannot name a folder")
        with self._locked():
            index = self._index()
            if self.path(version).exists():
                raise RegistryError(f"{self.root}: version {version} is already registered")
            tmp = self.versions / f".{version}.partial-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                shutil.copytree(package, tmp, ignore=shutil.ignore_patterns("engines"))
                load_package(tmp)  # the copy is complete and intact
                if checkpoint is not None:
                    shutil.copyfile(checkpoint, tmp / "checkpoint.pt")
                os.replace(tmp, self.path(version))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # a refused or interrupted copy leaves nothing behind
                raise
            index["versions"][version] = {
                "added": datetime.now(timezone.utc).isoformat(timespec="seconds"), "parent": parent, "note": note,
                "manifest_hash": meta["training"]["manifest_hash"],
                "metrics": {name: {"auroc": v["metrics"]["image"]["auroc"],
                                   "box_f1@0.3": v["metrics"].get("box@0.3", {}).get("f1")}
                            for name, v in meta["variants"].items()}}
            self._save(index)
        return version

    def promote(self, version: str, reason: str = "") -> None:
        """Point `current` at a version after checking its package; the runners pick it up by themselves."""
        with self._locked():
            index = self._index()
            self._check(version, index)
            before = self.current()
            write_atomic(self.root / POINTER, f"versions/{version}\n")
            index["history"].append({"ts": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                     "action": "promote", "from": before, "to": version, "reason": reason})
            self._save(index)

    def rollback(self, reason: str = "") -> str:
        """Back to the version that was in production before the current one; return it."""
        with self._locked():
            index = self._index()
            now = self.current()
            previous = next((h["from"] for h in reversed(index["history"]) if h["to"] == now and h["from"]), None)
            if previous is None:
                raise RegistryError(f"{self.root}: no earlier production version to roll back to (current: {now})")
            self._check(previous, index)
            write_atomic(self.root / POINTER, f"versions/{previous}\n")
            index["history"].append({"ts": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                     "action": "rollback", "from": now, "to": previous, "reason": reason})
            self._save(index)
            return previous

    def _check(self, version: str, index: dict) -> None:
        if version not in index["versions"] or not self.path(version).is_dir():
            known = ", ".join(index["versions"]) or "none"
            raise RegistryError(f"{self.root}: no version {version!r} (known: {known})")
        try:
            load_package(self.path(version))
        except PackageError as exc:
            raise RegistryError(f"version {version} is damaged, production pointer unchanged: {exc}") from None

    def list(self) -> list[dict]:
        """Every version with its metrics, health (package intact) and whether it is in production."""
        index, now = self._index(), self.current()
        rows = []
        for version, info in sorted(index["versions"].items(), key=lambda kv: kv[1]["added"]):
            try:
                load_package(self.path(version))
                state = "ok"
            except PackageError as exc:
                state = f"damaged: {exc}"
            rows.append({"version": version, "current": version == now, "state": state, **info})
        return rows

    def history(self) -> list[dict]:
        return self._index()["history"]


def resolve_package(path: str | Path) -> Path:
    """A package folder, or a pointer file (e.g. a registry's `current`) holding the path of one."""
    p = Path(path)
    if p.is_file():
        target = Path(p.read_text().strip())
        return target if target.is_absolute() else p.parent / target
    return p
