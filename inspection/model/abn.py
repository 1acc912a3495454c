"""The Attention Branch Network of docs/method.md, and the plain-CNN baseline (pure nn.Modules, exportable).

    features  F = trunk.features(image)                                    (B, C, h, w)
    attention branch: S = BN(next backbone stage at stride 1 (F))          (B, C', h, w)
                      E = conv1x1(ReLU(BN(conv1x1(S))))                    K class-evidence maps
                      z_att = maxpool or GAP (E)
                      A = sigmoid(conv1x1(S) + b)                          (B, h, w) in [0, 1]
                          (model.attention_head: "stage", the default, as above; "conv": sigmoid(conv1x1(E));
                           "evidence": sigmoid(a · (logsumexp_k>0 E_k − E_good) + b), the defect log-odds of the
                           evidence; "bn": sigmoid(BN(conv1x1(E))), the ABN reference)
    synthesis G = F * A  (+ r · F, r = model.residual)
    perception z_per = FC(GAP(trunk.perception(G)))

    >>> model = build_model(cfg.model, num_classes=6)
    >>> logits, att_logits, attention, features = model(images)
    >>> logits = model.forward_with_attention(images, corrected_attention)
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from inspection.core.errors import UserError
from inspection.model.backbones import Trunk, build_trunk


class ABNOutput(NamedTuple):
    logits: torch.Tensor        # perception branch, (B, K)
    att_logits: torch.Tensor    # attention branch, (B, K)
    attention: torch.Tensor     # attention map A, (B, h, w) in [0, 1]
    features: torch.Tensor | None = None  # backbone features F, (B, C, h, w) (the feature bank's distances)


class AttentionBranch(nn.Module):
    """F → (K class logits via pooled class evidence, 1-channel sigmoid attention map).

    The body is a copy of the backbone's next stage run at stride 1 (as in the ABN reference), so the
    class-evidence maps are as deep as the perception branch's first stage and keep F's resolution.

    The map head: "stage" (the default) is a 1x1 conv with bias on the stage copy's C' channels, before the
    K-channel bottleneck, so the map can use every feature of the stage, not only what separates the classes.
    "evidence" reads A off the class evidence itself, as the defect log-odds at each place
    (logsumexp of the defect classes' evidence minus the good class's), through one learnt scale and bias;
    the map cannot stay flat while the evidence localizes, and its level means something in absolute terms
    (no BatchNorm re-centring it per batch). "conv" is a free 1x1 conv with bias; "bn" the ABN reference's
    1x1 conv → BN, whose per-batch re-centring lets L_normal move only the BN bias.
    """

    def __init__(self, stage: nn.Module, stage_channels: int, num_classes: int, pool: str = "max",
                 head: str = "evidence"):
        super().__init__()
        self.pool, self.head = pool, head
        self.body = nn.Sequential(
            stage, nn.BatchNorm2d(stage_channels),
            nn.Conv2d(stage_channels, num_classes, 1, bias=False), nn.BatchNorm2d(num_classes), nn.ReLU(inplace=True))
        self.classify = nn.Conv2d(num_classes, num_classes, 1)
        if head == "stage":
            self.to_map = nn.Conv2d(stage_channels, 1, 1)
        elif head == "evidence":
            self.to_map = nn.Conv2d(1, 1, 1)  # a · log-odds + b
            nn.init.ones_(self.to_map.weight)
            nn.init.zeros_(self.to_map.bias)
        elif head == "conv":
            self.to_map = nn.Conv2d(num_classes, 1, 1)
        elif head == "bn":
            self.to_map = nn.Sequential(nn.Conv2d(num_classes, 1, 1, bias=False), nn.BatchNorm2d(1))
        else:
            raise ValueError(f"model.attention_head: expected stage, conv, evidence or bn, got {head!r}")

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class logits (B, K), map logits before the sigmoid (B, 1, h, w), the stage copy's output S)."""
        stage = self.body[1](self.body[0](features))  # the stage copy, before the K-channel bottleneck
        h = self.body[4](self.body[3](self.body[2](stage)))
        evidence = self.classify(h)
        att_logits = evidence.amax(dim=(2, 3)) if self.pool == "max" else evidence.mean(dim=(2, 3))
        if self.head == "evidence":
            log_odds = torch.logsumexp(evidence[:, 1:], dim=1, keepdim=True) - evidence[:, :1]
            map_logits = self.to_map(log_odds)
        else:
            map_logits = self.to_map(stage if self.head == "stage" else h)
        return att_logits, map_logits, stage


class MapDecoder(nn.Module):
    """The map's logits brought from F's stride to a finer one, a factor of 2 per step, with the backbone's early
    features at each stride (a light U-Net step): up(logits) + head(conv(up(x) + skip)), where x starts as the
    attention branch's stage output. Each step's head starts at zero, so a new decoder begins as the coarse map
    upsampled, and learns where the early features say the defect's edge lies."""

    def __init__(self, stage_channels: int, taps: list[int], width: int = 32):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(stage_channels, width, 1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(inplace=True))
        self.skips = nn.ModuleList(nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width))
                                   for c in taps)
        self.mix = nn.ModuleList(nn.Sequential(  # depthwise 3x3 then pointwise: cheap at a fine stride
            nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False), nn.BatchNorm2d(width),
            nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)) for _ in taps)
        self.heads = nn.ModuleList(nn.Conv2d(width, 1, 1) for _ in taps)
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, logits: torch.Tensor, stage: torch.Tensor, early: list[torch.Tensor]) -> torch.Tensor:
        """(B, 1, h, w) logits, the stage output (B, C', h, w) and the early features, coarse to fine, each twice
        the size of the one before → (B, 1, H, W) logits at the finest stride."""
        x = self.reduce(stage)
        for skip, mix, head, e in zip(self.skips, self.mix, self.heads, early):
            size = e.shape[-2:]
            x = mix(F.interpolate(x, size=size, mode="bilinear", align_corners=False) + skip(e))
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False) + head(x)
        return logits


class ABN(nn.Module):
    def __init__(self, trunk: Trunk, num_classes: int, residual: float = 1.0, att_pool: str = "avg",
                 head: str = "bn", map_score: float = 0.0, topk: float = 0.02, map_stride: int | None = None):
        super().__init__()
        self.features = trunk.features
        self.attention_branch = AttentionBranch(trunk.attention_stage(), trunk.next_channels, num_classes, att_pool,
                                                head)
        self.perception = trunk.perception
        self.fc = nn.Linear(trunk.out_channels, num_classes)
        self.residual = float(residual)
        self.map_score, self.topk = float(map_score), float(topk)
        map_stride = trunk.stride if map_stride is None else int(map_stride)
        if map_stride > trunk.stride or (map_stride < trunk.stride and map_stride not in trunk.taps):
            raise ValueError(f"model.map_stride {map_stride}: expected the attention stride {trunk.stride} or one of "
                             f"the finer strides {sorted(trunk.taps)} of the backbone")
        steps = sorted((s for s in trunk.taps if map_stride <= s < trunk.stride), reverse=True)
        self.taps = [trunk.taps[s][0] for s in steps]  # indices in `features`, coarse to fine
        self.decoder = MapDecoder(trunk.next_channels, [trunk.taps[s][1] for s in steps]) if steps else None

    def backbone(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """F, and the early features the map decoder reads (coarse to fine)."""
        if self.decoder is None:
            return self.features(images), []
        early, x = {}, images
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.taps:
                early[i] = x
        return x, [early[i] for i in self.taps]

    def perceive(self, features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Perception logits from F and an attention map (B, h', w'): a finer map is averaged over each cell of
        F, a coarser one (an operator's correction at another size) upsampled."""
        a = attention[:, None]
        if a.shape[-2:] != features.shape[-2:]:
            a = (F.adaptive_avg_pool2d(a, features.shape[-2:]) if a.shape[-2] >= features.shape[-2]
                 else F.interpolate(a, size=features.shape[-2:], mode="bilinear", align_corners=False))
        g = features * a + self.residual * features if self.residual else features * a
        return self.fc(self.perception(g).mean(dim=(2, 3)))

    def defect_score(self, logits: torch.Tensor, attention: torch.Tensor, corrected: bool = False) -> torch.Tensor:
        """The part's defect score (score_formula in words): 1 − p(good) of the perception branch, blended (weight
        `map_score`) with the map's own defect probability, the mean of its top-k cells. Pass/fail then agrees
        with the map the boxes come from, and a corrected map moves the score through both terms; an operator's
        map (`corrected`) counts by the mean of its region at or above 0.5 (losses.region_probability)."""
        score = 1 - logits.softmax(1)[:, 0]
        if not self.map_score:
            return score
        from inspection.model.losses import map_probability, region_probability

        term = (region_probability if corrected else map_probability)(attention, self.topk)
        return (1 - self.map_score) * score + self.map_score * term

    def forward(self, images: torch.Tensor) -> ABNOutput:
        features, early = self.backbone(images)
        att_logits, map_logits, stage = self.attention_branch(features)
        if self.decoder is not None:
            map_logits = self.decoder(map_logits, stage, early)
        attention = torch.sigmoid(map_logits)[:, 0]
        return ABNOutput(self.perceive(features, attention), att_logits, attention, features)

    def forward_with_attention(self, images: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Perception logits with an external (e.g. operator-corrected) map (B, H', W'), brought to F."""
        return self.perceive(self.features(images), attention.clamp(0, 1))


def score_formula(map_score: float, topk: float) -> str:
    """ABN.defect_score in words, as the model package states it (tests/test_model.py recomputes the score from
    these words)."""
    return f"(1 - {map_score:g}) * (1 - p(good)) + {map_score:g} * mean of the map's top {topk:g} cells"


def rescore_formula(map_score: float, topk: float) -> str:
    """The re-score of an operator's corrected map (ABN.defect_score with corrected=True) in words."""
    return (f"(1 - {map_score:g}) * (1 - p(good)) + {map_score:g} * mean of the map's cells >= 0.5, at most its "
            f"top {topk:g} (the top {topk:g} where none reaches 0.5)")


class Classifier(nn.Module):
    """Plain CNN on the same trunk (the Grad-CAM baseline); `features` is the Grad-CAM layer."""

    def __init__(self, trunk: Trunk, num_classes: int):
        super().__init__()
        self.features = trunk.features
        self.perception = trunk.perception
        self.fc = nn.Linear(trunk.out_channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.perception(self.features(images)).mean(dim=(2, 3)))


def build_model(model_cfg, num_classes: int, kind: str = "abn", topk: float = 0.02) -> nn.Module:
    """Build an ABN (kind='abn') or the plain classifier (kind='cnn') from a ModelConfig; `topk`: the share of
    map cells in the map's defect probability (train.defect_topk)."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes (good and a defect), got {num_classes}")
    trunk = build_trunk(model_cfg.backbone, model_cfg.attention_stride, model_cfg.pretrained, model_cfg.weights)
    if kind == "cnn":
        return Classifier(trunk, num_classes)
    return ABN(trunk, num_classes, model_cfg.residual, model_cfg.att_pool, model_cfg.attention_head,
               model_cfg.map_score, topk, model_cfg.map_stride)


# What a checkpoint meant by a setting it does not name: the behaviour before that setting was added.
LEGACY = {"model": {"attention_head": "bn", "map_score": 0.0, "map_stride": None}, "train": {"w_defect": 0.0}}


class CheckpointError(UserError, ValueError):
    """A file that is not a usable checkpoint; the message names the file and the reason."""


def checkpoint_config(ckpt: dict, path):
    """The training config a checkpoint stores, with the behaviour of settings it predates (LEGACY)."""
    from inspection.model.config import config_from_dict

    stored = dict(ckpt["config"]) if isinstance(ckpt.get("config"), dict) else {}
    for section, values in LEGACY.items():  # checkpoints written before a setting existed keep their behaviour
        if isinstance(stored.get(section), dict):
            stored[section] = {**values, **stored[section]}
    return config_from_dict(stored, str(path))


def read_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint file's contents, unpickled with weights_only: tensors, numbers, text, lists and dicts only,
    so a file from someone else (a planted last.pt, a checkpoint handed over between sites) cannot run code;
    CheckpointError when it is missing, damaged or holds anything else."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable checkpoint (expected best.pt or last.pt written by "
                              "`inspection train`; the file is damaged, of another kind, or holds objects other "
                              "than weights and numbers, which are never loaded)") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not an inspection checkpoint (expected a dict, found {type(ckpt).__name__})")
    return ckpt


def load_checkpoint(path, map_location="cpu"):
    """Rebuild a model exactly from the config stored in its checkpoint; return (model, cfg, checkpoint)."""
    ckpt = read_checkpoint(path, map_location)
    if not {"kind", "config", "classes", "state_dict"} <= set(ckpt):
        raise CheckpointError(f"{path}: not an inspection checkpoint (expected kind, config, classes, state_dict)")
    cfg = checkpoint_config(ckpt, path)
    cfg.model.pretrained = False  # the weights come from the checkpoint
    model = build_model(cfg.model, len(ckpt["classes"]), ckpt["kind"], cfg.train.defect_topk)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: {exc}") from None
    bank = ckpt.get("novelty_bank")  # the good parts' features (inspection/core/novelty.py); None before it existed
    model.novelty_bank = None if bank is None else bank.float().numpy()
    return model.eval(), cfg, ckpt
