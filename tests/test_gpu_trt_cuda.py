"""The CUDA half of the TensorRT path, on a real GPU without TensorRT (marker `gpu`).

TensorRT is too large to carry to a lent GPU machine, but pycuda is not: these tests run the
runner's and the builder's CUDA parts for real (the primary context, page-locked host buffers,
device allocations, the stream, CUDA events, the order things are freed in) with a stand-in
`tensorrt` whose engine copies its input to its outputs on the GPU. Skipped without pycuda or
a CUDA device; benchmarks/gpu_call.sh installs pycuda from .device/ and runs them.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

try:
    import pycuda.driver as cuda
except (ImportError, OSError) as e:  # OSError: pycuda built, libcuda.so missing
    pytest.skip(f"needs pycuda and a CUDA driver (pip install pycuda): {e}", allow_module_level=True)

try:
    cuda.init()
    HAVE_GPU, WHY = cuda.Device.count() > 0, "no CUDA device"
except Exception as e:  # pycuda's own error types when no driver or device is usable
    HAVE_GPU, WHY = False, f"CUDA does not start: {e}"

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAVE_GPU, reason=WHY)]

from deploy.runners import TrtRunner  # noqa: E402
from deploy.trt_build import primary_context, profile_ranges  # noqa: E402


def current_context():
    try:
        return cuda.Context.get_current()
    except Exception:
        return None


def test_primary_context_push_pop_leaves_no_context_behind():
    before = current_context()
    for _ in range(5):
        ctx = primary_context()
        assert current_context() is not None
        buf = cuda.mem_alloc(1 << 20)  # lives in the primary context
        buf.free()
        ctx.pop()
        assert current_context() == before  # nothing left on the driver's stack


def copy_engine_tensorrt(monkeypatch, profiles):
    """A stand-in `tensorrt` whose engine's execute_async_v3 copies its input to its output
    with a real device-to-device copy."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: np.float32

    class Context:
        def __init__(self):
            self.batch, self.addresses = None, {}

        def set_optimization_profile_async(self, index, stream):
            return True

        def set_input_shape(self, name, shape):
            self.batch = shape[0]
            return True

        def get_tensor_shape(self, name):
            return (self.batch, 3, 8, 8)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream):
            # Synchronous, on the legacy default stream, which orders itself with the runner's.
            cuda.memcpy_dtod(self.addresses["logits"], self.addresses["input"], self.batch * 3 * 8 * 8 * 4)
            return True

    class Engine:
        num_io_tensors = 2
        num_optimization_profiles = len(profiles)

        def get_tensor_name(self, i):
            return ["input", "logits"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "input" else "out"

        def get_tensor_shape(self, name):
            return (-1, 3, 8, 8)

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_profile_shape(self, name, i):
            return [(b, 3, 8, 8) for b in profiles[i]]

        def create_execution_context(self):
            return Context()

    trt.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                       "deserialize_cuda_engine": lambda self, data: Engine()})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)


def test_trt_runner_cuda_parts_on_a_real_gpu(monkeypatch, tmp_path):
    engine = tmp_path / "copy.engine"
    engine.write_bytes(b"stand-in")
    copy_engine_tensorrt(monkeypatch, profile_ranges([1, 8, 64]))
    before = current_context()
    rng = np.random.default_rng(0)
    for _ in range(2):
        runner = TrtRunner(str(engine))
        for b in (1, 8, 64, 8):
            x = rng.random((b, 3, 8, 8), dtype=np.float32)
            out = runner.run(x)  # page-locked copy in, device copy, copy out, CUDA events
            np.testing.assert_array_equal(out, x)
            assert runner.last_device_ms is not None and runner.last_device_ms >= 0
        assert runner.describe()["device"]
        runner.close()  # buffers, stream and events freed, then the context popped
        assert current_context() == before
