import math

import numpy as np
import pytest
import torch

from inspection.model.abn import ABNOutput
from inspection.model.losses import (
    abn_loss,
    defect_loss,
    map_loss,
    normal_loss,
    resize_target,
    spread_loss,
)


def _out(batch=4, k=3, hw=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ABNOutput(torch.randn(batch, k, generator=g, requires_grad=True),
                     torch.randn(batch, k, generator=g, requires_grad=True),
                     torch.rand(batch, hw, hw, generator=g, requires_grad=True))


def test_normal_loss_is_mean_attention_of_normal_images():
    out = _out()
    labels = torch.tensor([0, 1, 0, 2])
    expected = (out.attention[0].mean() + out.attention[2].mean()) / 2
    assert torch.allclose(normal_loss(out.attention, labels == 0), expected)
    _, terms = abn_loss(out, labels, good_index=0, w_normal=1.0)
    assert abs(terms["normal"] - expected.item()) < 1e-6


def test_normal_loss_ignores_defect_images_and_empty_batches():
    out = _out()
    labels = torch.tensor([1, 1, 2, 2])
    assert normal_loss(out.attention, labels == 0).item() == 0.0
    l1, _ = abn_loss(out, labels, 0, w_normal=1.0)
    out.attention.data[:] = 1.0  # defect attention does not enter L_normal
    l2, _ = abn_loss(out, labels, 0, w_normal=1.0)
    assert torch.allclose(l1, l2)


def test_total_is_sum_of_terms_and_w_normal_zero_removes_normal_term():
    out = _out()
    labels = torch.tensor([0, 1, 0, 2])
    total, t = abn_loss(out, labels, 0, w_normal=2.5)
    assert abs(total.item() - (t["classify"] + t["att"] + 2.5 * t["normal"])) < 1e-5
    total0, t0 = abn_loss(out, labels, 0, w_normal=0.0)
    assert abs(total0.item() - (t0["classify"] + t0["att"])) < 1e-5
    total0.backward()
    # with W_normal = 0 the attention map of normal images gets no gradient at all
    assert out.attention.grad is None or float(out.attention.grad.abs().sum()) == 0.0


def test_strict_variant_classifies_defect_images_only():
    out = _out()
    labels = torch.tensor([0, 1, 0, 2])
    _, strict = abn_loss(out, labels, 0, w_normal=1.0, strict=True)
    expected = torch.nn.functional.cross_entropy(out.logits[[1, 3]], labels[[1, 3]])
    assert abs(strict["classify"] - expected.item()) < 1e-6
    _, loose = abn_loss(out, labels, 0, w_normal=1.0, strict=False)
    assert abs(loose["classify"] - strict["classify"]) > 1e-4


def test_map_loss_on_images_with_targets_only():
    att = torch.full((3, 4, 4), 0.5)
    target = torch.zeros(3, 8, 8)
    target[1] = 1.0
    has = torch.tensor([False, True, False])
    assert abs(map_loss(att, target, has).item() - 0.25) < 1e-6  # (0.5 - 1)^2, target resized to 4x4
    assert map_loss(att, target, torch.zeros(3, dtype=torch.bool)).item() == 0.0
    out = ABNOutput(torch.randn(3, 2), torch.randn(3, 2), att)
    _, t = abn_loss(out, torch.tensor([0, 1, 0]), 0, 1.0, target_maps=target, has_target=has, gamma_map=2.0)
    assert abs(t["map"] - 0.25) < 1e-6 and abs(t["total"] - (t["classify"] + t["att"] + t["normal"] + 0.5)) < 1e-5


def test_a_correction_on_one_percent_of_the_cells_weighs_fifty_times_more_in_the_balanced_map_loss():
    att = torch.full((1, 10, 10), 0.1, requires_grad=True)
    target = torch.full((1, 10, 10), 0.1)
    target[0, 4, 7] = 1.0                                  # the operator painted one cell of 100
    has = torch.tensor([True])
    grads = {}
    for form in ("l2", "balanced"):
        att.grad = None
        map_loss(att, target, has, form).backward()
        grads[form] = att.grad[0].clone()
    painted = grads["balanced"][4, 7] / grads["l2"][4, 7]
    assert abs(painted - 1 / (2 * 0.01)) < 1e-3            # 50x where the correction is
    att2 = att.detach().clone()
    att2[0, 0, 0] = 0.3                                     # an untouched cell off its target
    for form in ("l2", "balanced"):
        a = att2.clone().requires_grad_(True)
        map_loss(a, target, has, form).backward()
        grads[form] = a.grad[0, 0, 0]
    assert abs(grads["balanced"] / grads["l2"] - 1 / (2 * 0.99)) < 1e-3  # about half on the other cells


def test_an_erased_hot_spot_counts_as_hot_in_the_balanced_map_loss():
    att = torch.full((1, 10, 10), 0.05)
    att[0, 2, 2] = 0.9                                      # the map is hot here, the operator erased it
    target = torch.zeros(1, 10, 10)
    has = torch.tensor([True])
    l2, balanced = map_loss(att, target, has, "l2").item(), map_loss(att, target, has, "balanced").item()
    assert abs(l2 - (0.81 + 99 * 0.0025) / 100) < 1e-6
    assert abs(balanced - (0.5 * 0.81 + 0.5 * 0.0025)) < 1e-6
    flat = torch.full((1, 10, 10), 0.05)                    # nothing hot anywhere: the plain mean
    assert abs(map_loss(flat, target, has, "balanced").item() - 0.0025) < 1e-7
    with pytest.raises(ValueError, match="balanced"):
        map_loss(att, target, has, "dice")


def test_defect_loss_is_cross_entropy_of_the_top_k_mean():
    att = torch.full((3, 10, 10), 0.01)
    att[1, 2, 3], att[1, 5, 5] = 0.9, 0.5      # defect image: two high cells
    att[2, 0, :] = 0.8                          # a good image with a bright row
    is_defect = torch.tensor([False, True, False])
    # k = 2 of 100 cells: defect image -log(0.7); good images -log(1 - 0.01) and -log(1 - 0.8)
    expected = -(math.log(0.7) + math.log(0.99) + math.log(0.2)) / 3
    assert defect_loss(att, is_defect, topk=0.02).item() == pytest.approx(expected, rel=1e-5)
    assert defect_loss(att, is_defect, topk=0.02, on_good=False).item() == pytest.approx(-math.log(0.7), rel=1e-5)
    assert defect_loss(att, is_defect, topk=0.01, on_good=False).item() == pytest.approx(-math.log(0.9), rel=1e-5)
    assert defect_loss(att, is_defect, topk=0.001, on_good=False).item() == pytest.approx(-math.log(0.9), rel=1e-5)
    assert defect_loss(att, torch.zeros(3, dtype=torch.bool), on_good=False).item() == 0.0


def test_defect_loss_pulls_a_dark_map_up_where_it_peaks():
    logits = torch.full((1, 6, 6), -6.0)        # sigmoid ~0.0025 everywhere, as after L_normal alone
    logits[0, 2, 3] = -5.0
    logits.requires_grad_(True)
    defect_loss(torch.sigmoid(logits), torch.tensor([True]), topk=1 / 36).backward()  # a defect image
    g = logits.grad[0]
    assert g[2, 3] < -0.9                       # about -(1 - A): the log keeps the pull where A is ~0
    assert float(g.abs().sum() - g[2, 3].abs()) == 0.0   # only the top cell is pulled
    out = _out()
    labels = torch.tensor([0, 1, 0, 2])
    total, t = abn_loss(out, labels, 0, w_normal=1.0, w_defect=0.5, defect_topk=0.04)
    assert t["defect"] == pytest.approx(defect_loss(out.attention, labels != 0, 0.04).item())
    assert total.item() == pytest.approx(t["classify"] + t["att"] + t["normal"] + 0.5 * t["defect"], abs=1e-5)


def test_region_pooled_defect_loss_pushes_only_the_hot_cells_and_asks_no_number_of_them():
    logits = torch.full((2, 10, 10), -3.0)      # k = 8 of 100 cells
    logits[0, 4, 4:6] = 2.0                     # a defect image: a two-cell hot region
    logits[1, 0, 0] = 1.0                       # a good image: one hot corner
    logits[1, 9, 9] = 0.0                       # exactly 0.5 counts as hot
    logits.requires_grad_(True)
    att = torch.sigmoid(logits)
    is_defect = torch.tensor([True, False])
    hot, cold = torch.sigmoid(torch.tensor(2.0)).item(), torch.sigmoid(torch.tensor(-3.0)).item()
    good = (torch.sigmoid(torch.tensor(1.0)).item() + 0.5) / 2
    expected = -(math.log(hot) + math.log(1 - good)) / 2   # the regions' means, not diluted by cold cells
    assert defect_loss(att, is_defect, topk=0.08, pool="region").item() == pytest.approx(expected, rel=1e-5)
    topk = -(math.log((2 * hot + 6 * cold) / 8) + math.log(1 - (0.731 + 0.5 + 6 * cold) / 8)) / 2
    assert defect_loss(att, is_defect, topk=0.08).item() == pytest.approx(topk, rel=1e-3)
    defect_loss(att, is_defect, topk=0.08, pool="region").backward()
    moved = logits.grad != 0
    assert moved[0].sum() == 2 and moved[0, 4, 4:6].all() and (logits.grad[0, 4, 4:6] < 0).all()  # pulled up
    assert moved[1].sum() == 2 and (logits.grad[1, 0, 0] > 0) and (logits.grad[1, 9, 9] > 0)      # pushed down
    dark = torch.full((1, 10, 10), 0.1)
    dark[0, 0, :3] = 0.4                        # nothing reaches 0.5: the top-k mean, as pool "topk"
    assert defect_loss(dark, torch.tensor([True]), 0.08, pool="region").item() == pytest.approx(
        defect_loss(dark, torch.tensor([True]), 0.08).item())
    with pytest.raises(ValueError, match="defect_pool"):
        defect_loss(att, is_defect, pool="max")
    out = _out()
    labels = torch.tensor([0, 1, 0, 2])
    _, t = abn_loss(out, labels, 0, w_normal=1.0, w_defect=1.0, defect_topk=0.2, defect_pool="region")
    assert t["defect"] == pytest.approx(defect_loss(out.attention, labels != 0, 0.2, pool="region").item())


def test_spread_loss_pulls_down_a_defective_maps_cells_outside_its_top_k_only():
    logits = torch.full((2, 10, 10), -2.0)      # k = 3 of 100 cells
    logits[0, 4, 3:6] = 2.0                     # a defect image: the defect's three cells ...
    logits[0, 0, :] = 0.0                       # ... and a lit border beyond them (10 cells at 0.5)
    logits[1, 0, 0] = 3.0                       # a good image: left to L_normal
    logits.requires_grad_(True)
    att = torch.sigmoid(logits)
    cold = torch.sigmoid(torch.tensor(-2.0)).item()
    expected = (10 * 0.5 + 87 * cold) / 97      # the mean of the 97 cells outside the top 3
    loss = spread_loss(att, torch.tensor([True, False]), topk=0.03)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert (logits.grad[0, 4, 3:6] == 0).all()                      # the defect's cells are not pushed
    assert (logits.grad[0, 0] > 0).all() and (logits.grad[0, 9] > 0).all()   # everything else is
    assert (logits.grad[1] == 0).all()                               # good images: not this term
    assert spread_loss(att, torch.tensor([False, False])).item() == 0.0
    out = _out()
    labels = torch.tensor([0, 1, 0, 2])
    total, t = abn_loss(out, labels, 0, w_normal=1.0, w_defect=0.0, defect_topk=0.2, w_spread=2.0)
    assert t["spread"] == pytest.approx(spread_loss(out.attention, labels != 0, 0.2).item())
    assert total.item() == pytest.approx(t["classify"] + t["att"] + t["normal"] + 2.0 * t["spread"], abs=1e-5)
    assert abn_loss(out, labels, 0, w_normal=1.0, defect_topk=0.2)[1]["spread"] == 0.0   # off: not computed


def test_spread_loss_cold_leaves_a_hot_region_larger_than_k_alone_and_pulls_the_lukewarm_cells():
    logits = torch.full((1, 10, 10), -2.0)      # k = 3 of 100 cells
    logits[0, 2:6, 2:6] = 2.0                   # a large defect: 16 hot cells, far more than k
    logits[0, 8, 1:4] = -0.5                    # lukewarm cells (0.38) apart from it
    logits.requires_grad_(True)
    att = torch.sigmoid(logits)
    cold = torch.sigmoid(torch.tensor(-2.0)).item()
    luke = torch.sigmoid(torch.tensor(-0.5)).item()
    loss = spread_loss(att, torch.tensor([True]), topk=0.03, cells="cold")
    assert loss.item() == pytest.approx((3 * luke + 81 * cold) / 97, rel=1e-5)   # the hot cells add nothing
    loss.backward()
    assert (logits.grad[0, 2:6, 2:6] == 0).all()        # all 16 hot cells keep their level, not only the top 3
    assert (logits.grad[0, 8, 1:4] > 0).all() and (logits.grad[0, 0] > 0).all()   # the rest is pulled down
    assert spread_loss(att, torch.tensor([True]), topk=0.03).item() > loss.item()  # "all" pulls the 13 too
    with pytest.raises(ValueError, match="spread_cells"):
        spread_loss(att, torch.tensor([True]), cells="warm")
    out = _out()
    labels = torch.tensor([0, 1, 0, 2])
    _, t = abn_loss(out, labels, 0, w_normal=1.0, defect_topk=0.2, w_spread=1.0, spread_cells="cold")
    assert t["spread"] == pytest.approx(spread_loss(out.attention, labels != 0, 0.2, "cold").item())


def test_spread_loss_joined_keeps_the_top_cells_region_and_pulls_hot_regions_apart_from_it():
    logits = torch.full((1, 10, 10), -2.0)      # k = 3 of 100 cells
    logits[0, 2:6, 2:6] = 2.0                   # a large defect: 16 hot cells, far more than k
    logits[0, 2, 2] = 3.0                       # its peak
    logits[0, 8, 7:9] = 1.0                     # a hot region apart from it (0.73, under the 16's 0.88)
    logits.requires_grad_(True)
    att = torch.sigmoid(logits)
    loss = spread_loss(att, torch.tensor([True]), topk=0.03, cells="joined")
    rest = 82 * torch.sigmoid(torch.tensor(-2.0)).item() + 2 * torch.sigmoid(torch.tensor(1.0)).item()
    assert loss.item() == pytest.approx(rest / 97, rel=1e-5)
    loss.backward()
    assert (logits.grad[0, 2:6, 2:6] == 0).all()        # the top cells' region keeps every cell
    assert (logits.grad[0, 8, 7:9] > 0).all() and (logits.grad[0, 0] > 0).all()   # the region apart is pulled
    assert loss.item() > spread_loss(att, torch.tensor([True]), topk=0.03, cells="cold").item()
    two = torch.stack([att[0], att[0].flip(-1)])        # per image: each map's own top cells
    assert spread_loss(two, torch.tensor([True, True]), 0.03, "joined").item() == pytest.approx(loss.item(), rel=1e-5)


def test_targets_shrink_by_cell_maximum_so_thin_defects_mark_every_cell_they_touch():
    target = torch.zeros(1, 40, 40)
    target[0, 13, 5:30] = 1.0                   # a one-pixel crack across cells of 8x8 pixels
    small = resize_target(target, (5, 5))
    expected = torch.zeros(5, 5)
    expected[1, 0:4] = 1.0                      # row 13 is in cell row 1; columns 5..29 touch cell columns 0..3
    assert torch.equal(small[0], expected)
    assert resize_target(torch.ones(1, 2, 2), (4, 4)).shape == (1, 4, 4)  # growing: bilinear


def test_share_targets_grow_with_the_covered_share_so_the_maps_half_level_nears_the_defects_edge():
    target = torch.zeros(1, 40, 40)
    target[0, 13, 5:30] = 1.0                   # a one-pixel crack: every cell it touches, as a sliver
    target[0, 24:36, 24:36] = 1.0               # a 12x12 pit: one cell covered, two half, one a quarter
    small = resize_target(target, (5, 5), "share")[0]
    assert torch.allclose(small[1, 0:4], torch.full((4,), 0.6)) and small[1, 4] == 0
    assert small[3, 3] == 1.0 and small[3, 4] == pytest.approx(2 / 3) and small[4, 3] == pytest.approx(2 / 3)
    assert small[4, 4] == pytest.approx(0.6)    # 1 / (2 - 0.25) = 0.57, raised to the sliver's 0.6
    assert ((small > 0) == (resize_target(target, (5, 5))[0] > 0)).all()   # the same cells as "touched"
    inner = torch.zeros(1, 48, 48)
    inner[0, 24:36, 24:36] = 1.0                # the pit away from the border, 6x6 cells of 8 pixels
    for cells, last in (("share", 37), ("touched", 39)):
        up = torch.nn.functional.interpolate(resize_target(inner, (6, 6), cells)[None], size=(48, 48),
                                             mode="bilinear", align_corners=False)[0, 0]
        rows = (up >= 0.5).any(1).nonzero()[:, 0]
        assert (rows.min(), rows.max()) == (24, last)   # the pit is rows 24..35: "share" ends 2 pixels out, not 4
    soft = torch.full((1, 16, 16), 0.3)         # an operator's even, soft map keeps its level
    assert torch.allclose(resize_target(soft, (4, 4), "share"), torch.full((1, 4, 4), 0.3))
    with pytest.raises(ValueError, match="map_target"):
        resize_target(target, (5, 5), "area")


def test_shrinking_a_painted_map_keeps_thin_strokes_as_training_targets_do():
    from inspection.core.mapfile import shrink_map

    painted = np.zeros((61, 95), np.float32)
    painted[30, 10:80] = 1.0                                # a 1-px stroke
    small = shrink_map(painted, (8, 12))
    assert small.max() == 1.0 and (small == 1.0).sum() >= 8  # every cell it touches, at full strength
    rng = np.random.default_rng(0)
    a = rng.random((61, 95)).astype(np.float32)
    expected = resize_target(torch.from_numpy(a)[None], (8, 12))[0].numpy()   # torch's adaptive max pooling
    assert np.array_equal(shrink_map(a, (8, 12)), expected)
    assert shrink_map(a[:4, :5], (8, 12)).shape == (8, 12)  # growing: bilinear


def test_synthetic_images_train_the_map_through_their_pastes_only():
    out = _out()
    labels = torch.tensor([0, 1, 0, 2])
    synthetic = torch.tensor([False, False, True, False])  # image 2: a good part with pasted defects
    target = torch.zeros(4, 5, 5)
    target[2, 1:3, 1:3] = 1.0
    has = synthetic.clone()
    _, t = abn_loss(out, labels, 0, w_normal=1.0, w_defect=1.0, synthetic=synthetic, target_maps=target,
                    has_target=has, gamma_map=1.0)
    real = torch.tensor([0, 1, 3])
    assert abs(t["classify"] - torch.nn.functional.cross_entropy(out.logits[real], labels[real]).item()) < 1e-6
    assert abs(t["normal"] - out.attention[0].mean().item()) < 1e-6
    expected = defect_loss(out.attention[real], torch.tensor([False, True, True]))  # no top-k for the pastes
    assert abs(t["defect"] - expected.item()) < 1e-6
    assert abs(t["map"] - map_loss(out.attention, target, has).item()) < 1e-6
    _, strict = abn_loss(out, labels, 0, w_normal=1.0, strict=True, synthetic=synthetic)
    both = torch.tensor([1, 3])
    assert abs(strict["classify"] - torch.nn.functional.cross_entropy(out.logits[both], labels[both]).item()) < 1e-6
    _, none = abn_loss(out, labels, 0, w_normal=1.0, synthetic=torch.zeros(4, dtype=torch.bool))
    _, plain = abn_loss(out, labels, 0, w_normal=1.0)
    assert none == plain  # no synthetic image: the loss as before


def test_plain_abn_baseline_has_no_map_losses():
    from inspection.model.config import load_config
    from inspection.training.train import plain_abn

    cfg = load_config(None, ["train.synthetic_defects=0.3", "train.w_normal=3", "train.w_defect=1",
                             "train.w_spread=3"])
    plain = plain_abn(cfg).train
    assert (plain.w_normal, plain.w_defect, plain.w_spread, plain.synthetic_defects) == (0.0, 0.0, 0.0, 0.0)
    assert cfg.train.synthetic_defects == 0.3  # the config it came from is left as it was
