"""deploy.trt_build without TensorRT: TensorRT cannot run on these machines, so the builder is
driven by STAND-IN `tensorrt` / `pycuda` modules written here (FakeTRT). They model the API
surface of TensorRT 8.6, 10.3 and 11 as documented, parse real ONNX files with the onnx
package, and pull real calibration batches; they prove the wiring, not that TensorRT accepts
the result. Key computation, profile shapes and version detection are plain functions."""

from __future__ import annotations

import hashlib
import json
import sys
import types

import numpy as np
import onnx
import pytest
import torch

from calibration import quantize_static_qdq, write_calibset
from deploy import trt_build
from deploy.errors import RunnerUnavailable
from deploy.trt_build import TrtBuildError, build_engine, detect_api, engine_key, profile_shapes


# ---- stand-in TensorRT ------------------------------------------------------------------------
def fake_tensorrt(version: str, log: dict) -> types.ModuleType:
    """A stand-in `tensorrt` module of `version` that records what the builder does in `log`."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Enum:
        def __init__(self, **members):
            for k, v in members.items():
                setattr(self, k, v)

    # The real enum values: 8.6 EXPLICIT_BATCH 0 (EXPLICIT_PRECISION 1, deprecated); 10.x
    # EXPLICIT_BATCH 0 (deprecated, ignored) and STRONGLY_TYPED 1; 11 has no EXPLICIT_BATCH and
    # STRONGLY_TYPED 0 (deprecated: always on, ignored).
    if major < 10:
        flags = {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1}
    elif major == 10:
        flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    else:
        flags = {"STRONGLY_TYPED": 0}
    trt.NetworkDefinitionCreationFlag = Enum(**flags)
    trt.BuilderFlag = Enum(**({"FP16": "FP16", "INT8": "INT8"} if major < 11 else {}))
    trt.MemoryPoolType = Enum(WORKSPACE="WORKSPACE")
    trt.LayerType = Enum(QUANTIZE="Q", DEQUANTIZE="DQ", OTHER="X")
    trt.TensorIOMode = Enum(INPUT="in", OUTPUT="out")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            self.flags, self.layers, self.inputs = flags, [], []
            log.setdefault("network_flags", []).append(flags)

        num_layers = property(lambda self: len(self.layers))
        num_inputs = property(lambda self: len(self.inputs))

        def get_layer(self, i):
            return types.SimpleNamespace(type=self.layers[i])

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            model = onnx.load(path)
            for node in model.graph.node:
                if node.op_type == "DequantizeLinear" and major < 10 and node.input[0].endswith("bias_quantized"):
                    self.errors.append("DequantizeLinear: INT32 bias is not supported")
                self.network.layers.append({"QuantizeLinear": "Q", "DequantizeLinear": "DQ"}.get(node.op_type, "X"))
            for inp in model.graph.input:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
                self.network.inputs.append(Tensor(inp.name, tuple(dims)))
            return not self.errors

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+timings"

    class IBuilderConfig:
        def __init__(self):
            self.flags, self.profiles, self.int8_calibrator = set(), [], None
            log["config"] = self

        def set_memory_pool_limit(self, pool, size):
            self.pool = (pool, size)

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, p):  # the new profile's index, -1 when invalid
            if log.get("refuse_profiles"):
                return -1
            self.profiles.append(p)
            return len(self.profiles) - 1

        def set_calibration_profile(self, p):  # False when TensorRT finds it invalid
            if log.get("refuse_profiles"):
                return False
            self.calibration_profile = p
            return True

        def create_timing_cache(self, data):
            # A cache this TensorRT cannot read (another version's format): TensorRT logs an
            # error and returns None (TensorRT issue 3566).
            if data.startswith(b"other-trt"):
                log.setdefault("trt_errors", []).append("timing cache: version mismatch")
                return None
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache is None:  # what the pybind11 binding does with None
                raise TypeError("set_timing_cache(): incompatible function arguments")
            # A cache another GPU wrote is refused (returns False).
            if cache.data.startswith(b"other-gpu"):
                return False
            self.timing_cache = cache
            return True

    class Builder:
        def __init__(self, logger):
            log.setdefault("events", []).append("builder")
            log["context_at_builder"] = list(log.get("contexts", []))

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if config.int8_calibrator is not None:  # what TensorRT does: pull batches until None
                cal = config.int8_calibrator

                def trampoline(fn, *args):  # TensorRT prints a callback's exception, goes on
                    try:
                        return fn(*args)
                    except Exception as e:
                        log.setdefault("swallowed", []).append(repr(e))
                        return None

                names = log.get("calib_names", ["input"])
                if trampoline(cal.read_calibration_cache):  # a cache: no calibration
                    log["calib_batches"] = []
                else:
                    log["calib_batches"] = list(iter(lambda: trampoline(cal.get_batch, names), None))
                    trampoline(cal.write_calibration_cache, b"TRT-cache")
            return memoryview(b"engine:" + trt.__version__.encode())

    class ICudaEngine:
        num_io_tensors = 2

    trt.Logger, trt.Builder, trt.OnnxParser, trt.IBuilderConfig = Logger, Builder, OnnxParser, IBuilderConfig
    trt.ICudaEngine = ICudaEngine
    if major < 11:
        class IInt8EntropyCalibrator2:
            def __init__(self):
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return trt


@pytest.fixture()
def install(monkeypatch):
    def _install(version):
        log: dict = {}
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, log))
        copies = []
        driver = types.ModuleType("pycuda.driver")
        contexts = log.setdefault("contexts", [])  # the driver's context stack
        events = log.setdefault("events", [])

        class DeviceBuffer(int):  # a device pointer is an int to TensorRT
            def free(self):
                events.append("free buffer" if contexts else "free buffer without a context")

        driver.mem_alloc = lambda nbytes: DeviceBuffer(0xC0FFEE)
        driver.memcpy_htod = lambda dest, src: copies.append(src.copy())

        class PrimaryContext:
            """pycuda's primary context: detach() of one that is not current pushes it and
            releases it without popping (pycuda's primary_context::detach_internal)."""

            def push(self):
                contexts.append("primary")
                events.append("push")

            def pop(self):
                contexts.pop()
                events.append("pop")

            def detach(self):
                if contexts[-1:] != ["primary"]:
                    contexts.append("primary")
                events.append("detach")

        driver.init = lambda: events.append("init")
        driver.Device = lambda i: types.SimpleNamespace(retain_primary_context=PrimaryContext,
                                                       name=lambda: log.get("gpu", "Orin"),
                                                       compute_capability=lambda: (8, 7))
        # pycuda.autoinit would make a second context: importing it fails here.
        for name, module in [("pycuda", types.ModuleType("pycuda")), ("pycuda.driver", driver),
                             ("pycuda.autoinit", None)]:
            monkeypatch.setitem(sys.modules, name, module)
        log["copies"] = copies
        return log

    return _install


# ---- real models and a real calibration set ----------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from edgekd.data import load_dataset
    from edgekd.export.onnx import export_onnx
    from edgekd.models.registry import create_model

    folder = tmp_path_factory.mktemp("trt")
    data = load_dataset("digits", 16)
    torch.manual_seed(0)
    model = create_model("mbv2_cifar_trunc13", 10, data.mean, data.std)
    fp32 = folder / "student.onnx"
    export_onnx(model, fp32, 16, 17)
    images = data.train.images[:50].numpy().astype(np.float32) / 255.0
    calib = write_calibset(folder / "calib", images, data.train.labels[:50].numpy(), data.classes, 0, "digits")
    qdq = folder / "student.int8.onnx"
    quantize_static_qdq(fp32, qdq, images, for_tensorrt=True)
    return {"fp32": str(fp32), "qdq": str(qdq), "calib": str(calib), "images": images}


# ---- plain functions -------------------------------------------------------------------------
def test_engine_key_matches_run_bundle_keying():
    doc = {"onnx_sha256": "ab" * 32, "tensorrt": "10.3.0", "device": "Orin sm_87", "precision": "fp16",
           "layers": trt_build.LAYER_POLICY["fp16"]}
    expected = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]
    assert engine_key("ab" * 32, "10.3.0", "Orin sm_87", "fp16") == expected
    keys = {engine_key("ab" * 32, v, d, p) for v in ("8.6.2", "10.3.0") for d in ("Orin", "Thor")
            for p in ("fp16", "int8")}
    assert len(keys) == 8  # every fact changes the key


def test_profile_shapes():
    assert profile_shapes((-1, 3, 32, 32), 64, 1) == ((1, 3, 32, 32), (1, 3, 32, 32), (64, 3, 32, 32))
    assert profile_shapes((-1, 3, 32, 32), 64, 8)[1] == (8, 3, 32, 32)
    assert profile_shapes((4, 3, 32, 32)) == ((4, 3, 32, 32),) * 3  # fixed batch
    with pytest.raises(TrtBuildError, match="besides the batch"):
        profile_shapes((-1, 3, -1, -1))
    with pytest.raises(TrtBuildError, match="opt_batch"):
        profile_shapes((-1, 3, 8, 8), 4, 8)


@pytest.mark.parametrize("version,explicit_flag,strongly,calibrator", [
    ("8.6.2", True, False, True), ("10.3.0", False, True, True), ("11.0.0", False, True, False)])
def test_detect_api(version, explicit_flag, strongly, calibrator):
    api = detect_api(fake_tensorrt(version, {}))
    assert (api["explicit_batch_flag"], api["strongly_typed"], api["calibrator"]) == (
        explicit_flag, strongly, calibrator)
    assert api["memory_pool"] and api["timing_cache"] and api["named_tensors"]


def test_missing_tensorrt_is_one_line_naming_the_install(monkeypatch, models, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when not installed
    with pytest.raises(RunnerUnavailable, match="python3-libnvinfer.*pip install tensorrt"):
        build_engine(models["fp32"], str(tmp_path / "e.engine"))


# ---- builds with the stand-ins -----------------------------------------------------------------
def test_fp16_build_on_tensorrt_8_6(install, models, tmp_path):
    log = install("8.6.2")
    engine = tmp_path / "e.engine"
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    info = build_engine(models["fp32"], str(engine), "fp16", max_batch=64, timing_cache=str(cache))
    assert engine.read_bytes() == b"engine:8.6.2" and cache.read_bytes() == b"old+timings"
    config = log["config"]
    assert config.flags == {"FP16"} and config.pool == ("WORKSPACE", 1024 << 20)
    assert log["network_flags"] == [1 << 0]  # EXPLICIT_BATCH before TensorRT 10
    assert config.profiles[0].shapes["input"] == ((1, 3, 16, 16), (1, 3, 16, 16), (64, 3, 16, 16))
    assert info["profile"]["input"]["max"] == [64, 3, 16, 16] and not info["explicit_quantization"]


def test_int8_with_a_calibrator_on_tensorrt_10(install, models, tmp_path):
    log = install("10.3.0")
    engine = tmp_path / "e.engine"
    info = build_engine(models["fp32"], str(engine), "int8", calib_dir=models["calib"], calib_batch=16)
    config = log["config"]
    assert config.flags == {"INT8"} and log["network_flags"] == [0]
    assert config.calibration_profile.shapes["input"] == ((16, 3, 16, 16),) * 3
    # 50 real images in 4 fixed batches of 16 (the last wraps around to the start)
    assert len(log["calib_batches"]) == 4
    seen = np.concatenate(log["copies"])
    np.testing.assert_array_equal(seen[:50], models["images"])
    np.testing.assert_array_equal(seen[50:], models["images"][:14])
    assert (tmp_path / "e.engine.calib.cache").read_bytes() == b"TRT-cache"
    assert info["calibration_cache"] == "e.engine.calib.cache" and info["calibration_images"] == 50


def test_int8_from_qdq_on_tensorrt_10_and_11(install, models, tmp_path):
    log = install("10.3.0")
    info = build_engine(models["qdq"], str(tmp_path / "a.engine"), "int8")
    assert info["explicit_quantization"] and log["config"].flags == {"INT8"}  # no FP16: one policy
    assert log["config"].int8_calibrator is None and info["layers"] == "int8 where quantized, fp32 elsewhere"
    # 10.12 deprecated weak typing: a Q/DQ model builds strongly typed, without the flags.
    log = install("10.13.0")
    info = build_engine(models["qdq"], str(tmp_path / "c.engine"), "int8")
    assert info["strongly_typed"] and log["network_flags"][-1] == 1 << 1  # STRONGLY_TYPED is 1 in 10
    assert log["config"].flags == set()
    # 11: always strongly typed; its deprecated flag (value 0 there) is not passed.
    log = install("11.0.0")
    info = build_engine(models["qdq"], str(tmp_path / "b.engine"), "int8")
    assert info["strongly_typed"] and log["network_flags"] == [0]
    assert log["config"].flags == set()


def test_tensorrt_11_refuses_int8_without_qdq(install, models, tmp_path):
    install("11.0.0")
    with pytest.raises(TrtBuildError, match="no INT8 calibrators.*Q/DQ"):
        build_engine(models["fp32"], str(tmp_path / "e.engine"), "int8", calib_dir=models["calib"])
    with pytest.raises(TrtBuildError, match="no FP16 builder flag"):
        build_engine(models["fp32"], str(tmp_path / "e.engine"), "fp16")
    assert not (tmp_path / "e.engine").exists()


def test_bad_requests(install, models, tmp_path):
    install("10.3.0")
    with pytest.raises(TrtBuildError, match="needs a calibration set"):
        build_engine(models["fp32"], str(tmp_path / "e.engine"), "int8")
    for precision in ("fp32", "fp16"):  # a Q/DQ model cannot be built at another precision
        with pytest.raises(TrtBuildError, match="Q/DQ nodes .*build it with precision int8"):
            build_engine(models["qdq"], str(tmp_path / "e.engine"), precision)
    with pytest.raises(TrtBuildError, match="unknown precision"):
        build_engine(models["fp32"], str(tmp_path / "e.engine"), "int4")


def test_run_bundle_calls_the_builder_with_its_signature(install, models, tmp_path, monkeypatch):
    """deploy.run_bundle.engine_for imports deploy.trt_build and passes the kwargs it names."""
    from deploy import run_bundle

    install("10.3.0")
    monkeypatch.setattr(run_bundle, "_gpu_name", lambda: "Orin sm_87")
    sha = trt_build.sha256_file(models["qdq"])
    got = run_bundle.engine_for(models["qdq"], sha, "int8", str(tmp_path / "engines"))
    assert got["path"].endswith(engine_key(sha, "10.3.0", "Orin sm_87", "int8") + ".engine")
    assert open(got["path"], "rb").read() == b"engine:10.3.0" and not got["cached"]
    assert run_bundle.engine_for(models["qdq"], sha, "int8", str(tmp_path / "engines"))["cached"]


# ---- the audit's fixes ---------------------------------------------------------------------
def test_the_calibrator_lives_in_the_primary_context_made_current_before_the_builder(install, models, tmp_path):
    log = install("10.3.0")
    build_engine(models["fp32"], str(tmp_path / "e.engine"), "int8", calib_dir=models["calib"])
    # init, push, then the Builder (with the primary context current), then pop and detach;
    # pycuda.autoinit (a second context) was never imported: it cannot be here.
    assert log["events"][:3] == ["init", "push", "builder"] and log["events"][-2:] == ["free buffer", "pop"]
    assert log["context_at_builder"] == ["primary"] and log["contexts"] == []
    # Without calibration no context is touched.
    log = install("10.3.0")
    build_engine(models["qdq"], str(tmp_path / "q.engine"), "int8")
    assert log["events"] == ["builder"]


def test_errors_inside_calibrator_callbacks_are_raised_after_the_build(install, models, tmp_path):
    log = install("10.3.0")
    log["calib_names"] = ["input", "mask"]  # a network with two inputs
    with pytest.raises(TrtBuildError, match="get_batch: CalibrationError: the calibrator feeds one input"):
        build_engine(models["fp32"], str(tmp_path / "e.engine"), "int8", calib_dir=models["calib"])
    # The calibrator's device buffer is freed while the context is current, then it is popped.
    assert not (tmp_path / "e.engine").exists() and log["events"][-2:] == ["free buffer", "pop"]
    assert log["contexts"] == []
    # The cache cannot be written (a folder in its place): that is raised too.
    log = install("10.3.0")
    (tmp_path / "f.engine.calib.cache").mkdir()
    with pytest.raises(TrtBuildError, match="write_calibration_cache"):
        build_engine(models["fp32"], str(tmp_path / "f.engine"), "int8", calib_dir=models["calib"])
    assert "swallowed" not in log  # the calibrator caught both itself; TensorRT saw no exception


def test_one_profile_per_measured_batch_each_tuned_at_it(install, models, tmp_path):
    log = install("10.3.0")
    info = build_engine(models["fp32"], str(tmp_path / "e.engine"), "fp16", opt_batches=[64, 1, 8])
    shapes = [p.shapes["input"] for p in log["config"].profiles]
    assert [(lo[0], opt[0], hi[0]) for lo, opt, hi in shapes] == [(1, 1, 1), (2, 8, 8), (9, 64, 64)]
    assert [p["input"]["opt"][0] for p in info["profiles"]] == [1, 8, 64]


def test_a_timing_cache_tensorrt_refuses_is_replaced_not_trusted(install, models, tmp_path):
    install("10.3.0")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"other-gpu-timings")
    info = build_engine(models["fp32"], str(tmp_path / "e.engine"), "fp16", timing_cache=str(cache))
    assert info["timing_cache_replaced"] and cache.read_bytes() == b"+timings"


def test_run_bundle_keys_the_timing_cache_and_the_profiles(install, models, tmp_path, monkeypatch):
    from deploy import run_bundle

    install("10.3.0")
    gpu = {"name": "Orin sm_87"}
    monkeypatch.setattr(run_bundle, "_gpu_name", lambda: gpu["name"])
    sha = trt_build.sha256_file(models["fp32"])
    folder = tmp_path / "engines"
    first = run_bundle.engine_for(models["fp32"], sha, "fp16", str(folder), batch_sizes=[1, 64])
    assert first["opt_batches"] == [1, 64] and not first["cached"]
    assert run_bundle.engine_for(models["fp32"], sha, "fp16", str(folder), batch_sizes=[64, 1])["cached"]
    # Other batch sizes: rebuilt with profiles for them.
    again = run_bundle.engine_for(models["fp32"], sha, "fp16", str(folder), batch_sizes=[8])
    assert not again["cached"] and [p["input"]["opt"][0] for p in again["build"]["profiles"]] == [8]
    gpu["name"] = "Thor sm_110"
    run_bundle.engine_for(models["fp32"], sha, "fp16", str(folder), batch_sizes=[8])
    assert len(list(folder.glob("timing-*.cache"))) == 2  # one per (TensorRT, GPU)


def test_a_calibration_cache_from_another_tensorrt_or_gpu_is_calibrated_again(install, models, tmp_path):
    engine = str(tmp_path / "e.engine")
    cache, sidecar = tmp_path / "e.engine.calib.cache", tmp_path / "e.engine.calib.cache.json"
    log = install("10.3.0")
    build_engine(models["fp32"], engine, "int8", calib_dir=models["calib"])
    assert cache.read_bytes() == b"TRT-cache" and json.loads(sidecar.read_text()) == {"tensorrt": "10.3.0", "device": "Orin sm_87"}
    log = install("10.3.0")
    info = build_engine(models["fp32"], engine, "int8", calib_dir=models["calib"])
    assert log["calib_batches"] == [] and "calibration_cache_replaced" not in info  # reused
    # The same file on another GPU, under another TensorRT, or with no record of its origin.
    for version, gpu, why in (("10.3.0", "Thor", "made on Orin sm_87, this is Thor sm_87"),
                              ("10.4.0", "Orin", "made by TensorRT 10.3.0, this is 10.4.0"),
                              ("10.3.0", "Orin", "origin is unknown")):
        if why == "origin is unknown":
            sidecar.unlink()
        else:
            sidecar.write_text(json.dumps({"tensorrt": "10.3.0", "device": "Orin sm_87"}))
        log = install(version)
        log["gpu"] = gpu
        info = build_engine(models["fp32"], engine, "int8", calib_dir=models["calib"])
        assert len(log["calib_batches"]) == 7 and why in info["calibration_cache_replaced"]


# ---- the second audit's fixes ---------------------------------------------------------------
def test_a_timing_cache_tensorrt_cannot_read_is_replaced(install, models, tmp_path):
    log = install("10.3.0")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"other-trt-version-timings")
    info = build_engine(models["fp32"], str(tmp_path / "e.engine"), "fp16", timing_cache=str(cache))
    assert log["trt_errors"] and info["timing_cache_replaced"] and cache.read_bytes() == b"+timings"


def test_refused_profiles_are_errors_not_silent(install, models, tmp_path):
    log = install("10.3.0")
    log["refuse_profiles"] = True
    with pytest.raises(TrtBuildError, match="refused optimisation profile 0 of student.onnx"):
        build_engine(models["fp32"], str(tmp_path / "e.engine"), "fp16", opt_batches=[1, 8])
    log = install("10.3.0")
    log["refuse_profiles"] = True
    with pytest.raises(TrtBuildError, match="refused the calibration profile"):
        build_engine(models["fp32"], str(tmp_path / "f.engine"), "int8", calib_dir=models["calib"])
    # Refused before the build: the calibrator's buffer freed in the context, which is popped.
    assert log["events"][-2:] == ["free buffer", "pop"] and log["contexts"] == []


def test_builds_one_after_another_leave_the_context_stack_empty(install, models, tmp_path):
    log = install("10.3.0")
    for i in range(3):
        build_engine(models["fp32"], str(tmp_path / f"e{i}.engine"), "int8", calib_dir=models["calib"])
        assert log["contexts"] == []
    assert log["events"].count("push") == log["events"].count("pop") == 3 and "detach" not in log["events"]


def test_qdq_on_tensorrt_8_6_jetpack_5(install, models, tmp_path):
    """JetPack 5's INT8 path: weakly typed Q/DQ with the INT8 flag only (LAYER_POLICY); a
    Q/DQ model with INT32 bias (ORT's default, not for_tensorrt) is refused by 8.6's parser."""
    log = install("8.6.2")
    info = build_engine(models["qdq"], str(tmp_path / "a.engine"), "int8", opt_batches=[1, 8])
    assert info["explicit_quantization"] and "strongly_typed" not in info
    assert log["config"].flags == {"INT8"} and log["network_flags"] == [1 << 0]
    ort_default = tmp_path / "ort.int8.onnx"
    quantize_static_qdq(models["fp32"], ort_default, models["images"], for_tensorrt=False)
    assert any(n.op_type == "DequantizeLinear" and n.input[0].endswith("bias_quantized")
               for n in onnx.load(ort_default).graph.node)
    install("8.6.2")
    with pytest.raises(TrtBuildError, match="cannot parse ort.int8.onnx: DequantizeLinear: INT32 bias"):
        build_engine(str(ort_default), str(tmp_path / "b.engine"), "int8")


def test_the_layer_policy_is_in_the_engine_key(install, models, tmp_path, monkeypatch):
    from deploy import run_bundle

    install("10.3.0")
    monkeypatch.setattr(run_bundle, "_gpu_name", lambda: "Orin sm_87")
    sha = trt_build.sha256_file(models["qdq"])
    got = run_bundle.engine_for(models["qdq"], sha, "int8", str(tmp_path / "engines"))
    assert got["layers"] == trt_build.LAYER_POLICY["int8"] == got["build"]["layers"]
    old_key = hashlib.sha256(json.dumps({"onnx_sha256": sha, "tensorrt": "10.3.0", "device": "Orin sm_87",
                                         "precision": "int8"}, sort_keys=True).encode()).hexdigest()[:24]
    assert old_key not in got["path"]  # an engine built under the earlier policy is not reused


def test_missing_libnvinfer_is_one_line(monkeypatch, models, tmp_path):
    package = tmp_path / "site" / "tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise OSError('libnvinfer.so.8: cannot open shared object file')\n")
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(RunnerUnavailable, match="TensorRT unavailable on this device: OSError .*libnvinfer"):
        build_engine(models["fp32"], str(tmp_path / "e.engine"))
