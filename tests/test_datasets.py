"""The dataset converters and the synthetic generator's multi-defect parts, on tiny hand-made inputs."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import git_repo

from inspection.datasets.bsdata import convert, group_of, labelme_mask
from inspection.datasets.synthetic import generate


def test_labelme_polygons_rectangles_and_circles_become_a_mask():
    label = {"shapes": [
        {"label": "Pitting", "shape_type": "polygon", "points": [[2, 2], [8, 2], [8, 6], [2, 6]]},
        {"label": "Pitting", "shape_type": "rectangle", "points": [[15, 8], [12, 10]]},
        {"label": "Pitting", "shape_type": "circle", "points": [[25, 5], [27, 5]]},
        {"label": "Pitting", "shape_type": "line", "points": [[0, 0], [5, 5]]},     # not an area: ignored
        {"label": "Pitting", "shape_type": "polygon", "points": [[1, 1], [3, 3]]},  # two points: ignored
    ]}
    mask = labelme_mask(label, (12, 30))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert mask[2:7, 2:9].all() and not mask[0, 0] and not mask[1, 1]
    assert mask[8:11, 12:16].all()
    assert mask[5, 25] and mask[5, 27] and not mask[5, 29]
    n, _ = cv2.connectedComponents(mask)
    assert n - 1 == 3


def test_images_of_one_spot_share_a_group():
    assert group_of("01_200828110014_277500_315_crop_2") == group_of("01_200905161814_277500_315_crop_1")
    assert group_of("01_200828110014_277500_315_crop_2") != group_of("01_200828110014_560000_000_crop_2")
    assert group_of("KGT1-S-060-A02_crop_0") == "KGT1-S-060-A02_crop_0"


def test_bsdata_converter_on_a_tiny_repository(tmp_path):
    jpg = lambda v: cv2.imencode(".jpg", np.full((20, 40, 3), v, np.uint8))[1].tobytes()  # noqa: E731
    files = {}
    spots = ["100000_000", "200000_090", "300000_180", "400000_270", "500000_315"]
    for k, spot in enumerate(spots):
        for t in range(3):  # three photos of each spot; the last one pitted
            stem = f"01_2009051{k}{t}000_{spot}_crop_2"
            files[f"data/{stem}.jpg"] = jpg(60 + 10 * t)
            if t == 2:
                files[f"label/{stem}.json"] = json.dumps({"imageHeight": 20, "imageWidth": 40, "shapes": [
                    {"label": "Pitting", "shape_type": "polygon", "points": [[5, 5], [12, 5], [12, 11], [5, 11]]},
                    {"label": "Pitting", "shape_type": "polygon", "points": [[25, 8], [30, 8], [30, 14]]}]}).encode()
    # a copy in a subfolder: not an image of the set
    files["data/BSD/test/01_200905100000_100000_000_crop_2.jpg"] = jpg(1)
    files["README.md"] = b"BSData"
    counts = convert(git_repo(tmp_path / "bsdata", files), tmp_path / "out")
    out = tmp_path / "out"
    split = json.loads((out / "split.json").read_text())
    assert sum(len(v) for v in split.values()) == 15
    assert counts == {"train": (6, 3), "val": (2, 1), "test": (2, 1)}  # 3 spots train, 1 val, 1 test
    for paths in split.values():  # a spot's images stay in one split
        assert len({group_of(p.split("/")[-1][:-4]) for p in paths}) == len(paths) // 3
    mask = cv2.imread(str(out / "masks" / "pitting" / "01_200905102000_100000_000_crop_2.png"), 0)
    assert mask.shape == (20, 40) and cv2.connectedComponents((mask > 0).astype(np.uint8))[0] - 1 == 2
    assert (out / "good" / "01_200905100000_100000_000_crop_2.jpg").exists()
    with pytest.raises(SystemExit, match="not a git copy"):
        convert(tmp_path / "nowhere", tmp_path / "out2")


def test_multi_defect_parts_carry_several_defects(tmp_path):
    generate(tmp_path / "multi", n_good=2, n_per_type=6, size=96, seed=0, defect_types=("hole",), multi_fraction=1.0)
    regions = [cv2.connectedComponents((cv2.imread(str(p), 0) > 0).astype(np.uint8))[0] - 1
               for p in sorted((tmp_path / "multi" / "masks" / "hole").glob("*.png"))]
    assert len(regions) == 6 and all(n >= 1 for n in regions) and sum(n >= 2 for n in regions) >= 4
    generate(tmp_path / "one", n_good=2, n_per_type=6, size=96, seed=0, defect_types=("hole",))
    single = [cv2.connectedComponents((cv2.imread(str(p), 0) > 0).astype(np.uint8))[0] - 1
              for p in sorted((tmp_path / "one" / "masks" / "hole").glob("*.png"))]
    assert single == [1] * 6
    with pytest.raises(ValueError, match="multi_fraction"):
        generate(tmp_path / "bad", n_good=2, n_per_type=2, multi_fraction=1.5)


def test_the_scripted_reviewer_erases_false_spots_and_overhang_and_paints_a_missed_crack():
    from inspection.training.scripted_reviewer import (
        BRUSH_SIZES,
        ERASE_MARGIN,
        correct_map,
    )

    att = np.full((100, 120), 0.05, np.float32)
    att[10:20, 90:110] = 0.9                  # a false hot spot far from any defect
    att[60:90, 20:50] = 0.8                   # a blob much larger than the pit inside it
    mask = np.zeros_like(att, bool)
    mask[72:77, 33:38] = True                 # the pit (5 px): hot already, its overhang must go
    mask[30:50, 60:63] = True                 # a thin crack (3 px) the map missed
    out, did = correct_map(att, mask)
    assert did["defects"] == 2 and did["missed"] == 1 and did["too_large"] == 1
    assert out[10:20, 90:110].max() == 0 and out[10 - ERASE_MARGIN + 1, 100] == 0   # spot and its foot erased
    assert out[72:77, 33:38].min() == 1.0                   # the pit, hot in a blob far too large, is painted ...
    assert out[62, 22] == 0 and out[88, 48] == 0           # ... and the overhang is erased ...
    assert 25 <= (out[60:90, 20:50] > 0.5).sum() < 80       # ... down to the pit and the brush's margin
    fits = att.copy()
    fits[60:90, 20:50] = 0.05
    fits[71:78, 32:39] = 0.8                                # a hot region about the pit's size: not painted,
    out2, did2 = correct_map(fits, mask)                    # its 1-px rim outside the pit erased
    assert did2["too_large"] == 0 and (out2[72:77, 33:38] == np.float32(0.8)).all() and out2[71, 32] == 0
    assert out[30:50, 60:63].min() == 1.0                   # the crack is painted at full strength
    d = BRUSH_SIZES[BRUSH_SIZES.index(4)]                   # the smallest brush at least 3-4 px wide
    painted_cols = np.flatnonzero(out[40] == 1.0)
    assert painted_cols.min() >= 60 - d and painted_cols.max() <= 62 + d   # a brush stroke, not the whole map
    assert out[0:5, 0:5].max() == np.float32(0.05)          # cold untouched cells are kept

    footed = att.copy()
    footed[5:25, 85:115] = 0.3                              # the false spot's visible foot (JET cyan) ...
    footed[10:20, 90:110] = 0.9
    footed[40, 0:60] = 0.3                                  # ... and a lukewarm line with no hot seed
    out3, _ = correct_map(footed, mask)
    assert out3[5:25, 85:115].max() == 0 and out3[40, 5] == np.float32(0.3)  # the foot goes, the line stays

    good, did = correct_map(att)                             # a false alarm: every hot region erased
    assert good.max() < 0.5 and did["painted"] == 0 and did["erased"] >= 20 * 10 + 30 * 30
