import pytest
import torch

from inspection.model.abn import build_model
from inspection.model.backbones import (
    EfficientNetLite0,
    build_trunk,
    efficientnet_lite0_weights_path,
    load_lite0_weights,
)
from inspection.model.config import ModelConfig


def test_pretrained_lite0_uses_every_weight():
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    net = EfficientNetLite0()
    report = load_lite0_weights(net, efficientnet_lite0_weights_path())
    ours = net.state_dict()
    assert set(report["dropped"]) == {"_fc.weight", "_fc.bias"}  # the ImageNet classifier only
    assert report["loaded"] == len(state) - 2 == len(ours)
    for key, value in state.items():
        if not key.startswith("_fc."):
            assert torch.equal(ours[key], value), key


def test_pretrained_weights_reach_the_abn_model():
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model = build_model(ModelConfig(backbone="efficientnet_lite0", pretrained=True, attention_stride=8), 2)
    assert torch.equal(model.features[0].weight, state["_conv_stem.weight"])
    assert torch.equal(model.perception[-3].weight, state["_conv_head.weight"])  # head conv after the split
    stem_bn = model.features[1]
    assert torch.equal(stem_bn.running_var, state["_bn0.running_var"])


def test_lite0_pretrained_features_are_imagenet_like():
    """The loaded net separates two very different images far better than a random one (weights are live)."""
    torch.manual_seed(0)
    trunk = build_trunk("efficientnet_lite0", 16, pretrained=True)
    rand = build_trunk("efficientnet_lite0", 16, pretrained=False)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        f = trunk.perception(trunk.features(x)).mean(dim=(2, 3))
        g = rand.perception(rand.features(x)).mean(dim=(2, 3))
    assert torch.isfinite(f).all() and f.abs().mean() > 1e-3
    assert not torch.allclose(f, g)


def test_lite0_split_points():
    for stride, channels, side in [(4, 24, 32), (8, 40, 16), (16, 112, 8)]:
        trunk = build_trunk("efficientnet_lite0", stride, pretrained=False)
        f = trunk.features(torch.zeros(1, 3, 128, 128))
        assert f.shape == (1, channels, side, side) and trunk.feature_channels == channels
        assert trunk.perception(f).shape[1] == 1280


def test_resnet_weights_from_local_file(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    trunk = build_trunk("resnet18", 16, weights=str(path))
    assert torch.equal(trunk.features[0].weight, ref.conv1.weight)
    torch.save({"bogus.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="does not fit resnet18"):
        build_trunk("resnet18", 16, weights=str(tmp_path / "bad.pth"))
    with pytest.raises(RuntimeError, match="model.weights"):
        build_trunk("resnet18", 16, weights=str(tmp_path / "missing.pth"))
