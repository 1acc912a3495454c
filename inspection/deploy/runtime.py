"""Torch-free inference on a model package: frames in, verdicts, scores and defect boxes out.

    >>> rt = Runtime("runs/model/package")     # best backend: TensorRT → ORT TensorRT → ORT CUDA → OpenVINO → ORT CPU
    >>> [r.verdict for r in rt.inspect([frame], color="BGR")]   # OpenCV frames are BGR
    ['fail']
    >>> rt.rescore(frame, corrected_attention)["defect_score"]

Imports only numpy, OpenCV, onnxruntime (or OpenVINO) and the torch-free helpers (`inspection.core.boxes`,
`inspection.core.preprocess`, `inspection.deploy.package`); a test proves it.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inspection.core import imageio
from inspection.core.boxes import Box, BoxRule, attention_to_boxes, full_roi
from inspection.core.decision import verdict
from inspection.core.errors import UserError
from inspection.core.imageio import ImageError
from inspection.core.mapfile import shrink_map
from inspection.core.novelty import distance_map, hot_cells
from inspection.core.preprocess import prepare, to_input
from inspection.deploy.package import PackageError, load_package

# tensorrt, openvino: their native APIs; ort-tensorrt, cuda, cpu: onnxruntime's providers
BACKENDS = ("auto", "tensorrt", "ort-tensorrt", "cuda", "openvino", "cpu")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # fp16: TensorRT; bf16: OpenVINO on CPUs with AMX or AVX-512 BF16


class FrameError(UserError, ValueError):
    """A frame the model cannot judge (wrong channels, dtype, size); the message says what was expected."""


@dataclass
class Inspection:
    """The runtime's judgement of one part."""

    verdict: str                     # pass | review | fail
    score: float                     # defect score: the package's outputs.defect_score says how it is made
    probs: dict[str, float]
    defect_type: str | None          # most probable defect class, None on pass
    boxes: list[Box]                 # in original frame pixels
    attention: np.ndarray = field(repr=False)  # (h, w) map in [0, 1]
    model_version: str = ""

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "score": self.score, "probs": self.probs, "defect_type": self.defect_type,
                "boxes": [b.to_dict() for b in self.boxes], "model_version": self.model_version}


def frame_to_rgb(frame: np.ndarray, color: str = "RGB", channels: str = "mixed") -> np.ndarray:
    """Camera frame (HxW, HxWx1/3/4; uint8, uint16 or float in [0, 1]) → HxWx3 float32 RGB in [0, 1].

    `channels` is what the model was trained on: a 1-channel frame for a color-trained model (or the reverse)
    is refused rather than judged wrongly.
    """
    return _as_rgb(_unit_float(frame, color, channels), color)


def _as_rgb(image: np.ndarray, color: str) -> np.ndarray:
    """A gray (H, W) or colour (H, W, 3) float image in `color` order → HxWx3 RGB."""
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., ::-1]) if color == "BGR" else image


def _unit_float(frame: np.ndarray, color: str, channels: str) -> np.ndarray:
    """frame_to_rgb's checks, then the frame as float32 in [0, 1]: gray (H, W), or colour in its own order."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"frame must be a numpy array, got {type(frame).__name__}")
    if color not in ("RGB", "BGR"):
        raise FrameError(f"color order must be 'RGB' or 'BGR', got {color!r}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if frame.ndim == 3 and frame.shape[2] == 4:
        frame = frame[..., :3]
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
        raise FrameError(f"frame must be HxW (gray) or HxWx3 (color), got shape {frame.shape}")
    if frame.shape[0] < 8 or frame.shape[1] < 8:
        raise FrameError(f"frame is {frame.shape[1]}x{frame.shape[0]} px, expected at least 8x8")
    gray = frame.ndim == 2
    if gray and channels == "color":
        raise FrameError("frame has 1 channel but the model was trained on color images; send color frames")
    if not gray and channels == "gray":
        raise FrameError("frame has 3 channels but the model was trained on gray images; set the camera to mono "
                         "or convert the frames to gray")
    if frame.dtype in (np.uint8, np.uint16):
        out = frame.astype(np.float32)
        out /= 255.0 if frame.dtype == np.uint8 else 65535.0  # in place: the same numbers, one pass less
    elif frame.dtype in (np.float32, np.float64):
        if not np.isfinite(frame).all() or frame.min() < 0 or frame.max() > 1:
            raise FrameError("float frames must hold finite values in [0, 1] (send uint8/uint16 for raw pixels)")
        out = frame.astype(np.float32)
    else:
        raise FrameError(f"frame dtype must be uint8, uint16 or float in [0, 1], got {frame.dtype}")
    return out


def read_frame(path: str | Path) -> np.ndarray:
    """Read an image file as the camera would deliver it (OpenCV, BGR or gray, 8/16-bit), checked before decoding
    (inspection/core/imageio.py); FrameError says why it cannot be judged."""
    try:
        return imageio.read_frame(path)
    except ImageError as exc:
        raise FrameError(str(exc)) from None


def gpu_name() -> str:
    """Name of the first NVIDIA GPU (for the engine cache key), or 'unknown-gpu'."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout.strip().splitlines()
        return out[0].strip() if out else "unknown-gpu"
    except (OSError, subprocess.SubprocessError):
        return "unknown-gpu"


def default_engine_cache() -> Path:
    """Where TensorRT engines are built and kept unless a cache is named: the runner user's own cache
    ($INSPECTION_ENGINE_CACHE, else $XDG_CACHE_HOME or ~/.cache, /inspection/engines), never inside a model
    package: an engine is code (plugins), and a package folder is written by whoever deploys models."""
    if os.environ.get("INSPECTION_ENGINE_CACHE"):
        return Path(os.environ["INSPECTION_ENGINE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "inspection" / "engines"


def engine_cache_dir(cache_root: Path) -> Path:
    """TensorRT engines are not portable: one cache folder per GPU model and TensorRT version (the engine's
    name adds the ONNX graph's hash). Made owner-only; a folder on the way that is a symlink is refused."""
    try:
        import tensorrt
        trt_version = tensorrt.__version__
    except ImportError:
        trt_version = "ort-bundled"
    key = f"{gpu_name()}-trt{trt_version}".replace(" ", "_").replace("/", "_")
    folder = Path(cache_root) / key
    for p in (Path(cache_root), folder):
        if p.is_symlink():
            raise PackageError(f"{p}: the engine cache is a symlink; engines are built only into a real folder")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def open_session(model_path: Path, backend: str = "cpu", precision: str = "fp32", threads: int = 0,
                 cache_root: Path | None = None):
    """An onnxruntime session on the requested provider; 'auto' takes the best one this install has."""
    import onnxruntime as ort

    if backend not in BACKENDS or backend in ("tensorrt", "openvino"):
        raise ValueError(f"onnxruntime backend must be auto, ort-tensorrt, cuda or cpu, got {backend!r}")
    if precision == "bf16":
        raise RuntimeError("precision bf16 needs OpenVINO (backend openvino, on a CPU with AMX or AVX-512 BF16)")
    available = ort.get_available_providers()
    trt_options = {"trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
                   "trt_timing_cache_enable": True}
    trt = any(p.startswith("Tensorrt") for p in available)
    if cache_root is not None and trt and backend in ("auto", "ort-tensorrt"):
        cache = engine_cache_dir(cache_root)
        trt_options["trt_engine_cache_path"] = str(cache)
        trt_options["trt_timing_cache_path"] = str(cache)
    wanted = {"ort-tensorrt": ("TensorrtExecutionProvider", trt_options), "cuda": "CUDAExecutionProvider",
              "cpu": "CPUExecutionProvider"}
    order = ["ort-tensorrt", "cuda", "cpu"] if backend == "auto" else [backend]
    providers = []
    for name in order:
        pname = wanted[name][0] if isinstance(wanted[name], tuple) else wanted[name]
        if pname in available:
            providers.append(wanted[name])
        elif backend != "auto":
            raise RuntimeError(f"backend {backend!r} needs onnxruntime's {pname}, which this install lacks "
                               f"(available: {', '.join(available)}); install onnxruntime-gpu")
    if providers[-1] != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")  # for nodes a GPU provider does not take
    if precision == "fp16" and not isinstance(providers[0], tuple):
        raise RuntimeError("precision fp16 needs TensorRT (backend tensorrt or ort-tensorrt, with a GPU)")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.log_severity_level = 3
    # no busy-waiting workers: on a small line PC they starve the capture and logging threads (measured on
    # 2 cores: runner throughput with failure logging 75-86 → 88-114 img/s, bare inference unchanged)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(model_path), opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise PackageError(f"{model_path}: onnxruntime cannot load it ({exc})") from None
    return session


def _active_backend(session) -> str:
    first = session.get_providers()[0]
    return {"TensorrtExecutionProvider": "ort-tensorrt", "CUDAExecutionProvider": "cuda",
            "TensorRT (native)": "tensorrt", "OpenVINO (native)": "openvino"}.get(first, "cpu")


def _gpu_providers() -> bool:
    """Whether this onnxruntime has a GPU provider (onnxruntime-gpu); auto then prefers it to OpenVINO."""
    import onnxruntime as ort

    return any(p in ort.get_available_providers() for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider"))


class Runtime:
    """A loaded model package: pre-processing, batched inference, boxes and the pass/review/fail decision."""

    def __init__(self, package: str | Path, backend: str = "auto", precision: str = "fp32", threads: int = 0,
                 max_batch: int = 32, cache_root: str | Path | None = None, check_aspect: bool = True):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.root = Path(package)
        self.meta = load_package(self.root)
        variant_name = "int8" if precision == "int8" else "fp32"  # fp16 and bf16 run the FP32 graph
        if variant_name not in self.meta["variants"]:
            raise PackageError(f"{self.root}: no {variant_name} model in this package "
                               f"(has: {', '.join(self.meta['variants'])}); export with --int8")
        self.variant = self.meta["variants"][variant_name]
        self.precision = precision
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        cache = Path(cache_root) if cache_root else default_engine_cache()  # never the package's own folder
        inp = self.meta["input"]
        self.session = None
        if backend == "tensorrt" or (backend == "auto" and precision != "bf16"):
            self.session = self._native_tensorrt(cache, max_batch, precision, required=backend == "tensorrt")
        if self.session is None and (backend == "openvino" or (backend == "auto" and precision != "fp16" and (
                precision == "bf16" or not _gpu_providers()))):  # bf16 runs on OpenVINO only
            self.session = self._openvino(precision, threads, required=backend == "openvino")
        if self.session is None:
            self.session = open_session(self.root / self.variant["file"], backend, precision, threads, cache)
        self.backend = _active_backend(self.session)
        if backend not in ("auto", self.backend):
            raise RuntimeError(f"backend {backend!r} requested but onnxruntime started {self.backend!r} "
                               f"(providers: {self.session.get_providers()})")
        self._rescore = None  # the rescore graph (review station, rare calls) runs on onnxruntime
        ort_backend = "cpu" if self.backend in ("cpu", "openvino") else "auto"
        self._rescore_args = (ort_backend, "fp32", threads, cache)
        self.classes = list(self.meta["classes"])
        self.image_size = tuple(inp["size"])
        self.mean, self.std, self.roi = inp["mean"], inp["std"], inp.get("roi")
        self.attention_size = tuple(self.meta["attention"]["size"])
        self.max_batch = max(1, int(max_batch))
        self.check_aspect = check_aspect
        self.version = self.meta["model_version"]
        self.threshold = float(self.variant["threshold"])
        self.review_band = float(self.meta["decision"]["review_band"])
        # the box rule calibrated for this variant; packages written before its other levels: threshold only
        try:
            self.box_rule = BoxRule.from_dict({**self.variant.get("box_rule", {}),
                                               "threshold": float(self.variant["box_threshold"]),
                                               "min_area": int(self.meta["boxes"]["min_area"]),
                                               "score": self.meta["boxes"]["score"]})
        except (ValueError, TypeError, AttributeError) as exc:
            raise PackageError(f"{self.root / 'metadata.json'}: variants.{variant_name}.box_rule: {exc}") from None
        self.bank = self._feature_bank()
        self._outputs = ["probs", "defect_score", "attention"] + ([self.meta["novelty"]["output"]]
                                                                  if self.bank is not None else [])

    def _feature_bank(self) -> np.ndarray | None:
        """The good parts' feature bank (novelty.npy) for the box rule's novelty level; None for packages
        without one (the level then drops nothing)."""
        novelty = self.meta.get("novelty")
        if not novelty:
            return None
        path = self.root / novelty["file"]
        try:
            bank = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PackageError(f"{path}: not a readable feature bank ({exc})") from None
        if bank.ndim != 2 or bank.dtype != np.float32 or not len(bank) or not np.isfinite(bank).all():
            raise PackageError(f"{path}: the feature bank must be a non-empty finite (cells, channels) float32 "
                               f"array, got {bank.dtype} {bank.shape}")
        return bank

    def _native_tensorrt(self, cache: Path, max_batch: int, precision: str, required: bool):
        """A native TensorRT session, or None (auto) / TensorRTUnavailable (required) when it cannot run here."""
        from inspection.deploy.tensorrt import (
            TensorRTSession,
            TensorRTUnavailable,
            build_engine,
            require_tensorrt,
        )

        try:
            require_tensorrt()  # before the cache: a line PC without TensorRT or a GPU makes no engine folder
            engine = build_engine(self.root / self.variant["file"], engine_cache_dir(cache), max(1, int(max_batch)),
                                  tuple(self.meta["input"]["size"]), precision)
            return TensorRTSession(engine)
        except TensorRTUnavailable:
            if required:
                raise
            return None

    def _openvino(self, precision: str, threads: int, required: bool):
        """An OpenVINO session, or None (auto: not installed, or not an Intel CPU) / OpenVINOUnavailable (required)."""
        from inspection.deploy.openvino import OpenVINOSession, OpenVINOUnavailable, intel_cpu

        try:
            if not required and not intel_cpu():
                return None  # measured on Intel only; ONNX Runtime stays the default elsewhere
            return OpenVINOSession(self.root / self.variant["file"], precision, threads)
        except OpenVINOUnavailable:
            if required:
                raise
            return None

    # -- pre-processing --------------------------------------------------------------------------------------
    def prepare(self, frame: np.ndarray, color: str = "RGB") -> np.ndarray:
        """Frame → the model's HxWx3 float32 input (before normalization), after the checks of frame_to_rgb."""
        image = _unit_float(frame, color, self.meta["input"]["channels"])
        fh, fw = image.shape[:2]
        if self.roi is not None:
            x, y, w, h = self.roi
            if x + w > fw or y + h > fh:
                raise FrameError(f"frame is {fw}x{fh} px but the model's ROI [x={x}, y={y}, w={w}, h={h}] "
                                 f"needs at least {x + w}x{y + h}")
        if self.check_aspect:
            _, _, w, h = full_roi((fh, fw), self.roi)
            lo, hi = self.meta["input"]["aspect_range"]
            if not lo / 1.25 <= w / h <= hi * 1.25:
                raise FrameError(f"frame region is {w}x{h} px (aspect {w / h:.2f}); the model was trained on "
                                 f"aspect {lo:.2f}-{hi:.2f} (wrong camera or ROI? pass check_aspect=False to force)")
        # gray to three channels and BGR to RGB after the resize, not before: the same numbers (the resize works
        # channel by channel) on the model's pixels instead of the frame's; a 512x512 colour frame's preparation
        # took 2.6 ms of the judging thread's 10 ms per frame at 100 fps (docs/line.md)
        return _as_rgb(prepare(image, self.image_size, self.roi), color)

    # -- inference ---------------------------------------------------------------------------------------------
    def run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalized (B, 3, H, W) float32 → (probs (B, K), defect scores (B,), attention (B, h, w))."""
        return self._run(x)[:3]

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """run_batch's outputs, and the features (B, C, h, w) where the package has a feature bank."""
        x = np.ascontiguousarray(x, np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, *self.image_size):
            raise FrameError(f"model input must be (B, 3, {self.image_size[0]}, {self.image_size[1]}), got {x.shape}")
        outs = [self.session.run(self._outputs, {"image": x[i:i + self.max_batch]})
                for i in range(0, len(x), self.max_batch)]
        return tuple(np.concatenate([o[k] for o in outs]).astype(np.float32, copy=False)
                     for k in range(len(self._outputs)))

    def decide(self, score: float, threshold: float | None = None) -> str:
        """pass / review / fail by the package's threshold and review band (inspection.core.decision.verdict)."""
        return verdict(score, self.threshold if threshold is None else threshold, self.review_band)

    def judge(self, probs: np.ndarray, score: float, attention: np.ndarray, frame: np.ndarray,
              features: np.ndarray | None = None) -> Inspection:
        """Verdict, defect type and boxes (in frame pixels, refined on the frame by the rule) from one image's
        model outputs; `features` (C, h, w): for the rule's novelty level (None: no region dropped by it)."""
        verdict = self.decide(float(score))
        frame = np.asarray(frame)
        boxes = []
        if verdict != "pass":
            rule, far = self.box_rule, None
            if features is not None and self.bank is not None and rule.novelty and rule.novelty_distance:
                # only the cells the rule can read (regions at its foot, and their neighbours): bounded cost;
                # every cell where regions may grow over new ones
                far = distance_map(features, self.bank, None if rule.grow else
                                   hot_cells(attention, rule.threshold * rule.low, features.shape[1:]))
            boxes = attention_to_boxes(attention, frame.shape[:2], rule, self.roi, frame=frame, novelty=far)
        defect = None if verdict == "pass" else self.classes[1 + int(np.argmax(probs[1:]))]
        return Inspection(verdict, float(score), {c: float(p) for c, p in zip(self.classes, probs)}, defect,
                          boxes, attention, self.version)

    def inspect(self, frames: list[np.ndarray], color: str = "RGB") -> list[Inspection]:
        """Judge a batch of camera frames (any sizes); the first unusable frame raises its FrameError."""
        results = self.inspect_each(frames, color)
        for r in results:
            if isinstance(r, FrameError):
                raise r
        return results

    def inspect_each(self, frames: list[np.ndarray], color: str = "RGB") -> list[Inspection | FrameError]:
        """Judge a batch of frames; an unusable frame gets its FrameError in its place, the others are judged."""
        return self.judge_each(frames, self.infer_each(frames, color))

    def infer_each(self, frames: list[np.ndarray], color: str = "RGB") -> tuple[list, list[int], tuple | None]:
        """inspect_each's first half, the model: each frame's FrameError (None where usable), the usable frames'
        slots and the model's outputs for them (None: no usable frame). judge_each finishes it."""
        errors: list = [None] * len(frames)
        prepared, slots = [], []
        for i, frame in enumerate(frames):
            try:
                prepared.append(self.prepare(frame, color))
                slots.append(i)
            except FrameError as exc:
                errors[i] = exc
        return errors, slots, self._run(to_input(prepared, self.mean, self.std)) if prepared else None

    def judge_each(self, frames: list[np.ndarray], inferred: tuple) -> list[Inspection | FrameError]:
        """inspect_each's second half: verdicts and boxes from infer_each's outputs for the same frames."""
        results, slots, outputs = inferred  # infer_each's own list, filled in place
        if outputs is not None:
            probs, scores, maps, *features = outputs
            for k, i in enumerate(slots):
                results[i] = self.judge(probs[k], scores[k], maps[k], frames[i], features[0][k] if features else None)
        return results

    def rescore(self, frame: np.ndarray, attention: np.ndarray, color: str = "RGB") -> dict:
        """Perception-branch probabilities with an operator-corrected attention map in [0, 1], the defect score
        and verdict they give, and the boxes the corrected map gives by the package's rule (none on a pass, as at
        the line).

        The map is at the model's resolution, at the frame's (cropped to the model's ROI here), or any size
        covering the model's input region.
        """
        att = np.asarray(attention, np.float32)
        if att.ndim != 2 or min(att.shape) < 1:
            raise FrameError(f"attention map must be 2-D (h, w), got shape {att.shape}")
        if not np.isfinite(att).all():
            raise FrameError("attention map holds NaN or infinite values")
        att = np.clip(att, 0, 1)
        if self.roi is not None and att.shape == np.asarray(frame).shape[:2]:  # a frame-sized map: the model's part
            x, y, w, h = self.roi
            att = att[y:y + h, x:x + w]
        att = shrink_map(att, tuple(self.attention_size))  # cell = its hottest pixel, as training targets are
        if self._rescore is None:
            self._rescore = open_session(self.root / "rescore.onnx", *self._rescore_args)
        x = to_input([self.prepare(frame, color)], self.mean, self.std)
        names = [o.name for o in self._rescore.get_outputs()]  # packages before the blended score: probs only
        outs = self._rescore.run(names, {"image": x, "attention": att[None]})
        p = outs[0][0].astype(float)
        score = float(outs[1][0]) if len(outs) > 1 else float(1 - p[0])
        verdict = self.decide(score, self.meta["variants"]["fp32"]["threshold"])
        frame = np.asarray(frame)  # a corrected map is the operator's: no region of it is dropped as "not new"
        boxes = (attention_to_boxes(att, frame.shape[:2], self.box_rule, self.roi, frame=frame)
                 if verdict != "pass" else [])
        return {"probs": dict(zip(self.classes, p.tolist())), "defect_score": score, "verdict": verdict,
                "boxes": [b.to_dict() for b in boxes]}
