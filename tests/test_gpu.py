"""GPU backends against the CPU reference: ORT CUDA, ORT TensorRT, native TensorRT (skipped without a GPU).

Run on a GPU machine with onnxruntime-gpu (and tensorrt + cuda-python for the native path):
    pytest tests/test_gpu.py -v
"""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from inspection.core.imageio import read_image
from inspection.core.preprocess import to_input
from inspection.deploy.runtime import Runtime


def _gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _gpu(), reason="no NVIDIA GPU on this machine (CI has none); "
                                                   "run tests/test_gpu.py where the device tool lends one")


def _providers() -> list[str]:
    import onnxruntime
    return onnxruntime.get_available_providers()


@pytest.fixture(scope="module")
def batch(exported):
    cpu = Runtime(exported["package"], backend="cpu")
    root = exported["manifest"].root
    frames = [read_image(f"{root}/{it.path}") for it in exported["manifest"].split("test")]
    return cpu, to_input([cpu.prepare(f) for f in frames], cpu.mean, cpu.std)


def _compare(rt: Runtime, cpu: Runtime, x: np.ndarray, atol: float) -> None:
    p, s, a = rt.run_batch(x)
    p0, s0, a0 = cpu.run_batch(x)
    assert np.abs(p - p0).max() <= atol and np.abs(a - a0).max() <= atol
    clear = np.abs(s0 - cpu.threshold) > 10 * atol  # decisions agree away from the threshold
    assert ((s >= cpu.threshold) == (s0 >= cpu.threshold))[clear].all()


def test_ort_cuda_matches_cpu(exported, batch):
    if "CUDAExecutionProvider" not in _providers():
        pytest.skip("onnxruntime-gpu is not installed")
    rt = Runtime(exported["package"], backend="cuda")
    assert rt.backend == "cuda"
    _compare(rt, batch[0], batch[1], 1e-3)


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_ort_tensorrt_matches_cpu_and_caches_engines(exported, batch, precision, atol, tmp_path):
    if "TensorrtExecutionProvider" not in _providers():
        pytest.skip("onnxruntime-gpu with the TensorRT provider is not installed")
    try:  # onnxruntime-gpu lists its TensorRT provider even where TensorRT's own libraries are missing
        ctypes.CDLL("libnvinfer.so.10")
    except OSError:
        pytest.skip("TensorRT's libraries (libnvinfer.so.10, pip install tensorrt-cu13-libs) are not installed")
    rt = Runtime(exported["package"], backend="ort-tensorrt", precision=precision, cache_root=tmp_path)
    assert rt.backend == "ort-tensorrt"
    _compare(rt, batch[0], batch[1], atol)
    assert any(tmp_path.rglob("*")), "no engine cached"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_native_tensorrt_matches_cpu_and_reuses_its_engine(exported, batch, precision, tmp_path):
    pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    rt = Runtime(exported["package"], backend="tensorrt", precision=precision, cache_root=tmp_path)
    assert rt.backend == "tensorrt"
    engines = list(tmp_path.rglob("*.engine"))
    assert len(engines) == 1
    built = engines[0].stat().st_mtime_ns
    again = Runtime(exported["package"], backend="tensorrt", precision=precision, cache_root=tmp_path)
    assert engines[0].stat().st_mtime_ns == built
    if precision == "fp32":
        _compare(rt, batch[0], batch[1], 1e-3)
    else:  # INT8 against the CPU's INT8 model: same quantization, different kernels
        cpu8 = Runtime(exported["package"], backend="cpu", precision="int8")
        s, s8 = again.run_batch(batch[1])[1], cpu8.run_batch(batch[1])[1]
        assert np.corrcoef(s, s8)[0, 1] > 0.95
