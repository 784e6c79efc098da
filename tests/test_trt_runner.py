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

from deploy.bundle import top1
from deploy.errors import DeployError, RunnerUnavailable
from deploy.runners import TrtRunner
from deploy.trt_build import profile_ranges

PROFILES = profile_ranges([1, 8, 64])  # what trt_build builds for the default batches


class Pinned(np.ndarray):
    """A page-locked host buffer (pycuda.driver.pagelocked_empty)."""


def install(monkeypatch, log, outputs=("logits", "features"), profiles=PROFILES, context_ok=True,
            refuse_address=None, init_error=None):
    """`profiles` may be a list filled in later (the engine reads it when loaded);
    `refuse_address`: a tensor whose set_tensor_address returns False; `init_error`: what
    cuda.init() raises (pycuda raises its own error types when no GPU is usable)."""
    memory: dict[int, np.ndarray] = {}
    events = log.setdefault("events", [])
    contexts = log.setdefault("contexts", [])  # the driver's context stack

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
            # TensorRT refuses a shape outside the current profile, in any dimension.
            lo, _, hi = profiles[self.profile]
            if not lo <= shape[0] <= hi or tuple(shape[1:]) != (3, 16, 16):
                return False
            self.batch = shape[0]
            return True

        def get_tensor_shape(self, name):
            return (self.batch, 10 if name == "logits" else 4)

        def set_tensor_address(self, name, ptr):
            if name == refuse_address:
                return False
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
        num_optimization_profiles = property(lambda self: len(profiles))

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
        """pycuda's primary context on the driver's stack: detach() of one that is not current
        pushes it and releases it without popping (pycuda's primary_context::detach_internal)."""

        def push(self):
            contexts.append(self)
            events.append("push")

        def pop(self):
            contexts.pop()
            events.append("pop")

        def detach(self):
            if not contexts or contexts[-1] is not self:
                contexts.append(self)
            events.append("detach")

    class DeviceAllocation(int):
        def free(self):
            events.append("free device" if contexts else "free device without a context")

    counter = iter(range(0x1000, 1 << 30, 0x1000))

    def init():
        if init_error is not None:
            raise init_error

    driver.init = init
    driver.Device = lambda i: types.SimpleNamespace(retain_primary_context=Context_, name=lambda: "Orin",
                                                   compute_capability=lambda: (8, 7))
    driver.Stream, driver.Event = Stream, Event
    driver.mem_alloc = lambda nbytes: DeviceAllocation(next(counter))
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
    log = install(monkeypatch, {})
    runner = TrtRunner(engine)
    # Batch 8 is in a profile, so the runner asks TensorRT, which refuses the image size.
    with pytest.raises(DeployError, match=r"refused input shape \(8, 3, 8, 8\).*profile 1"):
        runner.run(np.ones((8, 3, 8, 8), np.float32))
    runner.close()
    log = install(monkeypatch, {}, context_ok=False)
    with pytest.raises(DeployError, match="could not create an execution context"):
        TrtRunner(engine)
    assert log["events"][-1] == "pop" and log["contexts"] == []


def test_a_refused_tensor_address_is_an_error(monkeypatch, engine):
    install(monkeypatch, {}, refuse_address="features")
    with pytest.raises(DeployError, match="refused the device address of tensor 'features'"):
        TrtRunner(engine).run(np.ones((8, 3, 16, 16), np.float32))


def test_close_frees_every_buffer_and_leaves_the_context_stack_as_it_was(monkeypatch, engine):
    log = install(monkeypatch, {})
    for _ in range(3):  # runners made one after another, as run_bundle does per model
        runner = TrtRunner(engine)
        runner.run(np.ones((8, 3, 16, 16), np.float32))
        runner.run(np.ones((1, 3, 16, 16), np.float32))  # re-binding frees the batch-8 buffers
        runner.close()
        assert log["contexts"] == []  # pushed once, popped once, never pushed again by detach
    events = log["events"]
    # Per runner: 3 device buffers (input + 2 outputs) per bound shape, twice; all freed while
    # the context was current, as were the stream and both events.
    assert events.count("free device") == 3 * 2 * 3 and "free device without a context" not in events
    last = events[len(events) - 1 - events[::-1].index("push"):]
    assert last[-1] == "pop" and sorted(last[1:-1]) == ["free device"] * 6 + ["free event"] * 2 + ["free stream"]


def test_the_accuracy_pass_fits_an_engine_built_for_batch_1(monkeypatch, engine):
    """run_bundle checks accuracy in chunks of 32; an engine measured only at batch 1 has one
    profile, 1..1, so the chunks must follow the runner's largest batch."""
    install(monkeypatch, {}, profiles=profile_ranges([1]))
    runner = TrtRunner(engine)
    x = np.random.default_rng(1).random((40, 3, 16, 16), dtype=np.float32)
    assert runner.max_batch == 1
    assert top1(runner, x) == list(np.argmax(x.reshape(40, -1)[:, :10], axis=1))


def test_run_bundle_on_tensorrt_at_batch_1_checks_accuracy_and_measures(monkeypatch, engine, tmp_path):
    """The join: run_bundle's accuracy pass and harness on the engine deploy.trt_build makes for
    the batches asked for (profiles from profile_ranges of them, as build_engine does)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from deploy import run_bundle
    from deploy.bundle import build_bundle
    from deploy.harness import MeasureSettings

    profiles: list = []
    install(monkeypatch, {}, profiles=profiles)
    # A real ONNX model computing what the stand-in engine computes (2 * the first 10 pixels).
    w = np.zeros((768, 10), np.float32)
    w[np.arange(10), np.arange(10)] = 2.0
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [numpy_helper.from_array(w, "w")])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    x = np.random.default_rng(2).random((40, 3, 16, 16), dtype=np.float32)
    y = np.argmax(x.reshape(40, -1)[:, :10], axis=1)
    y[:4] = (y[:4] + 1) % 10  # four wrong labels: 90 % top-1
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    bundle = tmp_path / "bundle"
    build_bundle(str(bundle), {"student": {"path": str(model)}}, str(tmp_path / "x.npy"),
                 str(tmp_path / "y.npy"), "t")

    def engine_for(onnx_path, sha, precision, cache_dir, max_batch=64, calib_dir=None, batch_sizes=None):
        profiles[:] = profile_ranges(batch_sizes)
        return {"path": engine, "precision": precision}

    monkeypatch.setattr(run_bundle, "engine_for", engine_for)
    settings = MeasureSettings(warmup_s=0, warmup_iters=1, min_s=0, min_iters=5, max_s=5)
    doc = run_bundle.run_bundle(str(bundle), backend="tensorrt", batch_sizes=(1,), settings=settings, power="off")
    student = doc["models"]["student"]
    assert student["accuracy"]["top1"] == 90.0 and student["accuracy"]["agreement"] == 100.0


def test_missing_libnvinfer_or_a_cuda_that_does_not_start_is_one_line(monkeypatch, engine, tmp_path):
    # TensorRT's bindings load libnvinfer with ctypes when imported: OSError when it is missing.
    package = tmp_path / "site" / "tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise OSError('libnvinfer.so.10: cannot open shared object file: No such file or directory')\n")
    install(monkeypatch, {})
    monkeypatch.delitem(sys.modules, "tensorrt")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(RunnerUnavailable, match="TensorRT unavailable on this device: OSError .*libnvinfer"):
        TrtRunner(engine)
    from deploy import run_bundle

    with pytest.raises(RunnerUnavailable, match="TensorRT unavailable on this device: OSError"):
        run_bundle.engine_for(engine, "ab" * 32, "fp16", str(tmp_path / "engines"))

    class LogicError(Exception):  # pycuda.driver.LogicError
        pass

    install(monkeypatch, {}, init_error=LogicError("cuInit failed: no CUDA-capable device is detected"))
    with pytest.raises(RunnerUnavailable, match="CUDA does not start .*no CUDA-capable device"):
        TrtRunner(engine)
