"""The model package: a folder with the ONNX graphs and `metadata.json`, everything the line side needs.

    runs/model/package/
      model.onnx         image (B,3,H,W) → probs (B,K), defect_score (B,), attention (B,h,w)
      model.int8.onnx    the same, statically quantized (optional)
      rescore.onnx       image, attention (B,h,w) → probs: re-scores a part with an operator-corrected map
      novelty.npy        the good training parts' feature bank (m, C) float32, where model.onnx also outputs
                         features (B,C,h,w): the box rule's novelty level (inspection/core/novelty.py); optional
      metadata.json      input policy, classes, per-variant thresholds and metrics, file hashes, provenance

    >>> meta = load_package("runs/model/package")          # validates fields, versions and file hashes
    >>> meta["variants"]["fp32"]["threshold"]

numpy-free and torch-free: read by the runtime, the line runner, the review station and the registry.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from inspection.core.errors import UserError

FORMAT = "inspection-model-package"
FORMAT_VERSION = 1
METADATA = "metadata.json"
VARIANTS = ("fp32", "int8")
MAX_METADATA = 16 * 2**20
# Beside the listed files a package folder may hold only these: its metadata, the training checkpoint that the
# registry keeps with a version (read by retrain only), and the TensorRT engines the runtime builds for its GPU.
UNHASHED = (METADATA, "checkpoint.pt", "engines")

# Required fields: dotted path → expected type(s). Anything the runtime reads is listed here.
_NUM = (int, float)
SCHEMA: dict[str, tuple] = {
    "format": (str,), "format_version": (int,), "model_version": (str,), "created": (str,),
    "classes": (list,),
    "input.name": (str,), "input.size": (list,), "input.color": (str,), "input.mean": (list,), "input.std": (list,),
    "input.channels": (str,), "input.aspect_range": (list,), "input.resize": (str,),
    "attention.name": (str,), "attention.size": (list,),
    "decision.review_band": _NUM,
    "boxes.min_area": _NUM, "boxes.score": (str,),
    "files": (dict,), "variants": (dict,),
    "training.manifest_hash": (str,),
}
VARIANT_SCHEMA = {"file": (str,), "threshold": _NUM, "box_threshold": _NUM, "metrics": (dict,)}


class PackageError(UserError, ValueError):
    """A model package that cannot be used; the message names the file and the problem."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _get(meta: dict, dotted: str):
    node = meta
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(dotted)
        node = node[key]
    return node


def validate_metadata(meta: dict, source: str = METADATA) -> dict:
    """Check format, version and every required field's presence and type; return meta unchanged."""
    if not isinstance(meta, dict):
        raise PackageError(f"{source}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise PackageError(f"{source}: field 'format' must be {FORMAT!r}, got {meta.get('format')!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise PackageError(f"{source}: field 'format_version' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise PackageError(f"{source}: package format {version} is newer than this software reads "
                           f"(up to {FORMAT_VERSION}); upgrade the inspection software on this station")
    for dotted, types in SCHEMA.items():
        try:
            value = _get(meta, dotted)
        except KeyError:
            raise PackageError(f"{source}: missing field {dotted!r}") from None
        if isinstance(value, bool) or not isinstance(value, types):
            raise PackageError(f"{source}: field {dotted!r} must be {'/'.join(t.__name__ for t in types)}, "
                               f"got {type(value).__name__} {value!r}")
    _check_shapes(meta, source)
    for name, variant in meta["variants"].items():
        if name not in VARIANTS:
            raise PackageError(f"{source}: unknown variant {name!r} (expected one of {', '.join(VARIANTS)})")
        for key, types in VARIANT_SCHEMA.items():
            value = variant.get(key) if isinstance(variant, dict) else None
            if isinstance(value, bool) or not isinstance(value, types):
                raise PackageError(f"{source}: field 'variants.{name}.{key}' must be "
                                   f"{'/'.join(t.__name__ for t in types)}, got {value!r}")
        if variant["file"] not in meta["files"]:
            raise PackageError(f"{source}: variant {name!r} names file {variant['file']!r}, not listed in 'files'")
    if "fp32" not in meta["variants"]:
        raise PackageError(f"{source}: the 'fp32' variant is required")
    novelty = meta.get("novelty")
    if novelty is not None and not (isinstance(novelty, dict) and novelty.get("file") in meta["files"]
                                    and isinstance(novelty.get("output"), str)):
        raise PackageError(f"{source}: field 'novelty' must be null or name a listed file and the model's "
                           f"features output, got {novelty!r}")
    return meta


def _check_shapes(meta: dict, source: str) -> None:
    inp = meta["input"]
    if len(inp["size"]) != 2 or not all(isinstance(v, int) and v > 0 for v in inp["size"]):
        raise PackageError(f"{source}: field 'input.size' must be [height, width], got {inp['size']!r}")
    for key in ("mean", "std"):
        if len(inp[key]) != 3 or not all(isinstance(v, _NUM) for v in inp[key]):
            raise PackageError(f"{source}: field 'input.{key}' must be 3 numbers, got {inp[key]!r}")
    if any(v <= 0 for v in inp["std"]):
        raise PackageError(f"{source}: field 'input.std' must be positive, got {inp['std']!r}")
    if inp["color"] != "RGB":
        raise PackageError(f"{source}: field 'input.color' must be 'RGB', got {inp['color']!r}")
    if inp["channels"] not in ("gray", "color", "mixed"):
        raise PackageError(f"{source}: field 'input.channels' must be gray, color or mixed, got {inp['channels']!r}")
    roi = inp.get("roi")
    if roi is not None and (not isinstance(roi, list) or len(roi) != 4):
        raise PackageError(f"{source}: field 'input.roi' must be null or [x, y, width, height], got {roi!r}")
    size = meta["attention"]["size"]
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise PackageError(f"{source}: field 'attention.size' must be [height, width], got {size!r}")
    if len(meta["classes"]) < 2 or meta["classes"][0] != "good":
        raise PackageError(f"{source}: field 'classes' must start with 'good' and name at least one defect class, "
                           f"got {meta['classes']!r}")


def load_package(path: str | Path, verify_files: bool = True) -> dict:
    """Read and validate a package folder's metadata; check every listed file exists with its SHA-256."""
    root = Path(path)
    if not root.is_dir():
        raise PackageError(f"{root}: model package folder not found")
    meta_path = root / METADATA
    try:
        if meta_path.is_symlink() or meta_path.stat().st_size > MAX_METADATA:
            raise PackageError(f"{meta_path}: must be a plain file of at most {MAX_METADATA // 2**20} MB")
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise PackageError(f"{meta_path}: missing; not a model package (export one with `inspection export`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PackageError(f"{meta_path}: unreadable or not JSON ({str(exc)[:200]})") from None
    validate_metadata(meta, str(meta_path))
    for name, entry in meta["files"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise PackageError(f"{meta_path}: field 'files.{name}' must be an object with a sha256")
        if not isinstance(name, str) or name != Path(name).name or name in ("", ".", "..", METADATA):
            raise PackageError(f"{meta_path}: field 'files' names {name!r}; a package lists only plain file names "
                               "of its own folder")
        file = root / name
        if file.is_symlink() or not file.is_file():
            raise PackageError(f"{file}: listed in {METADATA} but missing or not a plain file (partial or damaged "
                               "package)")
        if verify_files and file_sha256(file) != entry["sha256"]:
            raise PackageError(f"{file}: SHA-256 differs from {METADATA} (corrupt or modified file)")
    unlisted = sorted(p.name for p in root.iterdir() if p.name not in meta["files"] and p.name not in UNHASHED)
    if unlisted:
        raise PackageError(f"{root}: {', '.join(unlisted[:5])} not listed in {METADATA}; every file of a package is "
                           "listed with its hash (an ONNX graph's external weights too)")
    if "rescore.onnx" not in meta["files"]:
        raise PackageError(f"{meta_path}: field 'files' must list rescore.onnx")
    return meta


def write_metadata(root: Path, meta: dict) -> None:
    """Hash the package's files into meta['files'], validate, and write metadata.json."""
    meta["files"] = {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
                     for p in sorted(root.iterdir()) if p.is_file() and p.name not in UNHASHED}
    validate_metadata(meta, str(root / METADATA))
    (root / METADATA).write_text(json.dumps(meta, indent=1))
