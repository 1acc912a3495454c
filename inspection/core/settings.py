"""A settings file: a YAML mapping with `section.key=value` overrides from the command line (values are YAML).
The one reader behind the training config (inspection/model/config.py) and the station config
(inspection/deploy/line/station.py); each checks the tree it gets in its own way.

    >>> tree, source = read_settings("configs/station.yaml", ["source.fps=20"], StationConfigError, "station config")
"""
from __future__ import annotations

from pathlib import Path


def read_settings(path: str | Path | None, overrides: list[str] | None, error: type[Exception],
                  what: str) -> tuple[dict, str]:
    """The file's mapping (None: {}) with the overrides applied, and the source's name for messages
    (`path with overrides ...`). Every problem raises `error` naming the file or the override."""
    import yaml  # safe_load only: no YAML tags, no objects

    tree: dict = {}
    source = "defaults"
    if path is not None and str(path):
        source = str(path)
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise error(f"cannot read {what} {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise error(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
        except yaml.YAMLError as exc:
            raise error(f"{what} {path} is not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise error(f"{what} {path}: expected a mapping of sections, got {type(tree).__name__}")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise error(f"override {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise error(f"override {item!r}: the value is not plain YAML ({str(exc).splitlines()[0]})") from None
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise error(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    if overrides:
        source += " with overrides " + " ".join(overrides)
    return tree, source
