"""ONNX -> serialized TensorRT engine (FP32, FP16, INT8), on the device that will run it.

TensorRT 8.5 (JetPack 5.1), 8.6, 10 and 11 are told apart at run time by what the `tensorrt`
module offers, not by parsing its version alone (`detect_api`): build_serialized_network, memory pool
limits (set_memory_pool_limit; max_workspace_size before 8.4), the EXPLICIT_BATCH network
flag (needed before 10, deprecated in 10, gone in 11), strongly typed networks, timing
caches, INT8 calibrators (TensorRT <= 10) and builder precision flags.

INT8 comes one of two ways:
- explicit: the ONNX holds Q/DQ nodes (`edgekd quantize` for a jetson target writes them
  TensorRT-style: symmetric, zero point 0). TensorRT 8.5 to 10 build it with BuilderFlag.INT8;
  TensorRT 11, where that flag is gone, as a strongly typed network. The only INT8 route on 11.
- implicit (TensorRT <= 10): an FP32 ONNX plus a calibration set folder (calibration/'s
  format) fed to IInt8EntropyCalibrator2, with its cache file beside the engine.

Typing: TensorRT 10.12 deprecated weak typing (precision set by builder flags), so from 10.12
on a Q/DQ model builds as a strongly typed network, its types fixed by the Q/DQ nodes; 8.5 to
10.11 use the INT8 flag. TensorRT 11 networks are always strongly typed (its STRONGLY_TYPED
flag, enum value 0 there, is ignored and not passed).

What "int8" means (LAYER_POLICY): INT8 where the model is quantized (its Q/DQ nodes, or every
layer the calibrator covers), FP32 everywhere else, on every route and TensorRT version. It is
the one policy all routes can keep: a strongly typed network runs an FP32 model's unquantized
layers in FP32 and has no FP16 flag, so adding FP16 on the weakly typed routes would make the
same word mean a faster engine on TensorRT 8.6 than on 10.12. The policy is recorded with every
build and is part of the engine's cache key.

Profiles: one optimisation profile per batch size that will be measured (`opt_batches`), each
tuned (opt) at its batch and covering the batches above the previous one, so kernels are chosen
for the batch that is timed (the runner selects the profile per batch); or, without
`opt_batches`, one profile (min 1, opt `opt_batch`, max `max_batch`). A timing cache file,
named by TensorRT version and GPU by the caller (deploy.run_bundle), makes rebuilds fast; one
TensorRT rejects is replaced, not trusted. Engines are keyed by (ONNX sha256, TensorRT version,
GPU name, precision): they only run where they were built.

CUDA context: an INT8 calibrator allocates device memory, which must live in the context
TensorRT's builder uses, the device's primary context: it is made current before the Builder
exists (pycuda.autoinit would create a second one). Errors raised inside the calibrator's
callbacks are swallowed by TensorRT's trampoline (it prints them and takes "no more batches");
the calibrator keeps the first one and the build re-raises it with its real message.

NOT RUN ON A DEVICE YET: tensorrt cannot be installed on the machines this was written on.
Its tests drive it with stand-in `tensorrt` modules (tests/test_trt_build.py).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import DeployError, RunnerUnavailable

PRECISIONS = ("fp32", "fp16", "int8")
# The precision of every layer an engine of each precision runs: see the module docstring.
LAYER_POLICY = {"fp32": "fp32", "fp16": "fp16 (fp32 where TensorRT has no fp16 kernel)",
                "int8": "int8 where quantized, fp32 elsewhere"}
INSTALL_HINT = (
    "install TensorRT's Python bindings: on a Jetson `sudo apt install python3-libnvinfer` "
    "(part of JetPack), elsewhere `pip install tensorrt`"
)


class TrtBuildError(DeployError):
    """The engine could not be built from this model with these settings."""


def import_tensorrt() -> Any:
    """The tensorrt module, or RunnerUnavailable naming what to install."""
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError) as e:  # OSError: bindings present, libnvinfer missing
        raise RunnerUnavailable("TensorRT unavailable on this device: %s (%s); %s"
                                % (type(e).__name__, e, INSTALL_HINT)) from None


def _version(trt: Any) -> Tuple[int, int]:
    parts = (str(getattr(trt, "__version__", "0")).split(".") + ["0"])[:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise TrtBuildError("cannot parse the TensorRT version %r" % trt.__version__) from None


def detect_api(trt: Any) -> Dict[str, Any]:
    """What this TensorRT offers, from the module's own attributes."""
    major, minor = _version(trt)
    flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    builder_flags = getattr(trt, "BuilderFlag", None)
    config_cls = getattr(trt, "IBuilderConfig", None)
    return {
        "version": str(trt.__version__),
        "major": major,
        "minor": minor,
        "build_serialized_network": hasattr(getattr(trt, "Builder", None), "build_serialized_network"),
        "memory_pool": hasattr(config_cls, "set_memory_pool_limit"),
        # Implicit batch is gone since 10: the flag is ignored there and absent in 11.
        "explicit_batch_flag": major < 10 and hasattr(flags, "EXPLICIT_BATCH"),
        "strongly_typed": hasattr(flags, "STRONGLY_TYPED"),
        "timing_cache": hasattr(config_cls, "create_timing_cache"),
        "named_tensors": hasattr(getattr(trt, "ICudaEngine", None), "num_io_tensors"),
        "fp16_flag": hasattr(builder_flags, "FP16"),
        "int8_flag": hasattr(builder_flags, "INT8"),
        "calibrator": major < 11 and hasattr(trt, "IInt8EntropyCalibrator2"),
        # 10.12 deprecated weak typing: Q/DQ models build strongly typed from there on.
        "weak_typing_deprecated": (major, minor) >= (10, 12),
        "strongly_typed_always": major >= 11,
    }


def engine_key_doc(onnx_sha256: str, trt_version: str, device: str, precision: str) -> Dict[str, str]:
    """What an engine depends on: the model, TensorRT, the GPU, the precision and its policy."""
    return {"onnx_sha256": onnx_sha256, "tensorrt": trt_version, "device": device,
            "precision": precision, "layers": LAYER_POLICY[precision]}


def engine_key(onnx_sha256: str, trt_version: str, device: str, precision: str) -> str:
    """The cache key of an engine: 24 hex digits of the sha256 of `engine_key_doc` as JSON."""
    doc = engine_key_doc(onnx_sha256, trt_version, device, precision)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def profile_shapes(shape: Sequence[int], max_batch: int = 64, opt_batch: int = 1
                   ) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    """(min, opt, max) shapes for an input whose only dynamic axis is the batch (dim 0)."""
    shape = tuple(int(d) for d in shape)
    if not shape:
        raise TrtBuildError("a scalar input cannot take a batch profile")
    if any(d < 0 for d in shape[1:]):
        raise TrtBuildError("input shape %s has dynamic axes besides the batch: export with a "
                            "fixed image size" % (shape,))
    if not 1 <= opt_batch <= max_batch:
        raise TrtBuildError("need 1 <= opt_batch (%d) <= max_batch (%d)" % (opt_batch, max_batch))
    if shape[0] >= 0:  # a fixed batch: the profile is that shape
        return shape, shape, shape
    rest = shape[1:]
    return (1,) + rest, (opt_batch,) + rest, (max_batch,) + rest


def profile_ranges(batches: Sequence[int]) -> List[Tuple[int, int, int]]:
    """(min, opt, max) batch of one profile per measured batch size: profile i is tuned at
    batch b_i and takes b_(i-1) + 1 .. b_i, so every batch up to the largest has a profile."""
    sizes = sorted({int(b) for b in batches})
    if not sizes or sizes[0] < 1:
        raise TrtBuildError("batch sizes must be >= 1, got %s" % list(batches))
    out, lo = [], 1
    for b in sizes:
        out.append((lo, b, b))
        lo = b + 1
    return out


def primary_context() -> Any:
    """The device's primary CUDA context, made current: pop() it when done, and only that.

    pycuda's detach() of a primary context that is no longer current pushes it again and
    releases it without popping, so pop() + detach() would leave an entry on the driver's
    context stack per build; pycuda's own autoprimaryctx only pops.
    """
    try:
        cuda = importlib.import_module("pycuda.driver")
    except (ImportError, OSError) as e:
        raise RunnerUnavailable("TensorRT unavailable on this device: pycuda does not load "
                                "(%s: %s); pip install pycuda"
                                % (type(e).__name__, e)) from None
    try:
        cuda.init()
        ctx = cuda.Device(0).retain_primary_context()
        ctx.push()
    except Exception as e:  # pycuda raises its own error types when no GPU is usable
        raise RunnerUnavailable("TensorRT unavailable on this device: CUDA does not start (%s: "
                                "%s); check the GPU and its driver (nvidia-smi, or tegrastats "
                                "on a Jetson)" % (type(e).__name__, e)) from None
    return ctx


def _atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _parse(trt: Any, network: Any, logger: Any, onnx_path: str) -> None:
    parser = trt.OnnxParser(network, logger)
    if hasattr(parser, "parse_from_file"):  # resolves external weights beside the file
        ok = parser.parse_from_file(onnx_path)
    else:
        with open(onnx_path, "rb") as f:
            ok = parser.parse(f.read())
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = errors[0].splitlines()[0] if errors else "no error reported"
        raise TrtBuildError("TensorRT %s cannot parse %s: %s (%d error(s)); export for this "
                            "device's target (edgekd export --target jetson-jp5|jetson-jp6|jetson-jp7)"
                            % (trt.__version__, os.path.basename(onnx_path), first, len(errors)))


def _has_qdq(trt: Any, network: Any) -> bool:
    kinds = {getattr(trt.LayerType, n, None) for n in ("QUANTIZE", "DEQUANTIZE")} - {None}
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def _inputs(network: Any) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(network.get_input(i).name, tuple(network.get_input(i).shape))
            for i in range(network.num_inputs)]


def _profiles(builder: Any, inputs, ranges: Sequence[Tuple[int, int, int]]):
    """One optimization profile per (min, opt, max) batch range, and their shapes as JSON."""
    profiles, shapes = [], []
    for lo_b, opt_b, hi_b in ranges:
        profile = builder.create_optimization_profile()
        doc = {}
        for name, shape in inputs:
            lo = profile_shapes(shape, hi_b, lo_b)[1]
            _, opt, hi = profile_shapes(shape, hi_b, opt_b)
            profile.set_shape(name, lo, opt, hi)
            doc[name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        profiles.append(profile)
        shapes.append(doc)
    return profiles, shapes


def build_engine(
    onnx_path: str,
    engine_path: str,
    precision: str = "fp16",
    max_batch: int = 64,
    opt_batch: int = 1,
    calib_dir: Optional[str] = None,
    calib_batch: int = 8,
    workspace_mb: int = 1024,
    timing_cache: Optional[str] = None,
    opt_batches: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """Build and serialize an engine for `onnx_path` into `engine_path` (written atomically).

    INT8 uses the model's Q/DQ nodes when it has them, else (TensorRT <= 10) an entropy
    calibrator over the set in `calib_dir`; `opt_batches`: one profile per batch size to be
    measured (else one profile 1 .. max_batch tuned at opt_batch); returns what was built and
    how.
    """
    if precision not in PRECISIONS:
        raise TrtBuildError("unknown precision %r: use one of %s" % (precision, ", ".join(PRECISIONS)))
    if not os.path.isfile(onnx_path):
        raise TrtBuildError("no ONNX model at %s" % onnx_path)
    trt = import_tensorrt()
    api = detect_api(trt)
    if not api["build_serialized_network"]:
        raise RunnerUnavailable("TensorRT %s is older than 8.0 (no build_serialized_network): "
                                "use JetPack 5.1 or later" % api["version"])
    ranges = profile_ranges(opt_batches) if opt_batches else [(1, opt_batch, max_batch)]
    # A calibrator's buffers live in the primary context, current before the Builder exists.
    cuda_ctx = primary_context() if precision == "int8" and calib_dir is not None else None
    try:
        return _build(trt, api, onnx_path, engine_path, precision, ranges, calib_dir,
                      calib_batch, workspace_mb, timing_cache)
    finally:
        if cuda_ctx is not None:
            cuda_ctx.pop()  # pop only: see primary_context


def _build(trt: Any, api: Dict[str, Any], onnx_path: str, engine_path: str, precision: str,
           ranges: Sequence[Tuple[int, int, int]], calib_dir: Optional[str], calib_batch: int,
           workspace_mb: int, timing_cache: Optional[str]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)

    def network_with(flag_names: Sequence[str]):
        flags = 0
        for name in flag_names:
            flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
        net = builder.create_network(flags)
        _parse(trt, net, logger, onnx_path)
        return net

    base_flags = ["EXPLICIT_BATCH"] if api["explicit_batch_flag"] else []
    network = network_with(base_flags)
    explicit = _has_qdq(trt, network)
    name = os.path.basename(onnx_path)
    if explicit and precision != "int8":
        raise TrtBuildError("%s holds Q/DQ nodes (an INT8 model): build it with precision int8, "
                            "or pass the FP32 model for %s" % (name, precision))
    config = builder.create_builder_config()
    workspace = int(workspace_mb) << 20
    if api["memory_pool"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace
    info: Dict[str, Any] = {"precision": precision, "layers": LAYER_POLICY[precision],
                            "tensorrt": api["version"], "explicit_quantization": explicit,
                            "calibration_cache": None}
    calibrator = None
    try:
        if precision == "fp16":
            if not api["fp16_flag"]:
                raise TrtBuildError("TensorRT %s has no FP16 builder flag (strongly typed networks "
                                    "only): export an FP16 ONNX or build fp32" % api["version"])
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "int8" and explicit:
            network = _explicit_int8(trt, api, config, network, network_with, base_flags, info)
        elif precision == "int8":
            calibrator = _calibrated_int8(trt, api, builder, config, network, name, engine_path,
                                          calib_dir, calib_batch, info)

        profiles, info["profiles"] = _profiles(builder, _inputs(network), ranges)
        for i, profile in enumerate(profiles):
            if config.add_optimization_profile(profile) < 0:  # -1: TensorRT found it invalid
                raise TrtBuildError("TensorRT %s refused optimisation profile %d of %s (%s)"
                                    % (api["version"], i, name, info["profiles"][i]))
        info["profile"] = info["profiles"][-1]  # the largest batch's (earlier records' field)

        cache_obj = _timing_cache(config, api, timing_cache, info) if timing_cache else None
        serialized = builder.build_serialized_network(network, config)
        failed = getattr(calibrator, "error", None)
        replaced = getattr(getattr(calibrator, "cache", None), "replaced", None)
    finally:
        if calibrator is not None:
            calibrator.free()  # its device buffer goes before the caller pops the context
    if replaced:
        info["calibration_cache_replaced"] = replaced  # another TensorRT's or GPU's: recalibrated
    if failed is not None:
        raise TrtBuildError("INT8 calibration of %s failed inside TensorRT's calibrator callback: "
                            "%s" % (name, failed))
    if serialized is None:
        raise TrtBuildError("TensorRT %s could not build %s at %s (see its log above): try "
                            "fp32, a smaller max_batch, or more workspace_mb"
                            % (api["version"], name, precision))
    _atomic_write(engine_path, bytes(serialized))
    if cache_obj is not None:
        _atomic_write(timing_cache, bytes(cache_obj.serialize()))
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["engine"] = os.path.basename(engine_path)
    info["api"] = api
    return info


def _explicit_int8(trt: Any, api: Dict[str, Any], config: Any, network: Any, network_with: Any,
                   base_flags: List[str], info: Dict[str, Any]) -> Any:
    """Set up a Q/DQ model's build; returns the network to build (re-parsed when typed)."""
    if api["strongly_typed_always"]:
        info["strongly_typed"] = True  # TensorRT 11: the Q/DQ nodes fix every type
        return network
    if api["strongly_typed"] and (api["weak_typing_deprecated"] or not api["int8_flag"]):
        # TensorRT >= 10.12: weak typing is deprecated; the Q/DQ nodes fix every type.
        info["strongly_typed"] = True
        return network_with(base_flags + ["STRONGLY_TYPED"])
    if api["int8_flag"]:
        # TensorRT 8.5 .. 10.11: the Q/DQ layers need the INT8 flag; no FP16 flag, so layers
        # left unquantized stay FP32 as on the strongly typed routes (LAYER_POLICY).
        config.set_flag(trt.BuilderFlag.INT8)
        return network
    raise TrtBuildError("TensorRT %s offers neither BuilderFlag.INT8 nor strongly typed "
                        "networks for this Q/DQ model" % api["version"])


def _calibrated_int8(trt: Any, api: Dict[str, Any], builder: Any, config: Any, network: Any,
                     name: str, engine_path: str, calib_dir: Optional[str], calib_batch: int,
                     info: Dict[str, Any]) -> Any:
    """Attach an entropy calibrator over the set in `calib_dir`; returns it (free() it)."""
    if not api["calibrator"]:
        raise TrtBuildError(
            "TensorRT %s has no INT8 calibrators and %s has no Q/DQ nodes: quantize it for "
            "TensorRT first (edgekd quantize MODEL.onnx on a jetson target writes Q/DQ)"
            % (api["version"], name))
    if calib_dir is None:
        raise TrtBuildError(
            "INT8 from the FP32 model %s needs a calibration set (calib_dir, the run's calib/ "
            "folder) or a Q/DQ model (student.int8.onnx)" % name)
    from calibration import load_calibset, make_entropy_calibrator

    images = load_calibset(calib_dir, mmap=True).images
    cache = engine_path + ".calib.cache"
    calibrator = make_entropy_calibrator(images, calib_batch, cache)
    try:
        config.set_flag(trt.BuilderFlag.INT8)  # and no FP16 flag: LAYER_POLICY
        config.int8_calibrator = calibrator
        # The calibrator feeds fixed batches of calib_batch: a profile of exactly that.
        calib_profile = builder.create_optimization_profile()
        for tensor, shape in _inputs(network):
            fixed = profile_shapes(shape, calib_batch, calib_batch)[2]
            calib_profile.set_shape(tensor, fixed, fixed, fixed)
        if config.set_calibration_profile(calib_profile) is False:
            raise TrtBuildError("TensorRT %s refused the calibration profile (batch %d) of %s"
                                % (api["version"], calib_batch, name))
    except BaseException:
        calibrator.free()
        raise
    info["calibration_cache"] = os.path.basename(cache)
    info["calibration_images"] = int(len(images))
    return calibrator


def _timing_cache(config: Any, api: Dict[str, Any], path: str, info: Dict[str, Any]) -> Any:
    """Load the timing cache at `path` into `config`, or a fresh one when TensorRT rejects it;
    returns the cache object to serialize after the build (None without the API)."""
    if not api["timing_cache"]:
        return None
    data = b""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
    # A cache another TensorRT or GPU wrote is rejected one of two ways: create_timing_cache
    # logs an error and returns None (a version it cannot read, TensorRT issue 3566), or
    # set_timing_cache returns False (a mismatch). Either way: start afresh, never trust it.
    cache = config.create_timing_cache(data)
    if cache is None or config.set_timing_cache(cache, False) is False:
        cache = config.create_timing_cache(b"")
        if cache is None or config.set_timing_cache(cache, False) is False:
            raise TrtBuildError("TensorRT %s refused an empty timing cache" % api["version"])
        info["timing_cache_replaced"] = True
    info["timing_cache"] = os.path.basename(path)
    return cache


def engine_io(engine: Any, trt: Any) -> List[Dict[str, Any]]:
    """Name, input/output and shape of every I/O tensor: named tensors on TensorRT >= 8.5,
    bindings before."""
    if hasattr(engine, "num_io_tensors"):
        out = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            out.append({"name": name,
                        "input": engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                        "shape": list(engine.get_tensor_shape(name))})
        return out
    return [{"name": engine.get_binding_name(i), "input": bool(engine.binding_is_input(i)),
             "shape": list(engine.get_binding_shape(i))} for i in range(engine.num_bindings)]
