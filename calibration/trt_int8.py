"""TensorRT INT8: the entropy calibrator (TensorRT <= 10) and TensorRT version checks.

TensorRT 10.1 deprecated the INT8 calibrators and TensorRT 11 removed them (with
BuilderFlag.INT8): there, INT8 comes only from explicit Q/DQ nodes in the ONNX model, made
with `quantize_static_qdq(..., for_tensorrt=True)`. tensorrt and pycuda are imported inside
the functions that need them, so this module loads on any CPU-only machine.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from ._files import PathLike, atomic_write_bytes
from .calibset import check_batching, iter_batches
from .errors import CalibrationError

INSTALL_HINT = (
    "`pip install tensorrt pycuda` (on Jetson: the JetPack TensorRT python3 bindings "
    "plus `pip install pycuda`)"
)
QDQ_HINT = (
    "quantize the ONNX model with quantize_static_qdq(..., for_tensorrt=True) "
    "and build the engine from its Q/DQ nodes"
)


class CalibBatches:
    """Fixed-size, C-contiguous float32 batches over `images`, one pass per iteration.

    TensorRT calibrators need every batch to have the same size, so a last partial batch is
    completed with images from the start of the set (wrapping around) instead of being
    dropped: every image is seen, and a few are seen twice.
    """

    def __init__(self, images: Any, batch_size: int):
        check_batching(images, batch_size)
        self.images = images
        self.batch_size = int(batch_size)

    @property
    def batch_shape(self) -> Tuple[int, ...]:
        return (self.batch_size,) + tuple(self.images.shape[1:])

    @property
    def batch_nbytes(self) -> int:
        """Bytes of one float32 batch: the device buffer to allocate."""
        return int(np.prod(self.batch_shape)) * 4

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter_batches(self.images, self.batch_size, pad_last=True)


class CalibrationCache:
    """TensorRT's calibration cache file: read if present and made here, written atomically.

    A cache only holds for the TensorRT version and GPU that computed it (TensorRT issues 3612,
    2036: another version's cache builds a wrong engine, silently). Each write records both in
    a sidecar, PATH.json; a cache whose sidecar names another TensorRT or device, or that has
    no sidecar, is not handed to TensorRT: the calibrator calibrates again and replaces it, and
    `replaced` says why.
    """

    def __init__(self, path: PathLike, tensorrt_version: Optional[str] = None,
                 device: Optional[str] = None):
        self.path = os.fspath(path)
        self.tensorrt_version = tensorrt_version
        self.device = device
        self.replaced: Optional[str] = None

    @property
    def sidecar(self) -> str:
        return self.path + ".json"

    def mismatch(self) -> Optional[str]:
        """Why the cache on disk must not be used here, or None when it may."""
        if self.tensorrt_version is None:
            return None
        try:
            with open(self.sidecar) as f:
                origin = json.load(f)
        except (OSError, ValueError):
            origin = None
        if isinstance(origin, dict):
            if origin.get("tensorrt") != self.tensorrt_version:
                return "made by TensorRT %s, this is %s" % (origin.get("tensorrt"), self.tensorrt_version)
            if self.device is not None and origin.get("device") != self.device:
                return "made on %s, this is %s" % (origin.get("device"), self.device)
            return None
        # No record of where it came from (TensorRT's own header holds a version number whose
        # encoding is not documented): calibrating again is cheaper than a wrong engine.
        return "its origin is unknown (no %s beside it)" % os.path.basename(self.sidecar)

    def read(self) -> Optional[bytes]:
        """The cached bytes, or None so that TensorRT calibrates from the images."""
        if not os.path.isfile(self.path):
            return None
        problem = self.mismatch()
        if problem:
            self.replaced = problem
            return None
        with open(self.path, "rb") as f:
            return f.read() or None

    def write(self, data: Any) -> None:
        atomic_write_bytes(self.path, bytes(data))
        if self.tensorrt_version is not None:
            doc = {"tensorrt": self.tensorrt_version, "device": self.device}
            atomic_write_bytes(self.sidecar, json.dumps(doc, sort_keys=True).encode())


def int8_support(version: str) -> Dict[str, Any]:
    """Which INT8 paths a TensorRT version offers, from its version string."""
    parts = (version.split(".") + ["0"])[:2]
    try:
        major, minor = int(parts[0]), int(parts[1])
    except ValueError:
        raise CalibrationError(f"cannot parse TensorRT version {version!r}") from None
    return {
        "version": version,
        "major": major,
        "minor": minor,
        # Calibrators: deprecated in 10.1, removed in 11 (int8_calibrator, BuilderFlag.INT8).
        "implicit_int8_supported": major < 11,
        "implicit_int8_deprecated": (major, minor) >= (10, 1),
        "explicit_qdq_supported": major >= 8,
    }


def trt_version_info() -> Optional[Dict[str, Any]]:
    """`int8_support()` of the installed TensorRT, or None when it cannot be imported."""
    try:
        trt = importlib.import_module("tensorrt")
    except (ImportError, OSError):  # OSError: bindings present but libnvinfer missing
        return None
    return int8_support(trt.__version__)


def _import_trt_and_cuda():
    try:
        trt = importlib.import_module("tensorrt")
        cuda = importlib.import_module("pycuda.driver")
    except (ImportError, OSError) as e:
        raise CalibrationError(
            f"TensorRT INT8 calibration needs tensorrt and pycuda ({e}): {INSTALL_HINT}"
        ) from None
    calibrators = int8_support(trt.__version__)["implicit_int8_supported"]
    if not calibrators or not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise CalibrationError(f"TensorRT {trt.__version__} has no INT8 calibrators: {QDQ_HINT}")
    # No pycuda.autoinit: it would create a second CUDA context, and the device buffer must live
    # in the one TensorRT's builder uses, the primary context, which the caller makes current
    # before the Builder exists (deploy.trt_build.primary_context).
    return trt, cuda


def make_entropy_calibrator(images: Any, batch_size: int, cache_path: PathLike,
                            device: Optional[str] = None):
    """A trt.IInt8EntropyCalibrator2 over `images` (single-input models), cached at `cache_path`.

    When the cache file exists TensorRT reads it and skips calibration, so key `cache_path` by
    the ONNX model and calibration set (their sha256) to avoid reusing a stale cache. The
    builder must calibrate at `batch_size` (for a dynamic batch axis: a calibration profile).
    A CUDA context must be current (the device's primary one, before the Builder exists), and
    `free()` releases the calibrator's device buffer before that context is popped. A cache
    from another TensorRT version or GPU is calibrated again (CalibrationCache).

    TensorRT's trampoline prints an exception raised in a callback and carries on as if there
    were no more batches (or no cache): each callback keeps the first error in `.error`
    instead, for the caller to raise after the build with its real message.
    """
    batches = CalibBatches(images, batch_size)
    trt, cuda = _import_trt_and_cuda()
    # The cache is only trusted from this TensorRT and this GPU (`device`, else the GPU's name).
    if device is None:
        try:
            dev = cuda.Device(0)
            device = "%s sm_%d%d" % ((dev.name(),) + tuple(dev.compute_capability()))
        except Exception:
            device = None
    cache = CalibrationCache(cache_path, trt.__version__, device)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 needs the explicit call
            self.batches = batches
            self.cache = cache
            self.error: Optional[str] = None
            self._iter = iter(batches)  # one pass; TensorRT stops at the first None
            self._device = cuda.mem_alloc(batches.batch_nbytes)

        def free(self) -> None:
            """Free the device buffer now, while the context it lives in is still current."""
            device, self._device = self._device, None
            if device is not None:
                device.free()

        def _keep(self, what: str, e: BaseException) -> None:
            if self.error is None:
                self.error = f"{what}: {type(e).__name__}: {e}"

        def get_batch_size(self):
            return self.batches.batch_size

        def get_batch(self, names):
            try:
                if len(names) != 1:
                    raise CalibrationError(
                        f"the calibrator feeds one input, the network has {list(names)}"
                    )
                batch = next(self._iter, None)
                if batch is None or self._device is None:
                    return None
                cuda.memcpy_htod(self._device, batch)
                return [int(self._device)]
            except Exception as e:  # TensorRT would swallow it
                self._keep("get_batch", e)
                return None

        def read_calibration_cache(self):
            try:
                return self.cache.read()
            except Exception as e:
                self._keep("read_calibration_cache", e)
                return None

        def write_calibration_cache(self, data):
            try:
                self.cache.write(data)
            except Exception as e:
                self._keep("write_calibration_cache", e)

    return EntropyCalibrator()
