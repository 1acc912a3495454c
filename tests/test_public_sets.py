"""The AITEX, MPDD and DAGM class 8 converters on tiny hand-made copies of their repositories, and the committed
split files."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import git_repo

from inspection.datasets import aitex, dagm8, mpdd


def png(array: np.ndarray, level: int = 3) -> bytes:
    return cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, level])[1].tobytes()


def split_file(tmp_path, name: str, split: dict[str, list[str]]) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(split))
    return path


def read(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def assert_binary_mask_of(mask_path, image_path):
    mask, image = read(mask_path), read(image_path)
    assert mask.dtype == np.uint8 and mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
    assert mask.shape == image.shape[:2] and mask.any()


def test_aitex_converter_on_a_tiny_repository(tmp_path):
    h, w = 16, 64
    fabric = np.full((h, w), 120, np.uint8)
    rgba = np.dstack([fabric] * 3 + [np.full((h, w), 255, np.uint8)])  # some sources are gray stored as RGBA
    aa = np.zeros((h, w), np.uint8)
    aa[4:8, 10:20] = 255
    aa[3, 10:20] = 128   # an anti-aliased rim: part of the region it borders
    aa[8, 10:20] = 60
    aa[13, 5:35:2] = 200  # a line drawn under a pixel wide: strong and faint pixels in turn, one defect
    aa[13, 6:35:2] = 90
    aa[1, 30:33] = 100   # a faint speck that reaches 128 nowhere: no defect
    one, two = np.zeros((h, w), np.uint8), np.zeros((h, w, 4), np.uint8)
    one[2:4, 40:44] = 255
    two[10:12, 50:54] = 255  # the second defect's mask is gray RGBA; its alpha carries the edge
    two[10, 49] = (255, 255, 255, 100)  # 255 at alpha 100/255: the rim of the square beside it
    two[14, 30] = (255, 255, 255, 100)  # the same alone: no defect
    d = "data/aitex/"
    files = {
        d + "NODefect_images/2306881-210020u/0001_000_05.png": png(fabric),
        d + "NODefect_images/2311694-2040n7u/0001_000_00.png": png(rgba),
        d + "Defect_images/0001_002_00.png": png(fabric),
        d + "Defect_images/0002_019_02.png": png(rgba),
        d + "Defect_images/0003_016_03.png": png(fabric),   # weft curling: too few in AITEX, pooled
        d + "Defect_images/0004_025_08.png": png(fabric),   # no mask
        d + "Defect_images/0005_010_03.png": png(fabric),   # an all-zero mask: kept without one
        d + "Mask_images/0005_010_03_mask.png": png(np.zeros((h, w), np.uint8)),
        d + "Mask_images/0001_002_00_mask.png": png(aa),
        d + "Mask_images/0002_019_02_mask1.png": png(one),
        d + "Mask_images/0002_019_02_mask2.png": png(two),
        d + "Mask_images/0003_016_03_mask.png": png(aa),
        d + "object_detection/images/0001_002_00_crop.png": png(fabric[:, :16]),  # derived crops: ignored
        "README.md": b"fabric",
    }
    git_dir = git_repo(tmp_path / "fabric", files)
    split = {"train": ["good/0001_000_05.png", "defect/broken_end/0001_002_00.png", "defect/other/0003_016_03.png"],
             "val": ["good/0001_000_00.png", "defect/fuzzyball/0002_019_02.png"],
             "test": ["defect/warp_ball/0004_025_08.png", "defect/broken_pick/0005_010_03.png"]}
    out = tmp_path / "out"
    counts = aitex.convert(git_dir, out, split_file(tmp_path, "aitex", split))
    assert counts == {"train": (1, 2), "val": (1, 1), "test": (0, 2)}
    assert json.loads((out / "split.json").read_text()) == split
    images = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if not p.is_relative_to(out / "masks"))
    assert images == sorted(r for v in split.values() for r in v)
    assert read(out / "good/0001_000_00.png").shape == (h, w)  # RGBA source written as gray, same pixels
    assert (read(out / "good/0001_000_00.png") == 120).all()
    masks = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png"))
    assert masks == ["broken_end/0001_002_00.png", "fuzzyball/0002_019_02.png", "other/0003_016_03.png"]
    for m in masks:
        assert_binary_mask_of(out / "masks" / m, out / "defect" / m)
    edge = read(out / "masks/broken_end/0001_002_00.png")
    assert edge[3:9, 10:20].all() and edge[13, 5:35].all() and not edge[1].any()  # regions reaching 128, whole
    assert cv2.connectedComponents((edge > 0).astype(np.uint8))[0] - 1 == 2      # the thin line is one defect
    union = read(out / "masks/fuzzyball/0002_019_02.png")
    assert union[2:4, 40:44].all() and union[10:12, 50:54].all() and union[10, 49] and not union[14, 30]
    assert union.sum() == 255 * 17

    wrong = {**split, "test": split["test"][1:]}  # the source holds an image the split does not list
    with pytest.raises(SystemExit, match="does not list images the source holds: defect/warp_ball/0004_025_08"):
        aitex.convert(git_dir, tmp_path / "out2", split_file(tmp_path, "short", wrong))
    wrong = {**split, "test": split["test"] + ["good/0099_000_05.png"]}
    with pytest.raises(SystemExit, match="lists images the source lacks: good/0099_000_05.png"):
        aitex.convert(git_dir, tmp_path / "out2", split_file(tmp_path, "long", wrong))
    wrong = {**split, "test": split["test"] + ["good/0001_000_05.png"]}
    with pytest.raises(SystemExit, match="lists twice: good/0001_000_05.png"):
        aitex.convert(git_dir, tmp_path / "out2", split_file(tmp_path, "twice", wrong))
    with pytest.raises(SystemExit, match="not a git copy"):
        aitex.convert(tmp_path / "nowhere", tmp_path / "out2", split_file(tmp_path, "aitex", split))
    other = git_repo(tmp_path / "other", {"README.md": b"something else", "data/x.png": png(fabric)})
    with pytest.raises(SystemExit, match="not a git copy of jraad/fabric_defect_detection"):
        aitex.convert(other, tmp_path / "out2", split_file(tmp_path, "aitex", split))
    assert not (tmp_path / "out2").exists()  # every check comes before the first file is written
    odd = git_repo(tmp_path / "odd", {**files, d + "Defect_images/0005_099_01.png": png(fabric)})
    with pytest.raises(SystemExit, match="0005_099_01.png: expected a name"):
        aitex.convert(odd, tmp_path / "out2", split_file(tmp_path, "aitex", split))


def test_mpdd_converter_removes_duplicates_on_a_tiny_repository(tmp_path):
    rng = np.random.default_rng(0)
    plates = [rng.integers(0, 255, (32, 32, 3), np.uint8) for _ in range(3)]
    empty, rust, two = np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)
    rust[5:10, 5:10] = 255
    two[2:4, 2:4] = 255
    two[20:25, 20:30] = 255
    r = "data_supervised/metal_plate/"
    files = {
        r + "train/images/train_00000.png": png(plates[0]), r + "train/masks/train_00000.png": png(empty),
        r + "train/images/train_00001.png": png(plates[1]), r + "train/masks/train_00001.png": png(rust),
        r + "train/images/train_00002.png": png(plates[1]), r + "train/masks/train_00002.png": png(rust),  # a copy
        r + "val/images/val_00000.png": png(plates[0], 9), r + "val/masks/val_00000.png": png(empty),  # same pixels
        r + "test/images/test_00000.png": png(plates[2]), r + "test/masks/test_00000.png": png(two),
        r + "eda/summary.json": b"{}",
    }
    git_dir = git_repo(tmp_path / "mpdd", files)
    split = {"train": ["good/train_00000.png", "defect/defect/train_00001.png"], "val": [],
             "test": ["defect/defect/test_00000.png"]}
    out = tmp_path / "out"
    assert mpdd.convert(git_dir, out, split_file(tmp_path, "mpdd", split)) == {
        "train": (1, 1), "val": (0, 0), "test": (0, 1)}
    assert json.loads((out / "split.json").read_text()) == split
    images = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if not p.is_relative_to(out / "masks"))
    assert images == sorted(r for v in split.values() for r in v)  # the copies are gone, the first name kept
    assert (out / "good/train_00000.png").read_bytes() == files[r + "train/images/train_00000.png"]
    for name in ("train_00001.png", "test_00000.png"):
        assert_binary_mask_of(out / "masks/defect" / name, out / "defect/defect" / name)
    assert cv2.connectedComponents(read(out / "masks/defect/test_00000.png"))[0] - 1 == 2
    assert not (out / "masks/good").exists()

    with pytest.raises(SystemExit, match="does not list images the source holds: defect/defect/test_00000.png"):
        mpdd.convert(git_dir, tmp_path / "out2", split_file(tmp_path, "short", {**split, "test": []}))
    with pytest.raises(SystemExit, match="lists images the source lacks: good/train_00002.png"):
        mpdd.convert(git_dir, tmp_path / "out2",
                      split_file(tmp_path, "long", {**split, "val": ["good/train_00002.png"]}))
    clash = git_repo(tmp_path / "clash", {**files, r + "train/masks/train_00002.png": png(two)})
    with pytest.raises(SystemExit, match="train_00002.png copies .*train_00001.png but their masks differ"):
        mpdd.convert(clash, tmp_path / "out2", split_file(tmp_path, "mpdd", split))
    other = git_repo(tmp_path / "other", {"README.md": b"MPDD", "anomaly_dataset/metal_plate/x.png": png(empty)})
    with pytest.raises(SystemExit, match="not a git copy of BupeshKumarR/defect-segmentation-for-mpdd"):
        mpdd.convert(other, tmp_path / "out2", split_file(tmp_path, "mpdd", split))
    assert not (tmp_path / "out2").exists()


def test_dagm8_converter_on_a_tiny_repository(tmp_path):
    texture = np.full((24, 24), 90, np.uint8)
    ellipse = np.zeros((24, 24), np.uint8)
    cv2.ellipse(ellipse, (12, 12), (6, 3), 30, 0, 360, 255, -1)

    def index(rows):
        return ("1\n" + "".join(f"{n}\t{d}\t{n}.PNG\t0\t{f'{n}_label.PNG' if d else 0}\t\n" for n, d in rows)).encode()

    files = {f"Class8/Train/{n}.PNG": png(texture + i) for i, n in enumerate(("1151", "1152", "1153"))}
    files |= {f"Class8/Test/{n}.PNG": png(texture + 10 + i) for i, n in enumerate(("0001", "0002"))}
    files |= {"Class8/Train/Label/Labels.txt": index([("1151", 0), ("1152", 1), ("1153", 0)]),
              "Class8/Train/Label/1152_label.PNG": png(ellipse),
              "Class8/Test/Label/Labels.txt": index([("0001", 0), ("0002", 1)]),
              "Class8/Test/Label/0002_label.PNG": png(ellipse),
              "Class8/Test/Thumbs.db": b"\0", "main.py": b""}
    git_dir = git_repo(tmp_path / "dagm", files)
    split = {"train": ["good/train_1151.png", "defect/defect/train_1152.png"], "val": ["good/train_1153.png"],
             "test": ["good/test_0001.png", "defect/defect/test_0002.png"]}
    out = tmp_path / "out"
    assert dagm8.convert(git_dir, out, split_file(tmp_path, "dagm8", split)) == {
        "train": (1, 1), "val": (1, 0), "test": (1, 1)}
    assert json.loads((out / "split.json").read_text()) == split
    images = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if not p.is_relative_to(out / "masks"))
    assert images == sorted(r for v in split.values() for r in v)
    for name in ("train_1152.png", "test_0002.png"):
        assert_binary_mask_of(out / "masks/defect" / name, out / "defect/defect" / name)
        assert (read(out / "masks/defect" / name) == ellipse).all()
    rule = dagm8.make_split([f"good/train_{n}.png" for n in range(1151, 1159)] + ["defect/defect/test_0002.png"])
    assert rule == {"train": [f"good/train_{n}.png" for n in (1151, 1152, 1154, 1155, 1156, 1158)],
                    "val": ["good/train_1153.png", "good/train_1157.png"], "test": ["defect/defect/test_0002.png"]}

    with pytest.raises(SystemExit, match="does not list images the source holds: good/test_0001.png"):
        dagm8.convert(git_dir, tmp_path / "out2", split_file(tmp_path, "short", {**split, "test": split["test"][1:]}))
    with pytest.raises(SystemExit, match="lists images the source lacks: good/train_1154.png"):
        dagm8.convert(git_dir, tmp_path / "out2",
                      split_file(tmp_path, "long", {**split, "val": ["good/train_1153.png", "good/train_1154.png"]}))
    unlisted = git_repo(tmp_path / "unlisted", {**files, "Class8/Train/1154.PNG": png(texture)})
    with pytest.raises(SystemExit, match="Labels.txt does not list Class8/Train/1154.PNG"):
        dagm8.convert(unlisted, tmp_path / "out2", split_file(tmp_path, "dagm8", split))
    other = git_repo(tmp_path / "other", {"Class1/Train/0001.PNG": png(texture)})
    with pytest.raises(SystemExit, match="not a git copy of nyraa/anomaly-detection-using-autoencoder"):
        dagm8.convert(other, tmp_path / "out2", split_file(tmp_path, "dagm8", split))
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("module, n_images", [(aitex, 247), (mpdd, 151), (dagm8, 2300)])
def test_the_committed_split_files_are_well_formed(module, n_images):
    split = json.loads(module.SPLIT_FILE.read_text())
    assert sorted(split) == ["test", "train", "val"]
    paths = [r for v in split.values() for r in v]
    assert len(paths) == len(set(paths)) == n_images
    for rel in paths:
        parts = rel.split("/")
        assert not rel.startswith("/") and ".." not in parts and "\\" not in rel
        assert (parts[0] == "good" and len(parts) == 2) or (parts[0] == "defect" and len(parts) == 3), rel
    for name in ("train", "val", "test"):  # both classes in every split, as the trainer needs
        assert {r.split("/")[0] for r in split[name]} == {"good", "defect"}
    assert module.make_split(paths) == split  # the committed file is what the documented rule gives
