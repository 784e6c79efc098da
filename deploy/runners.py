"""Inference runners with one call shape for every backend: `run(batch) -> first output`.

Backends are imported when a runner is made, not when this module is imported, so a device
with only TensorRT (or only ONNX Runtime) can still use the rest of deploy/.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .errors import DeployError, RunnerUnavailable
from .trt_build import primary_context

# Short names accepted for ONNX Runtime execution providers.
_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


class Runner:
    """Base of all runners: `run(batch)` returns the first output as float32; `close()` frees."""

    name = "runner"
    input_name = ""
    input_shape: List[Optional[int]] = []  # None marks a dynamic dimension (e.g. batch)
    input_dtype = np.dtype(np.float32)
    # Device-side time of the latest run() in ms (CUDA events), None where the backend has none.
    last_device_ms: Optional[float] = None
    # The largest batch run() takes (a TensorRT engine's largest profile), None for any.
    max_batch: Optional[int] = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_intra_op_threads() -> int:
    """CPUs this process may run on (honours taskset and cgroup cpusets), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


class OrtRunner(Runner):
    """ONNX Runtime session with explicit threads, sequential execution and full graph
    optimisation; CUDA / TensorRT providers only when asked for and actually usable."""

    def __init__(
        self,
        onnx_path: str,
        intra_op_threads: Optional[int] = None,
        inter_op_threads: int = 1,
        providers: Optional[Sequence[str]] = None,
        trt_cache_dir: Optional[str] = None,
    ) -> None:
        ort = _import_onnxruntime()
        if not os.path.isfile(onnx_path):
            raise DeployError("model not found: %s" % onnx_path)
        wanted = resolve_providers(providers, ort.get_available_providers())
        missing = [p for p in wanted if p not in ort.get_available_providers()]
        if missing:
            raise RunnerUnavailable(
                "%s not available in this onnxruntime %s build (available: %s); install "
                "onnxruntime-gpu (on Jetson: the wheel built for your JetPack)"
                % (", ".join(missing), ort.__version__, ", ".join(ort.get_available_providers()))
            )
        intra = default_intra_op_threads() if intra_op_threads is None else int(intra_op_threads)
        if intra < 1 or inter_op_threads < 1:
            raise DeployError("thread counts must be >= 1, got intra=%s inter=%s"
                              % (intra, inter_op_threads))

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra
        opts.inter_op_num_threads = int(inter_op_threads)
        # One operator at a time: parallelism comes from intra-op threads, which keeps
        # latency repeatable (parallel mode only helps branchy graphs).
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        chosen: List[Any] = list(wanted)
        if trt_cache_dir and "TensorrtExecutionProvider" in wanted:
            # Without a cache the TensorRT EP rebuilds its engines at every session start,
            # which takes minutes on a Jetson.
            os.makedirs(trt_cache_dir, exist_ok=True)
            chosen[wanted.index("TensorrtExecutionProvider")] = (
                "TensorrtExecutionProvider",
                {"trt_engine_cache_enable": True, "trt_engine_cache_path": trt_cache_dir})
        try:
            self._session = ort.InferenceSession(onnx_path, sess_options=opts, providers=chosen)
        except Exception as e:
            # ORT's own classes (InvalidProtobuf, InvalidGraph, Fail...) mean a bad model file.
            if not type(e).__module__.startswith("onnxruntime"):
                raise
            raise DeployError("onnxruntime cannot load %s: %s" % (onnx_path, e)) from e
        # ORT drops a provider whose libraries fail to load with only a log line; a benchmark
        # that silently ran on CPU would be wrong, so check what the session really uses.
        dropped = [p for p in wanted if p not in self._session.get_providers()]
        if dropped:
            raise RunnerUnavailable(
                "%s failed to initialise (CUDA / cuDNN / TensorRT libraries missing or "
                "mismatched); the session fell back to %s"
                % (", ".join(dropped), ", ".join(self._session.get_providers()))
            )

        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise DeployError("deploy runners feed one image tensor; %s has %d inputs (%s)"
                              % (onnx_path, len(inputs), ", ".join(i.name for i in inputs)))
        self.path = onnx_path
        self.name = "onnxruntime:" + os.path.basename(onnx_path)
        self.input_name = inputs[0].name
        self.input_shape = [d if isinstance(d, int) and d > 0 else None for d in inputs[0].shape]
        self.input_dtype = np.dtype(_ORT_DTYPES.get(inputs[0].type, np.float32))
        self._outputs = [self._session.get_outputs()[0].name]
        self._version = ort.__version__

    @property
    def session(self) -> Any:
        """The underlying onnxruntime.InferenceSession (for profiling or a bare-loop baseline)."""
        return self._session

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self._session.run(self._outputs, {self.input_name: batch})[0]
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def describe(self) -> Dict[str, Any]:
        opts = self._session.get_session_options()
        return {
            "backend": "onnxruntime",
            "version": self._version,
            "providers": list(self._session.get_providers()),
            "intra_op_threads": opts.intra_op_num_threads,
            "inter_op_threads": opts.inter_op_num_threads,
            "execution_mode": str(opts.execution_mode).rsplit(".", 1)[-1],
            "graph_optimization_level": str(opts.graph_optimization_level).rsplit(".", 1)[-1],
            "input": {"name": self.input_name, "shape": self.input_shape,
                      "dtype": self.input_dtype.name},
            "output": self._outputs[0],
        }

    def close(self) -> None:
        self._session = None  # ORT frees the session (and its thread pool) with the object


class TrtRunner(Runner):
    """A TensorRT (8.5+) engine on one CUDA stream; `last_device_ms` is the CUDA-event time of
    the engine's execution, while timing `run()` gives host time including the copies.

    Every I/O tensor gets a device address (an engine may have several outputs; `run` returns
    the first). An engine with one optimisation profile per measured batch
    (deploy.trt_build's `opt_batches`) runs each batch on the profile tuned for it. Inputs are
    copied to the device from a page-locked buffer (an async copy from pageable memory is a
    synchronous one in disguise). Every TensorRT call that reports failure is checked.
    """

    def __init__(self, engine_path: str) -> None:
        trt, cuda = _import_tensorrt()
        if not os.path.isfile(engine_path):
            raise DeployError("engine not found: %s" % engine_path)
        # The primary context is the one the CUDA runtime (and so TensorRT) uses.
        self._ctx = primary_context()
        self._cuda = cuda
        self._stream = self._start = self._end = None
        self._context = self._engine = None
        self._buffers: Dict[str, Any] = {}
        self._h_in = self._d_in = None
        self._shape: Optional[tuple] = None
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(engine_path, "rb") as f:
            self._engine = runtime.deserialize_cuda_engine(f.read())
        if self._engine is None:
            self.close()
            raise DeployError("could not deserialise %s: engines only run with the TensorRT "
                              "version and GPU that built them; rebuild it on this device"
                              % engine_path)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            self.close()
            raise DeployError("TensorRT could not create an execution context for %s (out of GPU "
                              "memory? close other GPU programs and retry)" % engine_path)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        inputs = [n for n in names if is_input[n]]
        if len(inputs) != 1:
            self.close()
            raise DeployError("deploy runners feed one image tensor; %s has %d inputs"
                              % (engine_path, len(inputs)))
        self.path = engine_path
        self.name = "tensorrt:" + os.path.basename(engine_path)
        self.input_name = inputs[0]
        self._outputs = [n for n in names if not is_input[n]]
        self._output_name = self._outputs[0]
        self.input_shape = [d if d > 0 else None for d in self._engine.get_tensor_shape(inputs[0])]
        self.input_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(inputs[0])))
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in self._outputs}
        self._profiles = [tuple(int(s[0]) for s in self._engine.get_tensor_profile_shape(self.input_name, i))
                          for i in range(int(getattr(self._engine, "num_optimization_profiles", 1) or 1))]
        self._profile = 0
        self.max_batch = max(hi for _lo, _opt, hi in self._profiles)
        self._version = trt.__version__
        self._stream = cuda.Stream()
        self._start, self._end = cuda.Event(), cuda.Event()

    def _profile_for(self, batch: int) -> int:
        """The profile tuned closest above `batch` among those whose range holds it."""
        fits = [i for i, (lo, _opt, hi) in enumerate(self._profiles) if lo <= batch <= hi]
        if not fits:
            ranges = ", ".join("%d-%d" % (lo, hi) for lo, _opt, hi in self._profiles)
            raise DeployError("batch %d is outside %s's optimisation profiles (%s): rebuild the "
                              "engine for that batch" % (batch, self.path, ranges))
        return min(fits, key=lambda i: self._profiles[i][1] - batch if self._profiles[i][1] >= batch
                   else 1 << 30)

    def _bind(self, shape: tuple) -> None:
        # Re-bind only when the batch shape changes: allocations stay out of the timed path.
        cuda = self._cuda
        profile = self._profile_for(int(shape[0]))
        if profile != self._profile:
            if not self._context.set_optimization_profile_async(profile, self._stream.handle):
                raise DeployError("TensorRT refused optimisation profile %d of %s" % (profile, self.path))
            self._stream.synchronize()
            self._profile = profile
        if not self._context.set_input_shape(self.input_name, shape):
            raise DeployError("TensorRT refused input shape %s for %s (profile %d takes batches %d-%d)"
                              % (shape, self.path, profile, self._profiles[profile][0],
                                 self._profiles[profile][2]))
        self._free()  # the previous shape's buffers
        self._h_in = cuda.pagelocked_empty(shape, self.input_dtype)
        self._d_in = cuda.mem_alloc(self._h_in.nbytes)
        self._address(self.input_name, self._d_in)
        for name in self._outputs:
            host = cuda.pagelocked_empty(tuple(self._context.get_tensor_shape(name)), self._dtypes[name])
            device = cuda.mem_alloc(max(host.nbytes, 1))
            self._buffers[name] = (host, device)
            self._address(name, device)
        self._shape = shape

    def _address(self, name: str, device: Any) -> None:
        # False when TensorRT refuses the pointer (misaligned, or a name the engine lacks).
        if not self._context.set_tensor_address(name, int(device)):
            raise DeployError("TensorRT refused the device address of tensor %r of %s"
                              % (name, self.path))

    def _free(self) -> None:
        """Free every device and page-locked buffer now, not whenever the GC runs."""
        devices = [self._d_in] + [d for _h, d in self._buffers.values()]
        self._buffers = {}
        self._h_in = self._d_in = None
        self._shape = None
        for device in devices:
            if device is not None:
                device.free()

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.shape != self._shape:
            self._bind(batch.shape)
        cuda = self._cuda
        np.copyto(self._h_in, batch, casting="same_kind")
        cuda.memcpy_htod_async(self._d_in, self._h_in, self._stream)
        self._start.record(self._stream)
        if not self._context.execute_async_v3(self._stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed for %s" % self.path)
        self._end.record(self._stream)
        host, device = self._buffers[self._output_name]
        cuda.memcpy_dtoh_async(host, device, self._stream)
        self._stream.synchronize()
        self.last_device_ms = self._end.time_since(self._start)
        # Copy out of the page-locked buffer, which the next run() overwrites.
        return host.astype(np.float32, copy=True)

    def describe(self) -> Dict[str, Any]:
        dev = self._cuda.Device(0)
        return {
            "backend": "tensorrt",
            "version": self._version,
            "device": dev.name(),
            "compute_capability": "%d.%d" % dev.compute_capability(),
            "input": {"name": self.input_name, "shape": self.input_shape,
                      "dtype": self.input_dtype.name},
            "output": self._output_name,
            "outputs": list(self._outputs),
            "profiles": [list(p) for p in self._profiles],
            "device_timing": "cuda events around execute_async_v3",
        }

    def close(self) -> None:
        # Everything that lives in the CUDA context goes before the context is let go.
        self._context = self._engine = None
        self._free()
        self._stream = self._start = self._end = None
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.pop()  # pop only: see deploy.trt_build.primary_context


def make_runner(path: str, backend: str = "onnxruntime", **kw: Any) -> Runner:
    """A runner for `path` on `backend` ('onnxruntime' | 'tensorrt'); `kw` go to its class."""
    key = backend.lower()
    if key in ("onnxruntime", "ort"):
        return OrtRunner(path, **kw)
    if key in ("tensorrt", "trt"):
        return TrtRunner(path, **kw)
    raise DeployError("unknown backend %r: use 'onnxruntime' or 'tensorrt'" % backend)


def resolve_providers(providers: Optional[Sequence[str]], available: Sequence[str]) -> List[str]:
    """Execution providers for a session, CPU last. None means CPU only; 'auto' means the CUDA
    provider when this onnxruntime build has it (the TensorRT provider is taken only when named:
    it builds engines at session start)."""
    if not providers:
        return ["CPUExecutionProvider"]
    if [p.lower() for p in providers] == ["auto"]:
        return [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]
    resolved = [_PROVIDER_ALIASES.get(p.lower(), p) for p in providers]
    # CPU stays last as the fallback for operators the accelerator provider does not take.
    if "CPUExecutionProvider" not in resolved:
        resolved.append("CPUExecutionProvider")
    return resolved


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise RunnerUnavailable(
            "onnxruntime is not installed (%s): pip install onnxruntime, or on Jetson the "
            "onnxruntime-gpu wheel built for your JetPack" % e) from e
    return onnxruntime


def _import_tensorrt() -> Any:
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: bindings present, libnvinfer/libcuda missing
        raise RunnerUnavailable(
            "TensorRT unavailable on this device: %s (%s); pip install tensorrt pycuda, or "
            "on Jetson use the TensorRT that JetPack installs (python3-libnvinfer) and "
            "pip install pycuda" % (type(e).__name__, e)) from None
    # The named-tensor API (set_input_shape, set_tensor_address, execute_async_v3) arrived in
    # 8.5 (JetPack 5.1) and is the only one left in TensorRT 10.
    if tuple(int(p) for p in trt.__version__.split(".")[:2]) < (8, 5):
        raise RunnerUnavailable("TensorRT %s found; TrtRunner needs TensorRT 8.5+ (JetPack 5.1+)"
                                % trt.__version__)
    return trt, cuda
