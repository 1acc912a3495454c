"""The converters' split files: groups of images (a physical part, a photographed spot) dealt to train/val/test
in turn, so that no group is split and every kind of group reaches every split."""
from __future__ import annotations

import json
from pathlib import Path


def write_split(out: Path, kinds: list[list[list[str]]], cycle: tuple[str, ...]) -> dict:
    """Deal each kind's groups (lists of relative image paths) in turn over `cycle`; write out/split.json;
    return the (good, defect) image counts per split."""
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for groups in kinds:
        for i, group in enumerate(groups):
            split[cycle[i % len(cycle)]] += group
    (Path(out) / "split.json").write_text(json.dumps(split, indent=1))
    return {k: (sum(r.startswith("good/") for r in v), sum(r.startswith("defect/") for r in v))
            for k, v in split.items()}
