"""deploy.runners.TrtRunner without a GPU: STAND-IN `tensorrt` and `pycuda.driver` modules that
model the named-tensor API (TensorRT 8.5 to 10) and CUDA memory as numpy arrays, so the runner's
bookkeeping is checked: addresses for every I/O tensor, one profile per measured batch, inputs
from page-locked memory, failed TensorRT calls reported, everything released before the context.
They prove the wiring, not that TensorRT behaves so."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from deploy.errors import DeployError
from deploy.runners import TrtRunner

PROFILES = [(1, 1, 1), (2, 8, 8), (9, 64, 64)]  # what trt_build makes for batches 1, 8, 64


class Pinned(np.ndarray):
    """A page-locked host buffer (pycuda.driver.pagelocked_empty)."""


def install(monkeypatch, log, outputs=("logits", "features"), profiles=PROFILES, context_ok=True):
    memory: dict[int, np.ndarray] = {}
    events = log.setdefault("events", [])

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: np.float32
    names = ["input", *outputs]

    class Context:
        def __init__(self):
            self.profile, self.batch, self.addresses = 0, None, {}

        def set_optimization_profile_async(self, index, stream):
            log.setdefault("profiles", []).append(index)
            self.profile = index
            return True

        def set_input_shape(self, name, shape):
            lo, _, hi = profiles[self.profile]
            if not lo <= shape[0] <= hi:
                return False
            self.batch = shape[0]
            return True

        def get_tensor_shape(self, name):
            return (self.batch, 10 if name == "logits" else 4)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream):
            if set(self.addresses) != set(names):  # TensorRT fails without every address
                return False
            x = memory[self.addresses["input"]].reshape(self.batch, -1)
            memory[self.addresses["logits"]] = x[:, :10] * 2.0
            for name in outputs[1:]:
                memory[self.addresses[name]] = x[:, :4]
            return True

    class Engine:
        num_io_tensors = len(names)
        num_optimization_profiles = len(profiles)

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_mode(self, name):
            return "in" if name == "input" else "out"

        def get_tensor_shape(self, name):
            return (-1, 3, 16, 16) if name == "input" else (-1, 10)

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_profile_shape(self, name, i):
            return [(b, 3, 16, 16) for b in profiles[i]]

        def create_execution_context(self):
            return Context() if context_ok else None

    trt.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                       "deserialize_cuda_engine": lambda self, data: Engine()})

    driver = types.ModuleType("pycuda.driver")

    class Tracked:
        def __init__(self, what):
            self.what = what

        def __del__(self):
            events.append(f"free {self.what}")

    class Stream(Tracked):
        handle = 7

        def __init__(self):
            super().__init__("stream")

        def synchronize(self):
            pass

    class Event(Tracked):
        def __init__(self):
            super().__init__("event")

        def record(self, stream):
            pass

        def time_since(self, other):
            return 0.25

    class Context_:
        def push(self):
            events.append("push")

        def pop(self):
            events.append("pop")

        def detach(self):
            events.append("detach")

    counter = iter(range(0x1000, 1 << 30, 0x1000))
    driver.init = lambda: None
    driver.Device = lambda i: types.SimpleNamespace(retain_primary_context=Context_, name=lambda: "Orin",
                                                   compute_capability=lambda: (8, 7))
    driver.Stream, driver.Event = Stream, Event
    driver.mem_alloc = lambda nbytes: next(counter)
    driver.pagelocked_empty = lambda shape, dtype: np.zeros(shape, dtype).view(Pinned)

    def htod(dst, src, stream):
        log.setdefault("pinned", []).append(isinstance(src, Pinned))
        memory[dst] = np.array(src)

    def dtoh(dst, src, stream):
        dst[...] = memory[src].reshape(dst.shape)

    driver.memcpy_htod_async, driver.memcpy_dtoh_async = htod, dtoh
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver
    for name, module in (("tensorrt", trt), ("pycuda", pycuda), ("pycuda.driver", driver)):
        monkeypatch.setitem(sys.modules, name, module)
    return log


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"engine")
    return str(path)


def test_every_output_gets_an_address_and_the_first_is_returned(monkeypatch, engine):
    log = install(monkeypatch, {})
    runner = TrtRunner(engine)
    x = np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)
    out = runner.run(x)
    np.testing.assert_allclose(out, x.reshape(8, -1)[:, :10] * 2.0)
    assert runner.describe()["outputs"] == ["logits", "features"] and runner.last_device_ms == 0.25
    assert log["pinned"] == [True]  # copied to the device from page-locked memory


def test_each_batch_runs_on_the_profile_tuned_for_it(monkeypatch, engine):
    log = install(monkeypatch, {})
    runner = TrtRunner(engine)
    for b in (1, 8, 64, 8):
        assert runner.run(np.ones((b, 3, 16, 16), np.float32)).shape == (b, 10)
    assert log["profiles"] == [1, 2, 1]  # profile 0 is current at first
    with pytest.raises(DeployError, match="batch 100 is outside .* profiles .*9-64.*rebuild"):
        runner.run(np.ones((100, 3, 16, 16), np.float32))


def test_a_shape_tensorrt_refuses_and_a_missing_context_are_errors(monkeypatch, engine):
    install(monkeypatch, {}, profiles=[(2, 8, 8)])
    with pytest.raises(DeployError, match="batch 1 is outside"):
        TrtRunner(engine).run(np.ones((1, 3, 16, 16), np.float32))
    log = install(monkeypatch, {}, context_ok=False)
    with pytest.raises(DeployError, match="could not create an execution context"):
        TrtRunner(engine)
    assert log["events"][-2:] == ["pop", "detach"]


def test_close_frees_stream_events_and_buffers_before_the_context_goes(monkeypatch, engine):
    log = install(monkeypatch, {})
    runner = TrtRunner(engine)
    runner.run(np.ones((8, 3, 16, 16), np.float32))
    runner.close()
    events = log["events"]
    assert events[-2:] == ["pop", "detach"]
    freed = events[events.index("push") + 1:-2]
    assert sorted(freed) == ["free event", "free event", "free stream"]
