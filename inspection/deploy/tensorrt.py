"""Native TensorRT engines (the `tensorrt` Python API): build from a package's ONNX graph, cache, run.

    >>> engine = build_engine(package / "model.int8.onnx", cache_root, max_batch=32, image_hw=(160, 160))
    >>> session = TensorRTSession(engine)
    >>> probs, defect_score, attention = session.run(["probs", "defect_score", "attention"], {"image": x})

Precision lives in the graph (TensorRT 11 builds strongly typed networks only): model.onnx gives an FP32
engine, model.int8.onnx an INT8 one through its Q/DQ nodes, whose scales are the package's calibration (the
role the calibration cache had in TensorRT ≤ 10). With TensorRT 10, precision "fp16" sets the FP16 builder
flag on the FP32 graph. Engines are not portable: they are cached per GPU model and TensorRT version, keyed by
the graph's SHA-256. Device memory goes through cuda-python (`pip install cuda-python`); no torch.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from inspection.core.errors import UserError
from inspection.deploy.package import file_sha256


class TensorRTUnavailable(UserError, RuntimeError):
    """TensorRT, cuda-python or a GPU is missing; the message says which."""


def _modules():
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable("the tensorrt Python package is not installed (pip install tensorrt)") from None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise TensorRTUnavailable("cuda-python is not installed (pip install cuda-python)") from None
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        raise TensorRTUnavailable("no CUDA GPU is visible")
    return trt, cudart


def require_tensorrt() -> None:
    """TensorRTUnavailable unless TensorRT, cuda-python and a GPU are all here (nothing is created)."""
    _modules()


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call failed with error {err}")
    return rest[0] if len(rest) == 1 else rest


def build_engine(onnx_path: Path, cache_dir: Path, max_batch: int, image_hw: tuple[int, int],
                 precision: str = "fp32") -> Path:
    """Serialized engine for onnx_path in cache_dir (built once, then reused); returns its path."""
    trt, _ = _modules()
    onnx_path = Path(onnx_path)
    key = f"{file_sha256(onnx_path)[:16]}-{precision}-b{max_batch}.engine"
    engine = Path(cache_dir) / key
    if engine.is_symlink():
        raise RuntimeError(f"{engine}: a symlink in the engine cache; refused (delete it to rebuild)")
    if engine.exists():
        if verified_engine(engine):
            return engine
        engine.unlink()  # damaged or replaced since it was built: build it again
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if precision != "fp16" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise TensorRTUnavailable(f"TensorRT {trt.__version__} has no FP16 builder flag (strong typing only); "
                                      "use precision fp32 or int8")
        config.set_flag(trt.BuilderFlag.FP16)
    h, w = image_hw
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 3, h, w), (max_batch, 3, h, w), (max_batch, 3, h, w))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    engine.parent.mkdir(parents=True, exist_ok=True)
    data = bytes(serialized)
    for path, content in ((Path(f"{engine}.sha256"), hashlib.sha256(data).hexdigest().encode()), (engine, data)):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(content)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    return engine


def verified_engine(engine: Path) -> bool:
    """Whether an engine file is the one this runtime built: a plain file whose SHA-256 matches the hash written
    beside it at build time."""
    mark = Path(f"{engine}.sha256")
    if engine.is_symlink() or mark.is_symlink() or not engine.is_file() or not mark.is_file():
        return False
    return hashlib.sha256(engine.read_bytes()).hexdigest() == mark.read_text().strip()


class TensorRTSession:
    """Runs an engine with onnxruntime's `run(output_names, {"image": x})` signature, so Runtime can use either."""

    def __init__(self, engine_path: Path):
        self.trt, self.cudart = _modules()
        logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.engine = self.trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{engine_path}: TensorRT cannot load this engine (built for another GPU or version?)")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._buffers: dict[str, tuple[int, int]] = {}  # name → (device pointer, bytes)

    def get_providers(self) -> list[str]:
        return ["TensorRT (native)"]

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr = _check(self.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        h2d, d2h = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, x in feeds.items():
            x = np.ascontiguousarray(x, np.float32)
            self.context.set_input_shape(name, x.shape)
            ptr = self._buffer(name, x.nbytes)
            _check(self.cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self.stream))
            self.context.set_tensor_address(name, ptr)
        outputs = {}
        for name in self.names:
            if name in feeds:
                continue
            shape = tuple(self.context.get_tensor_shape(name))
            out = np.empty(shape, self.trt.nptype(self.engine.get_tensor_dtype(name)))
            self.context.set_tensor_address(name, self._buffer(name, max(out.nbytes, 1)))
            outputs[name] = out
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT inference failed")
        for name, out in outputs.items():
            _check(self.cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name][0], out.nbytes, d2h, self.stream))
        _check(self.cudart.cudaStreamSynchronize(self.stream))
        return [outputs[n].astype(np.float32) for n in output_names]

    def __del__(self):
        for ptr, _ in getattr(self, "_buffers", {}).values():
            self.cudart.cudaFree(ptr)
