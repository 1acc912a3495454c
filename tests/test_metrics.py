import numpy as np
import pytest
import torch
import torchvision

from inspection.core.boxes import BoxRule
from inspection.training.metrics import (
    aupro,
    box_iou,
    box_metrics,
    calibrate_threshold,
    false_reject_at_miss,
    image_metrics,
    match_boxes,
    pixel_auroc,
)


def test_image_metrics_known_values():
    y = [0, 0, 0, 0, 1, 1]
    s = [0.1, 0.2, 0.3, 0.7, 0.6, 0.9]
    m = image_metrics(y, s, threshold=0.5)
    assert m["auroc"] == pytest.approx(7 / 8)  # one of 8 good/defect pairs is misordered
    assert m["false_reject"] == pytest.approx(0.25) and m["miss"] == 0.0
    assert m["precision"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(0.8)
    assert false_reject_at_miss(y, s, 0.0) == pytest.approx(0.25)


def test_threshold_calibration():
    y = np.array([0] * 100 + [1] * 10)
    s = np.concatenate([np.linspace(0, 0.5, 100), np.linspace(0.6, 1.0, 10)])
    assert calibrate_threshold(y, s, "max_f1") == pytest.approx(0.55)  # half-way between 0.5 (good) and 0.6
    # the best split flags the defects scored 0.7 and 0.9 and passes 0.2: the threshold lies half-way, not on 0.7
    assert calibrate_threshold([0, 0, 1, 1, 0], [0.1, 0.2, 0.7, 0.9, 0.2]) == pytest.approx(0.45)
    t = calibrate_threshold(y, s, "false_reject", 0.05)
    assert np.mean(s[y == 0] >= t) <= 0.05 and np.mean(s[y == 0] >= np.nextafter(t, 0) - 0.006) > 0.05
    # miss: flag every defect but the allowed share, half-way below the lowest one it must flag
    y2, s2 = [0, 0, 0, 1, 1, 1, 1], [0.1, 0.3, 0.5, 0.2, 0.6, 0.8, 0.9]
    assert calibrate_threshold(y2, s2, "miss", target_miss=0.0) == pytest.approx(0.15)  # catches 0.2 too
    assert calibrate_threshold(y2, s2, "miss", target_miss=0.25) == pytest.approx(0.55)  # may pass the 0.2 one
    with pytest.raises(ValueError, match="both good and defective"):
        calibrate_threshold([0, 0], [0.1, 0.2])


def test_box_iou_matches_torchvision():
    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 100, (7, 2, 2)), axis=1).transpose(0, 2, 1).reshape(7, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.uniform(0, 100, (5, 2, 2)), axis=1).transpose(0, 2, 1).reshape(5, 4)[:, [0, 2, 1, 3]]
    ref = torchvision.ops.box_iou(torch.tensor(a), torch.tensor(b)).numpy()
    assert np.allclose(box_iou(a, b), ref, atol=1e-9)


def test_box_matching_is_one_to_one():
    true = np.array([[0, 0, 10, 10]])
    pred = np.array([[0, 0, 10, 10], [1, 1, 10, 10]])
    assert match_boxes(pred, true, 0.5) == 1
    m = box_metrics([pred, np.zeros((1, 4)) + [50, 50, 60, 60]], [true, np.zeros((0, 4))], 0.5)
    assert (m["tp"], m["n_pred"], m["n_true"]) == (1, 3, 1)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == 1.0 and m["f1"] == pytest.approx(0.5)


def test_pixel_metrics():
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    good = np.zeros((20, 20), bool)
    perfect = [mask.astype(float), np.zeros((20, 20))]
    assert pixel_auroc(perfect, [mask, good]) == 1.0
    assert aupro(perfect, [mask, good]) == pytest.approx(1.0, abs=0.02)
    inverted = [1 - mask.astype(float), np.ones((20, 20))]
    assert pixel_auroc(inverted, [mask, good]) == 0.0
    assert aupro(inverted, [mask, good]) < 0.05
    rng = np.random.default_rng(0)
    noise = [rng.random((20, 20)) for _ in range(2)]
    assert 0.05 < aupro(noise, [mask, good]) < 0.3  # chance level: PRO ~ FPR, area ~ 0.15 of 0.3


def test_hit_rate_counts_regions_holding_the_peak_or_touched_by_a_box():
    from inspection.core.boxes import Box
    from inspection.training.metrics import hit_rate

    mask = np.zeros((40, 60), bool)
    mask[5:9, 5:20] = True      # region A
    mask[30:35, 40:50] = True   # region B
    up = np.zeros((20, 30), np.float32)  # the map over the ROI x=30, y=20 (30x20) of the frame
    up[12, 15] = 1.0            # peak at frame (x=45, y=32): inside B's box
    assert hit_rate([mask], [up], [(30, 20)], [[]]) == 0.5
    touching = Box(18, 8, 25, 12, 1.0, 10)  # overlaps A's pixels at x 18..19, y 8
    near = Box(20, 5, 25, 9, 1.0, 10)       # next to A, touching none of its pixels
    assert hit_rate([mask], [up], [(30, 20)], [[touching]]) == 1.0
    assert hit_rate([mask], [up], [(30, 20)], [[near]]) == 0.5
    assert hit_rate([mask], [np.roll(up, -10, axis=1)], [(30, 20)], [[]]) == 0.0  # peak moved off B


def test_missed_defects_are_sorted_by_cause():
    from inspection.core.boxes import Box
    from inspection.training.metrics import missed_by_cause

    mask = np.zeros((60, 100), bool)
    regions = {"found": (5, 5, 10, 10), "dark": (30, 5, 10, 10), "shared_a": (5, 40, 6, 6),
               "shared_b": (15, 40, 6, 6), "off": (60, 5, 6, 6), "dropped": (80, 40, 8, 8)}
    for x, y, w, h in regions.values():
        mask[y:y + h, x:x + w] = True
    up = np.full((60, 100), 0.9, np.float32)  # the map over the whole frame: hot on every region but one
    x, y, w, h = regions["dark"]
    up[y - 2:y + h + 2, x - 2:x + w + 2] = 0.3
    boxes = [Box(5, 5, 15, 15, 0.9, 100),    # exactly the first region
             Box(4, 39, 22, 47, 0.9, 100),   # one box over the two close regions
             Box(50, 0, 75, 25, 0.9, 300)]   # a box far larger than the region it touches
    out = missed_by_cause([mask], [up], [(0, 0)], [boxes], [True], threshold=0.8)
    assert out == {"n": 6, "found": 1, "passed": 0, "map dark": 1, "shared box": 2, "box off": 1, "no box": 1,
                   "box off, too large": 1, "box off, too small": 0,
                   "area ratio": 4.0}  # median of 1 (found), 144/36 twice (shared), 625/36 (off)
    small = np.zeros((60, 100), bool)
    small[10:30, 10:30] = True
    inside = missed_by_cause([small], [up], [(0, 0)], [[Box(12, 12, 17, 17, 0.9, 25)]], [True], threshold=0.8)
    assert inside["box off"] == inside["box off, too small"] == 1 and inside["box off, too large"] == 0
    assert inside["area ratio"] == 25 / 400
    assert all(type(v) is int for k, v in inside.items() if k != "area ratio")  # counts stay counts in JSON
    passed = missed_by_cause([mask], [up], [(0, 0)], [[]], [False], threshold=0.8)
    assert passed["passed"] == 6 and passed["found"] == 0
    assert missed_by_cause([np.zeros((60, 100), bool)], [up], [(0, 0)], [boxes], [True], 0.8)["n"] == 0


def test_box_recall_by_size_and_by_group():
    from inspection.training.metrics import box_recall_by, size_class

    assert [size_class(s) for s in (0.0005, 0.001, 0.005, 0.01, 0.2)] == ["tiny", "small", "small", "large", "large"]
    true = [np.array([[0, 0, 10, 10], [50, 50, 52, 52]]), np.array([[20, 20, 40, 40]])]
    pred = [np.array([[1, 1, 10, 10], [80, 80, 90, 90]]), np.zeros((0, 4))]
    groups = [["large", "tiny"], ["large"]]
    r = box_recall_by(pred, true, groups, 0.3)
    assert r == {"large": {"recall": 0.5, "found": 1, "n": 2}, "tiny": {"recall": 0.0, "found": 0, "n": 1}}
    # one predicted box cannot be counted for two true boxes
    two = box_recall_by([np.array([[0, 0, 10, 10]])], [np.array([[0, 0, 10, 10], [0, 0, 10, 9]])], [["a", "b"]], 0.3)
    assert two["a"]["found"] + two["b"]["found"] == 1


def _items(n_good: int, n_defect: int, hw=(32, 32)):
    from inspection.core.layout import Item

    return ([Item(f"good/{i}.png", "good", "", hw[1], hw[0]) for i in range(n_good)] +
            [Item(f"defect/d/{i}.png", "d", "", hw[1], hw[0]) for i in range(n_defect)])


def test_calibration_on_a_near_zero_map_keeps_the_threshold_on_the_probability_scale():
    """A map ~0 everywhere but a faint blob: quantiles of the map's values are all ~0, and a threshold among them
    boxes the whole part. The calibrated threshold stays among the rule's candidates, and neither it nor the
    default one is ever under the level the good parts' maps reach."""
    from inspection.core.boxes import LEVELS
    from inspection.model.config import load_config
    from inspection.training.evaluate import Predictions, calibrate_box_rule, good_level

    rng = np.random.default_rng(0)
    items = _items(6, 6)
    maps = (rng.random((12, 8, 8)) * 1e-6).astype(np.float32)
    truths = {i: np.zeros((32, 32), bool) for i in range(12)}
    for i in range(6, 12):
        maps[i, 2:4, 2:4] = 0.2          # a faint blob on the defect, far under 0.5
        truths[i][8:16, 8:16] = True
    pred = Predictions(np.linspace(0, 1, 12), np.zeros((12, 2)), maps)
    calibrate = load_config(None, ["eval.boxes.threshold=null"])
    rule = calibrate_box_rule(pred, items, truths, np.ones(12, bool), calibrate)
    assert rule.threshold in LEVELS["threshold"].candidates and rule.threshold >= 0.5
    # good parts whose maps reach 0.93 (a hot border on every part): no threshold under that level
    maps[:6, 0, :] = 0.93
    maps[6:, 2:4, 2:4] = 0.97
    pred = Predictions(np.linspace(0, 1, 12), np.zeros((12, 2)), maps)
    assert good_level(pred, items) == pytest.approx(0.93)
    rule = calibrate_box_rule(pred, items, truths, np.ones(12, bool), calibrate)
    assert rule.threshold >= 0.93
    assert calibrate_box_rule(pred, items, truths, np.ones(12, bool), load_config(None, [])).threshold >= 0.93
    # above every candidate: that level itself
    maps[:6, 0, :] = 0.995
    pred = Predictions(np.linspace(0, 1, 12), np.zeros((12, 2)), maps)
    rule = calibrate_box_rule(pred, items, truths, np.ones(12, bool), calibrate)
    assert rule.threshold == pytest.approx(0.995)


def test_a_baselines_own_rule_is_searched_over_its_whole_map_scale():
    """Grad-CAM's or plain ABN's map is not on our scale: a faint but right blob is boxed at the baseline's best
    threshold (search), where our fixed rule finds nothing."""
    from inspection.model.config import load_config
    from inspection.training.evaluate import Predictions, calibrate_box_rule

    items = _items(6, 6)
    maps = np.full((12, 8, 8), 0.1, np.float32)  # the whole surface at 0.1, good parts included
    truths = {i: np.zeros((32, 32), bool) for i in range(12)}
    for i in range(6, 12):
        maps[i, 2:4, 2:4] = 0.3
        truths[i][8:16, 8:16] = True
    pred = Predictions(np.linspace(0, 1, 12), np.zeros((12, 2)), maps)
    cfg = load_config(None, [])
    # our rule stays on its own scale (never under one half), where the faint blob is not boxed
    assert calibrate_box_rule(pred, items, truths, np.ones(12, bool), cfg).threshold >= 0.5
    best = calibrate_box_rule(pred, items, truths, np.ones(12, bool), cfg, search=True)
    assert 0.1 < best.threshold <= 0.3  # above the surface, at or under the blob
    # a map that saturates (plain ABN's, good parts near 1): its best level is at the top of the scale
    maps[maps == 0.1], maps[maps == 0.3] = 0.965, 0.995
    best = calibrate_box_rule(pred, items, truths, np.ones(12, bool), cfg, search=True)
    assert 0.965 < best.threshold <= 0.995


def test_the_novelty_distance_is_what_the_good_validation_cells_stay_within():
    from inspection.model.config import load_config
    from inspection.training.evaluate import (
        Predictions,
        calibrate_box_rule,
        novelty_distance,
    )

    items = _items(6, 6)
    rng = np.random.default_rng(0)
    maps = np.zeros((12, 8, 8), np.float32)
    far = rng.random((12, 8, 8)).astype(np.float32)
    far[6:] += 5  # defective parts' features lie farther: they must not move the level
    pred = Predictions(np.linspace(0, 1, 12), np.zeros((12, 2)), maps, far)
    assert novelty_distance(pred, items, 0.9) == pytest.approx(np.quantile(far[:6], 0.9))
    rule = calibrate_box_rule(pred, items, {}, np.ones(12, bool), load_config(None, ["eval.boxes.novelty=0.9"]))
    assert rule.novelty == 0.9 and rule.novelty_distance == pytest.approx(np.quantile(far[:6], 0.9))
    default = calibrate_box_rule(pred, items, {}, np.ones(12, bool), load_config(None, []))
    share = BoxRule().novelty
    assert default.novelty == share and default.novelty_distance == pytest.approx(np.quantile(far[:6], share))
    off = calibrate_box_rule(pred, items, {}, np.ones(12, bool), load_config(None, ["eval.boxes.novelty=0"]))
    assert off.novelty == 0 and off.novelty_distance == 0
    # a model without a feature bank, or no good validation parts: the level drops nothing
    assert novelty_distance(Predictions(pred.scores, pred.probs, maps), items, 0.9) == 0
    assert novelty_distance(pred, items[6:] * 2, 0.9) == 0


def test_a_defect_smaller_than_a_pixel_metric_cell_stays_in_the_truth():
    """A 7x8 px knot on a 4096x256 fabric image: on the metrics' grid (at least 32 px on the shorter side) its
    cell is a defect cell, so pixel AUROC is defined and sees the map's peak there."""
    from types import SimpleNamespace

    from inspection.training.evaluate import _pixel_pair
    from inspection.training.metrics import pixel_auroc

    item = SimpleNamespace(height=256, width=4096)
    mask = np.zeros((256, 4096), bool)
    mask[100:107, 2000:2008] = True
    up = np.zeros((256, 4096), np.float32)
    up[96:112, 1992:2016] = 0.9
    m, k = _pixel_pair(up, (0, 0), item, mask)
    assert m.shape == k.shape and min(k.shape) >= 32 and k.sum() >= 1
    assert pixel_auroc([m], [k]) > 0.99
