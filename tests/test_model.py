import pytest
import torch

from inspection.model.abn import ABN, Classifier, build_model
from inspection.model.config import ModelConfig
from inspection.model.losses import abn_loss


def _tiny(**kw):
    """The tiny ABN, its map at F's stride unless map_stride is given (the decoder has its own tests below)."""
    kw.setdefault("map_stride", None)
    return build_model(ModelConfig(backbone="tiny", pretrained=False, **kw), num_classes=3)


def _feature_grad(model, loss_fn):
    model.zero_grad()
    loss_fn(model(torch.randn(4, 3, 64, 64))).backward()
    return sum(float(p.grad.abs().sum()) for p in model.features.parameters() if p.grad is not None)


def test_forward_shapes_follow_attention_stride():
    for stride, side in [(4, 16), (8, 8), (16, 4)]:
        out = _tiny(attention_stride=stride)(torch.randn(2, 3, 64, 64))
        assert out.logits.shape == (2, 3) and out.att_logits.shape == (2, 3)
        assert out.attention.shape == (2, side, side)
        assert float(out.attention.detach().min()) >= 0 and float(out.attention.detach().max()) <= 1


def test_gradients_reach_backbone_through_both_branches():
    torch.manual_seed(0)
    model = _tiny()
    labels = torch.tensor([0, 1, 2, 0])
    ce = torch.nn.functional.cross_entropy
    # attention branch alone (L_att): perception weights untouched, backbone reached
    assert _feature_grad(model, lambda o: ce(o.att_logits, labels)) > 0
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.perception.parameters())
    # perception branch alone (L_classify): backbone reached through both F and A
    assert _feature_grad(model, lambda o: ce(o.logits, labels)) > 0
    assert sum(float(p.grad.abs().sum()) for p in model.attention_branch.parameters() if p.grad is not None) > 0
    # L_normal alone reaches the backbone through the map
    assert _feature_grad(model, lambda o: o.attention.mean()) > 0


def test_forward_with_attention_matches_own_map_and_changes_with_map():
    torch.manual_seed(0)
    model = _tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        same = model.forward_with_attention(x, out.attention)
        upsampled = torch.nn.functional.interpolate(out.attention[:, None], size=(32, 32), mode="nearest")[:, 0]
        resized = model.forward_with_attention(x, upsampled)  # any map size is resized to F
        zero = model.forward_with_attention(x, torch.zeros(2, 8, 8))
    assert torch.allclose(same, out.logits, atol=1e-5)
    assert resized.shape == out.logits.shape
    assert not torch.allclose(zero, out.logits, atol=1e-3)


def test_residual_choice():
    torch.manual_seed(0)
    plain = _tiny(residual=False).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        z = plain.forward_with_attention(x, torch.zeros(1, 8, 8))
        z2 = plain.forward_with_attention(torch.randn(1, 3, 64, 64), torch.zeros(1, 8, 8))
    assert torch.allclose(z, z2)  # F*0 erases the image: the perception sees nothing
    plain.residual = True
    with torch.no_grad():
        assert not torch.allclose(plain.forward_with_attention(x, torch.zeros(1, 8, 8)), z)


def test_cnn_baseline_and_bad_class_count():
    cnn = build_model(ModelConfig(backbone="tiny", pretrained=False), 3, kind="cnn")
    assert isinstance(cnn, Classifier) and cnn(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    assert isinstance(_tiny(), ABN)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model(ModelConfig(backbone="tiny", pretrained=False), 1)


def test_resnet_backbone_builds_and_trains_one_step():
    model = build_model(ModelConfig(backbone="resnet18", pretrained=False, attention_stride=16, map_stride=None), 2)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.attention.shape == (2, 4, 4)
    loss, _ = abn_loss(out, torch.tensor([0, 1]), 0, 1.0)
    loss.backward()


def test_attention_pooling_choice():
    torch.manual_seed(0)
    avg, mx = _tiny(att_pool="avg").eval(), _tiny(att_pool="max").eval()
    mx.load_state_dict(avg.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        evidence = avg.attention_branch.classify(avg.attention_branch.body(avg.features(x)))
        assert torch.allclose(avg(x).att_logits, evidence.mean(dim=(2, 3)), atol=1e-6)
        assert torch.allclose(mx(x).att_logits, evidence.amax(dim=(2, 3)), atol=1e-6)


def test_attention_branch_starts_from_the_next_pretrained_stage():
    from inspection.model.backbones import build_trunk

    trunk = build_trunk("efficientnet_lite0", 8, pretrained=True)
    model = ABN(trunk, 2)
    stage = model.attention_branch.body[0]
    assert torch.equal(stage[0]._expand_conv.weight, model.perception[0]._expand_conv.weight)
    assert stage[0]._depthwise_conv.stride == (1, 1) and model.perception[0]._depthwise_conv.stride == (2, 2)
    assert stage[0]._expand_conv.weight.data_ptr() != model.perception[0]._expand_conv.weight.data_ptr()


def test_attention_heads():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ev = _tiny(attention_head="evidence").eval()
        branch = ev.attention_branch
        evidence = branch.classify(branch.body(ev.features(x)))
        log_odds = torch.logsumexp(evidence[:, 1:], 1) - evidence[:, 0]
        assert torch.allclose(ev(x).attention, torch.sigmoid(log_odds), atol=1e-6)  # scale 1, bias 0 at start
        conv = _tiny(attention_head="conv").eval()
        h = conv.attention_branch.body(conv.features(x))
        assert torch.allclose(conv(x).attention, torch.sigmoid(conv.attention_branch.to_map(h))[:, 0], atol=1e-6)
        stage = _tiny(attention_head="stage").eval()
        body = stage.attention_branch.body
        before_bottleneck = body[1](body[0](stage.features(x)))  # the stage copy's own channels, not the K classes
        assert torch.allclose(stage(x).attention, torch.sigmoid(stage.attention_branch.to_map(before_bottleneck))[:, 0],
                              atol=1e-6)
        bn = _tiny(attention_head="bn").eval()
        assert isinstance(bn.attention_branch.to_map[1], torch.nn.BatchNorm2d)
    from inspection.model.backbones import build_trunk

    with pytest.raises(ValueError, match="attention_head"):
        ABN(build_trunk("tiny", 8, False), 3, head="softmax")


def test_checkpoints_written_before_a_setting_existed_keep_their_behaviour(tmp_path):
    from inspection.model.abn import load_checkpoint
    from inspection.model.config import Config

    cfg = Config(model=ModelConfig(backbone="tiny", pretrained=False, attention_head="bn"))
    model = build_model(cfg.model, 3)
    stored = cfg.model_dump(mode="json")
    del stored["model"]["attention_head"], stored["model"]["map_score"], stored["train"]["w_defect"]  # older
    torch.save({"kind": "abn", "config": stored, "classes": ["good", "a", "b"], "state_dict": model.state_dict()},
               tmp_path / "old.pt")
    loaded, loaded_cfg, _ = load_checkpoint(tmp_path / "old.pt")
    assert loaded_cfg.model.attention_head == "bn" and loaded_cfg.train.w_defect == 0.0
    assert loaded_cfg.model.map_score == 0.0 and loaded.map_score == 0.0  # its score stays 1 - p(good)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x).attention, model.eval()(x).attention)


def test_defect_score_blends_the_perception_branch_with_the_maps_top_k():
    model = _tiny(map_score=0.25)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    att = torch.zeros(2, 10, 10)
    att[1, 2, 3], att[1, 5, 5] = 0.9, 0.7  # top 2 % of 100 cells = the 2 highest: mean 0.8
    p = 1 - logits.softmax(1)[:, 0]
    assert torch.allclose(model.defect_score(logits, att), 0.75 * p + 0.25 * torch.tensor([0.0, 0.8]))
    assert torch.allclose(_tiny(map_score=0.0).defect_score(logits, att), p)  # perception alone
    with pytest.raises(ValueError):
        ModelConfig(map_score=1.5)


def test_a_corrected_map_counts_by_its_painted_region_not_diluted_by_cold_cells():
    """An operator's map (re-score): the mean of its cells >= 0.5, at most the top k; a map with none keeps the
    top-k mean, so an erased false alarm scores as the live map would."""
    model = build_model(ModelConfig(backbone="tiny", pretrained=False, map_score=0.5), 3, topk=0.1)  # k = 10
    logits = torch.zeros(4, 3)
    att = torch.full((4, 10, 10), 0.1)
    att[0, 4, 4] = 1.0                       # one painted cell: the region is that cell
    att[1, :3, :5] = 1.0                     # 15 painted cells: at most the top 10, all 1
    att[2, 0, :2], att[2, 9, 9] = 0.8, 0.3   # two cells over 0.5 (mean 0.8); 0.3 is no region
    att[3, 2, 2] = 0.4                       # erased: nothing reaches 0.5 -> top 10 mean
    live = model.defect_score(logits, att)
    got = model.defect_score(logits, att, corrected=True)
    term = torch.tensor([1.0, 1.0, 0.8, (0.4 + 9 * 0.1) / 10])
    p = 1 - logits.softmax(1)[:, 0]
    assert torch.allclose(got, 0.5 * p + 0.5 * term)
    assert got[0] > live[0] + 0.4  # the live top-k mean of the same map: (1 + 9 * 0.1) / 10
    assert torch.allclose(got[3], live[3])


@pytest.mark.parametrize("map_score, topk", [(0.5, 0.02), (0.25, 0.1), (0.0, 0.02)])
def test_the_score_formula_in_words_is_the_score_the_model_computes(map_score, topk):
    """The package states the score in words (score_formula); read those words back and recompute the score."""
    import re

    from inspection.model.abn import score_formula

    words = score_formula(map_score, topk)
    m = re.fullmatch(r"\(1 - ([\d.]+)\) \* \(1 - p\(good\)\) \+ ([\d.]+) \* "
                     r"mean of the map's top ([\d.]+) cells", words)
    assert m, words
    w, w2, k = (float(g) for g in m.groups())
    torch.manual_seed(1)
    model = build_model(ModelConfig(backbone="tiny", pretrained=False, map_score=map_score), 3, topk=topk)
    logits, att = torch.randn(4, 3), torch.rand(4, 12, 10)
    top = att.flatten(1).sort(1, descending=True).values[:, :max(1, round(k * 120))].mean(1)
    expected = (1 - w) * (1 - logits.softmax(1)[:, 0]) + w2 * top
    assert torch.allclose(model.defect_score(logits, att), expected)


@pytest.mark.parametrize("backbone, stride", [("tiny", 4), ("tiny", 2), ("efficientnet_lite0", 4),
                                              ("efficientnet_lite0", 2), ("resnet18", 4)])
def test_the_map_decoder_gives_a_finer_map_that_starts_as_the_coarse_one_upsampled(backbone, stride):
    torch.manual_seed(0)
    coarse = build_model(ModelConfig(backbone=backbone, pretrained=False, map_stride=None), 3).eval()
    fine = build_model(ModelConfig(backbone=backbone, pretrained=False, map_stride=stride), 3).eval()
    fine.load_state_dict(coarse.state_dict(), strict=False)  # the same network, plus a new decoder
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        a, b = coarse(x), fine(x)
    assert a.attention.shape == (2, 8, 12) and b.attention.shape == (2, 64 // stride, 96 // stride)
    # the decoder's heads start at zero: the fine map is the coarse one's logits upsampled
    logits = torch.logit(a.attention.clamp(1e-6, 1 - 1e-6))[:, None]
    for _ in range(8 // stride // 2):
        logits = torch.nn.functional.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(b.attention, torch.sigmoid(logits)[:, 0], atol=1e-4)
    # perception reads the fine map averaged over F's cells
    assert torch.allclose(b.logits, fine.perceive(b.features, b.attention))
    assert b.logits.shape == a.logits.shape and b.features.shape == a.features.shape


def test_the_map_decoder_learns_from_a_pixel_target_through_the_early_features():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tiny", pretrained=False, map_stride=2), 2)
    x = torch.randn(4, 3, 64, 64)
    target = torch.zeros(4, 32, 32)
    target[:, 10:12, 5:25] = 1  # a stroke two cells wide: thinner than a cell of the stride-8 map
    loss = ((model(x).attention - target) ** 2).mean()
    loss.backward()
    assert all(h.weight.grad.abs().sum() > 0 for h in model.decoder.heads)  # each step's head learns
    assert sum(float(p.grad.abs().sum()) for p in model.features[0].parameters()) > 0  # the early features too
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(60):
        opt.zero_grad()
        ((model(x).attention - target) ** 2).mean().backward()
        opt.step()
    att = model.eval()(x).attention.detach()
    assert att[:, 10:12, 5:25].mean() > 0.5 > att[:, 20:, :].mean()  # it can draw what a coarse map cannot


def test_a_map_stride_the_backbone_cannot_give_is_refused():
    with pytest.raises(ValueError, match="map_stride 16"):
        build_model(ModelConfig(backbone="tiny", pretrained=False, map_stride=16), 2)
    with pytest.raises(ValueError):
        ModelConfig(map_stride=3)
