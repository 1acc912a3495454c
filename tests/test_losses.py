import torch

from inspection.losses import abn_loss, map_loss, normal_loss
from inspection.model import ABNOutput


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
