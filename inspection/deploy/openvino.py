"""OpenVINO on the CPU: compile a package's ONNX graph (FP32, or its Q/DQ INT8 graph) and run it.

    >>> session = OpenVINOSession(package / "model.int8.onnx", precision="int8", threads=2)
    >>> probs, defect_score, attention = session.run(["probs", "defect_score", "attention"], {"image": x})

OpenVINO reads the package's own graphs: model.onnx for FP32 and BF16, model.int8.onnx for INT8 (its Q/DQ
nodes carry the package's calibration; OpenVINO runs the quantized convolutions in INT8 and the rest as the
precision hint says). The hint is set explicitly: on CPUs with AMX or AVX-512 BF16 OpenVINO's default is
BF16, which would differ from ONNX Runtime's FP32 by ~1e-2 instead of ~1e-6. No torch, no onnxruntime.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from inspection.core.errors import UserError
from inspection.deploy.package import PackageError

# precision → (graph variant, inference precision hint for what the graph leaves in float)
PRECISIONS = {"fp32": ("fp32", "f32"), "bf16": ("fp32", "bf16"), "int8": ("int8", "f32")}


class OpenVINOUnavailable(UserError, RuntimeError):
    """OpenVINO is not installed, or this CPU cannot run the requested precision; the message says which."""


def cpu_capabilities() -> list[str]:
    """OpenVINO's CPU optimization capabilities (FP32, BF16, INT8, ...), or OpenVINOUnavailable."""
    core = _core()
    if "CPU" not in core.available_devices:
        raise OpenVINOUnavailable(f"OpenVINO sees no CPU device it can run on (devices: {core.available_devices})")
    return list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def intel_cpu() -> bool:
    """Whether OpenVINO runs on an Intel CPU here (where `auto` prefers it: see docs/runtime.md)."""
    cpu_capabilities()
    return "intel" in str(_core().get_property("CPU", "FULL_DEVICE_NAME")).lower()


@lru_cache(maxsize=1)
def _core():
    try:
        import openvino
    except ImportError:
        raise OpenVINOUnavailable("the openvino Python package is not installed "
                                  "(pip install 'inspection[openvino]')") from None
    return openvino.Core()


class OpenVINOSession:
    """Runs a compiled model with onnxruntime's `run(output_names, {"image": x})` signature, so Runtime can use it.

    One stream, `threads` inference threads, latency mode, no core pinning: the line calls it one batch at a
    time beside its capture and logging threads.
    """

    def __init__(self, model_path: Path, precision: str = "fp32", threads: int = 0):
        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        needs = {"bf16": "BF16", "int8": "INT8"}.get(precision)
        capabilities = cpu_capabilities()
        if needs and needs not in capabilities:
            raise OpenVINOUnavailable(f"precision {precision} needs a CPU with {needs} support; OpenVINO finds only "
                                      f"{', '.join(capabilities)} on this one (use fp32)")
        core = _core()
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision][1], "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.model = core.compile_model(core.read_model(str(model_path)), "CPU", config)  # any batch size
            # batch 1, the line's usual call, gets a model of its own with static shapes: INT8 1.97x ORT FP32
            # against 1.84x with the dynamic batch (median of 7 interleaved rounds, 2-core Xeon, demo model)
            single = core.read_model(str(model_path))
            single.reshape({port.get_any_name(): [1, *port.get_partial_shape()[1:]] for port in single.inputs})
            self.single = core.compile_model(single, "CPU", config)
        except RuntimeError as exc:
            raise PackageError(f"{model_path}: OpenVINO cannot compile it ({str(exc).splitlines()[0]})") from None
        self.requests = {m: m.create_infer_request() for m in (self.model, self.single)}
        self.ports = {m: {name: port for port in m.outputs for name in port.get_names()}
                      for m in (self.model, self.single)}
        self.precision = precision

    def get_providers(self) -> list[str]:
        return ["OpenVINO (native)"]

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # shared buffers, outputs copied (the request reuses its buffers on the next call): 1.02-1.05x at batch 1
        feeds = {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()}
        model = self.single if all(len(v) == 1 for v in feeds.values()) else self.model
        out = self.requests[model].infer(feeds, share_inputs=True, share_outputs=True)
        return [np.array(out[self.ports[model][n]], np.float32) for n in output_names]
