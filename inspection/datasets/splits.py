"""What the public sets' converters share: reading a git copy, the split files (groups of images, a physical part or
a photographed spot, dealt to train/val/test in turn, so that no group is split and every kind of group reaches
every split; or a committed split file, checked against the source), writing masks and split.json."""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections import Counter
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


def checked_split(split_file: Path, rels: set[str]) -> dict[str, list[str]]:
    """The committed split, after checking it lists every image of the source exactly once."""
    try:
        split = json.loads(Path(split_file).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{split_file}: cannot read the split ({exc})") from None
    if not isinstance(split, dict) or sorted(split) != ["test", "train", "val"] or \
            not all(isinstance(v, list) for v in split.values()):
        raise SystemExit(f'{split_file}: expected {{"train": [...], "val": [...], "test": [...]}}')
    listed = Counter(r for k in ("train", "val", "test") for r in split[k])
    twice = sorted(r for r, n in listed.items() if n > 1)
    missing, extra = sorted(set(listed) - rels), sorted(rels - set(listed))
    for paths, what in ((twice, "lists twice"), (missing, "lists images the source lacks"),
                        (extra, "does not list images the source holds")):
        if paths:
            raise SystemExit(f"{split_file} {what}: {', '.join(paths[:5])}{' ...' if len(paths) > 5 else ''}")
    return split


def git_archive(git_dir: str | Path, folders: list[str], repository: str,
                suffixes: tuple[str, ...] | None = (".png",)) -> dict[str, bytes]:
    """The files under `folders` of a git copy's HEAD (those ending in `suffixes`; None: all), by path (a bare
    mirror is enough; no network)."""
    try:
        tar = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "HEAD", *folders], check=True,
                             capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        why = getattr(exc, "stderr", b"").decode(errors="replace").strip() or exc
        raise SystemExit(f"{git_dir}: not a git copy of {repository} with {', '.join(folders)} ({why})") from None
    archive = tarfile.open(fileobj=io.BytesIO(tar))
    return {m.name: archive.extractfile(m).read() for m in archive.getmembers()
            if m.isfile() and (suffixes is None or m.name.lower().endswith(suffixes))}


def write_mask(out: Path, rel: str, mask) -> None:
    """OUT/masks/<type>/<name>.png for the image OUT/defect/<type>/<name> (uint8, 255 = defect)."""
    import cv2

    path = Path(out) / "masks" / Path(rel.removeprefix("defect/")).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mask)


def finish(out: Path, split: dict[str, list[str]]) -> dict:
    """Write OUT/split.json; return the (good, defect) image counts per split."""
    (Path(out) / "split.json").write_text(json.dumps(split, indent=1))
    return {k: (sum(r.startswith("good/") for r in v), sum(r.startswith("defect/") for r in v))
            for k, v in split.items()}


def converter_main(argv: list[str], doc: str, convert, new_split, split_file: Path) -> None:
    """`python -m inspection.datasets.<set> MIRROR OUT` converts; `MIRROR --new-split` rewrites the committed split
    file by the converter's rule (`new_split(mirror)` returns the split)."""
    import sys

    if len(argv) != 2:
        sys.exit(doc)
    if argv[1] == "--new-split":
        split_file.parent.mkdir(exist_ok=True)
        split_file.write_text(json.dumps(new_split(argv[0]), indent=1) + "\n")
        print(f"wrote {split_file}")
    else:
        print(f"{argv[1]}: (good, defect) per split {convert(argv[0], argv[1])}")
