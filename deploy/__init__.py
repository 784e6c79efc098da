"""Device side of edgekd: runners per backend, the latency harness, environment capture,
power sampling, and the device bundle (build, verify, run).

Runs on Python 3.8+ with numpy and onnxruntime; TensorRT and pycuda are optional. Never
imports torch or edgekd. Submodules load on first use, so `import deploy` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

SCHEMA_NAME = "edgekd.bench"  # the JSON document `python -m deploy bench` writes
SCHEMA_VERSION = 1  # bumped on any incompatible change to it (see SCHEMA.md)

_EXPORTS = {
    "OrtRunner": "runners",
    "TrtRunner": "runners",
    "make_runner": "runners",
    "RunnerUnavailable": "errors",
    "DeployError": "errors",
    "MeasureSettings": "harness",
    "measure": "harness",
    "single_stream": "harness",
    "batch_sweep": "harness",
    "capture": "envinfo",
    "run_bench": "bench",
    "build_bundle": "bundle",
    "verify_bundle": "verify",
    "run_bundle": "run_bundle",
    "PowerSampler": "power",
}

__all__ = ["SCHEMA_NAME", "SCHEMA_VERSION"] + sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # PEP 562: load a submodule only when a name from it is used
    if name in _EXPORTS:
        return getattr(importlib.import_module("." + _EXPORTS[name], __name__), name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
