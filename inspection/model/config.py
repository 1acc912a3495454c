"""Typed configuration loaded from YAML, with command-line overrides and errors that name the field.

    >>> cfg = load_config("configs/default.yaml", overrides=["train.epochs=3", "model.backbone=tiny"])
    >>> cfg.train.w_normal
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from inspection.core.boxes import LEVELS, BoxRule
from inspection.core.errors import UserError
from inspection.core.settings import read_settings


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Section):
    hflip: bool = True
    vflip: bool = True
    rotate_deg: float = Field(5.0, ge=0, le=180)
    shift: float = Field(0.03, ge=0, le=0.5, description="max shift as a fraction of the image side")
    brightness: float = Field(0.15, ge=0, le=1)
    contrast: float = Field(0.15, ge=0, le=1)


class SplitConfig(_Section):
    train: float = Field(0.6, gt=0, lt=1)
    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class DataConfig(_Section):
    root: str = "data/synthetic"
    image_size: Union[Literal["auto"], tuple[int, int]] = "auto"
    max_pixels: int = Field(40960, ge=1024, description="image_size auto: input pixels (height x width) at most")
    retry_below: float = Field(0.95, ge=0, le=1, description="image_size auto: when the best validation AUROC "
                               "stays under this, train again at the next retry_max_pixels (0 = never)")
    retry_max_pixels: list[int] = Field([65536, 147456], description="image_size auto: the caps of the trainings "
                                        "after the first, in order; the next only while the last one gained")

    @field_validator("retry_max_pixels", mode="before")
    @classmethod
    def _one_or_more_caps(cls, v):
        caps = [v] if isinstance(v, int) else v  # one number: the form of earlier releases
        if not isinstance(caps, list) or not all(isinstance(c, int) and c >= 1024 for c in caps):
            raise ValueError(f"expected a number of pixels of at least 1024, or a list of them; got {v!r}")
        return caps
    roi: Optional[tuple[int, int, int, int]] = Field(None, description="crop (x, y, w, h) in original pixels")
    label_mode: Literal["per_type", "binary"] = "per_type"
    split: SplitConfig = SplitConfig()
    split_file: Optional[str] = None
    seed: int = 0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    augment: AugmentConfig = AugmentConfig()
    cache: bool = True

    @field_validator("image_size")
    @classmethod
    def _size_ok(cls, v):
        if v == "auto":
            return v
        if min(v) < 32 or max(v) > 2048 or v[0] % 32 or v[1] % 32:
            raise ValueError(f"expected 'auto' or [height, width], multiples of 32 between 32 and 2048, got {list(v)}")
        return v

    @field_validator("roi")
    @classmethod
    def _roi_ok(cls, v):
        if v is not None and (v[0] < 0 or v[1] < 0 or v[2] <= 0 or v[3] <= 0):
            raise ValueError(f"expected [x, y, width, height] with x, y >= 0 and width, height > 0, got {list(v)}")
        return v


class ModelConfig(_Section):
    backbone: Literal["efficientnet_lite0", "resnet18", "resnet34", "tiny"] = "efficientnet_lite0"
    pretrained: bool = True
    weights: Optional[str] = Field(None, description="local state-dict file for torchvision backbones")
    attention_stride: Literal[4, 8, 16] = 8
    map_stride: Optional[Literal[2, 4, 8, 16]] = Field(
        None, description="stride of the attention map: finer than attention_stride through a light decoder on "
                          "the backbone's early features; null = attention_stride (no decoder)")
    residual: float = Field(0.3, ge=0, le=1, description="synthesis G = F*A + residual*F (true = 1: ABN's form)")
    att_pool: Literal["avg", "max"] = Field("max", description="pooling of the attention branch's class evidence")
    map_score: float = Field(0.5, ge=0, le=1, description="weight of the map's own defect probability (its top-k "
                                                           "mean) in the defect score; 0 = perception branch alone")
    attention_head: Literal["stage", "conv", "evidence", "bn"] = Field(
        "stage", description="map head: 1x1 conv with bias on the branch's conv stage or on its class-channel "
                             "bottleneck, the defect log-odds of the class evidence, or conv + BN")


class TrainConfig(_Section):
    out_dir: str = "runs/model"
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(16, ge=2)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0)
    backbone_lr_scale: float = Field(0.2, gt=0, le=1, description="lr multiplier of pretrained layers")
    map_lr_scale: float = Field(10.0, gt=0, description="lr multiplier of the 1-channel attention-map head")
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "none"] = "cosine"
    warmup_epochs: int = Field(1, ge=0)
    w_normal: float = Field(3.0, ge=0)
    strict: bool = Field(False, description="patent variant: classification loss on defect images only")
    w_defect: float = Field(1.0, ge=0, description="weight of L_defect (top-k attention as the defect probability)")
    defect_topk: float = Field(0.02, gt=0, le=1, description="share of map cells in L_defect's top-k mean")
    defect_on_good: bool = Field(True, description="L_defect also asks the top-k to be low on good images")
    defect_pool: Literal["topk", "region"] = Field(
        "topk", description="L_defect's reading of the map: topk (mean of the top-k cells) | region (mean of the "
        "cells at or above 0.5, at most k; the top-k where none is)")
    w_spread: float = Field(0.0, ge=0, description="weight of L_spread (on defective images, the mean map "
                            "outside its top-k cells); 0 = off")
    spread_cells: Literal["all", "cold", "joined"] = Field(
        "all", description="cells L_spread pulls down: all (every cell outside the top-k) | cold (those under 0.5 "
        "only: a region the map calls a defect keeps its size) | joined (also the hot regions holding no top-k cell)")
    gamma_map: float = Field(1.0, ge=0, description="weight of L_map for images with a map target")
    map_loss: Literal["balanced", "l2"] = Field(
        "balanced", description="L_map's form: balanced (hot and other cells weigh half each) | l2 (plain mean)")
    map_target: Literal["touched", "share"] = Field(
        "touched", description="L_map's target per map cell: touched (1 wherever a defect touches the cell) | "
        "share (from 0.6 for a sliver up to 1 for a covered cell: the map's 0.5 level near the defect's edge)")
    mask_supervision: int = Field(0, ge=0, description="masked defect training images used as L_map targets")
    synthetic_defects: float = Field(0.3, ge=0, le=1, description="share of good training images given pasted "
                                     "synthetic defects whose shapes serve as L_map targets (0 = off)")
    paste_shapes: list[Literal["blob", "stroke", "diffuse", "cluster"]] = Field(
        ["blob"], min_length=1, description="shapes of the pasted defects, each paste drawn among them: blob "
        "(ellipse), stroke (thin bent line), diffuse (large soft region), cluster (small pits close together)")
    freeze_features: bool = False
    early_stopping: int = Field(0, ge=0, description="stop after this many epochs without val gain; 0 = off")
    steps_per_epoch: Optional[int] = Field(None, ge=1)
    seed: int = 0
    amp: Literal["auto", "on", "off"] = "auto"
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = all cores")


def _level(name: str):
    """A box-rule level's setting: its bounds and words come from the rule itself (inspection/core/boxes.LEVELS).
    The threshold defaults to the untuned rule's level (null: calibrate it on validation); the others to null,
    which means the default rule's value (BoxRule(): some levels are on by default, the rest off)."""
    level = LEVELS[name]
    bounds = {"ge": level.low, ("lt" if level.high_open else "le"): level.high}
    if level.calibrated:
        return Field(getattr(BoxRule(), name), **bounds,
                     description=f"{level.words}; null = calibrate on validation")
    return Field(None, **bounds, description=f"{level.words}; null = the default rule's value")


class BoxConfig(_Section):
    threshold: Optional[float] = _level("threshold")
    low: Optional[float] = _level("low")
    relative: Optional[float] = _level("relative")
    refine: Optional[float] = _level("refine")
    merge: Optional[float] = _level("merge")
    peak_share: Optional[float] = _level("peak_share")
    area_share: Optional[float] = _level("area_share")
    novelty: Optional[float] = _level("novelty")
    grow: Optional[float] = _level("grow")
    min_area: int = Field(BoxRule().min_area, ge=0, description="minimum component area in original pixels")
    score: Literal["peak", "mean"] = "peak"


class EvalConfig(_Section):
    threshold_mode: Literal["max_f1", "false_reject", "miss"] = "max_f1"
    target_false_reject: float = Field(0.01, ge=0, lt=1)
    target_miss: float = Field(0.0, ge=0, lt=1, description="for threshold_mode miss: allowed share of defects missed")
    review_band: float = Field(0.1, ge=0, lt=1, description="scores within this of the threshold go to review")
    boxes: BoxConfig = BoxConfig()
    overlays: int = Field(16, ge=0)
    gradcam_layer: Literal["last", "features"] = Field(
        "last", description="Grad-CAM of the CNN baseline on its last conv block or on the branch-point features")


class Config(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        got = "" if e["type"] == "extra_forbidden" else f" (got {e.get('input')!r})"
        lines.append(f"  {field}: {msg}{got}")
    return "\n".join(lines)


def config_from_dict(tree: dict, source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (or defaults if path is None) and apply `section.key=value` overrides (YAML values)."""
    tree, source = read_settings(path, overrides, ConfigError, "config")
    return config_from_dict(tree, source)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
