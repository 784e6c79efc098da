"""The `bench` verb as a library: measure a model file and build the versioned JSON document
described in deploy/SCHEMA.md (the CLI only parses arguments, prints and writes)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import SCHEMA_NAME, SCHEMA_VERSION
from .envinfo import capture, max_temperature
from .errors import DeployError
from .harness import MeasureSettings, batch_sweep, sustain
from .power import PowerSampler
from .runners import Runner, make_runner

RANDOM_SEED = 0
MIN_RANDOM_SAMPLES = 32  # enough distinct random batches that one cached buffer is not reused


def run_bench(
    model_path: str,
    backend: str = "onnxruntime",
    inputs_path: Optional[str] = None,
    batch_sizes: Sequence[int] = (1,),
    settings: Optional[MeasureSettings] = None,
    runner_options: Optional[Dict[str, Any]] = None,
    keep_timings: bool = True,
    power: str = "auto",
    sustain_s: float = 0.0,
) -> Dict[str, Any]:
    """Measure `model_path` at each batch size and return the bench document (schema
    edgekd.bench v1); inputs come from an .npy file, else uniform [0, 1) noise. `power`:
    'auto' samples tegrastats / jtop where present (a Jetson), 'off' never. `sustain_s` > 0
    then runs the largest batch that long without pause (`sustained`, deploy.harness.sustain)."""
    if not os.path.isfile(model_path):
        raise DeployError("model not found: %s" % model_path)
    environment = capture()  # before the runner exists, so its threads do not heat anything
    runner = make_runner(model_path, backend, **(runner_options or {}))
    try:
        return bench_runner(runner, model_path, inputs_path, batch_sizes, settings, keep_timings,
                            environment=environment, power=power, sustain_s=sustain_s)
    finally:
        runner.close()


def bench_runner(
    runner: Any,
    model_path: str,
    inputs: Any = None,
    batch_sizes: Sequence[int] = (1,),
    settings: Optional[MeasureSettings] = None,
    keep_timings: bool = True,
    environment: Optional[Dict[str, Any]] = None,
    power: str = "auto",
    sustain_s: float = 0.0,
) -> Dict[str, Any]:
    """The bench document for any object with the runner call shape (`run`, `describe`,
    `input_shape`): ONNX Runtime, TensorRT, or edgekd's PyTorch-eager baseline. `inputs` is
    an .npy path, an (N, ...) array, or None for noise."""
    settings = settings or MeasureSettings()
    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or min(batch_sizes) < 1:
        raise DeployError("batch sizes must be >= 1, got %s" % batch_sizes)
    environment = environment if environment is not None else capture()
    _check_batches(runner, batch_sizes)
    if inputs is None:
        samples = random_inputs(runner, max(batch_sizes + [MIN_RANDOM_SAMPLES]))
        inputs_doc = {"source": "random", "path": None, "sha256": None, "seed": RANDOM_SEED}
    elif isinstance(inputs, str):
        samples = load_inputs(inputs, runner)
        inputs_doc = {"source": "file", "path": inputs, "sha256": sha256_file(inputs), "seed": None}
    else:
        samples = check_inputs(np.asarray(inputs), runner, "the inputs given")
        inputs_doc = {"source": "array", "path": None, "sha256": None, "seed": None}
    inputs_doc.update(shape=list(samples.shape), dtype=samples.dtype.name)
    sampler = PowerSampler(power) if power != "off" else None
    if sustain_s < 0:
        raise DeployError("--sustain must be >= 0 seconds, got %r" % sustain_s)
    results = batch_sweep(runner, samples, batch_sizes, settings, keep_timings, sampler)
    sustained = (sustain(runner, samples, max(batch_sizes), sustain_s, temperatures=max_temperature)
                 if sustain_s else None)
    described = runner.describe()
    doc = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment,
        "model": {"path": model_path, "sha256": sha256_file(model_path),
                  "bytes": os.path.getsize(model_path), "input_shape": described["input"]["shape"]},
        "inputs": inputs_doc,
        "runner": described,
        "settings": asdict(settings),
        "results": results,
    }
    if sustained is not None:
        doc["sustained"] = sustained
    return doc


def random_inputs(runner: Runner, count: int, seed: int = RANDOM_SEED) -> np.ndarray:
    """`count` samples of uniform [0, 1) noise shaped like the runner's input (batch dim = count)."""
    shape = list(runner.input_shape)
    if any(d is None for d in shape[1:]):
        raise DeployError("model input %s has dynamic dimensions besides the batch (%s): pass "
                          "--inputs samples.npy" % (runner.input_name, shape))
    rng = np.random.default_rng(seed)
    return rng.random([count] + shape[1:], dtype=np.float32).astype(runner.input_dtype)


def load_inputs(path: str, runner: Runner) -> np.ndarray:
    """Samples (N, ...) from an .npy file, checked against the runner's per-sample shape."""
    try:
        inputs = np.load(path, allow_pickle=False)  # never unpickle a file from elsewhere
    except (OSError, ValueError) as e:
        raise DeployError("cannot read inputs %s as .npy: %s" % (path, e)) from e
    return check_inputs(inputs, runner, "inputs " + path)


def check_inputs(inputs: np.ndarray, runner: Runner, what: str) -> np.ndarray:
    """`inputs` if its samples have the runner's per-sample shape, else a DeployError."""
    want, got = runner.input_shape, list(inputs.shape)
    if len(got) != len(want) or any(want[i] not in (None, got[i]) for i in range(1, len(want))):
        raise DeployError("%s hold samples of shape %s; the model takes %s (N first)"
                          % (what, got[1:], want))
    if inputs.shape[0] < 1:
        raise DeployError("%s hold no samples" % what)
    return inputs


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str, doc: Dict[str, Any]) -> None:
    """Write `doc` as JSON so a reader sees the old file or the new one, never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())  # a Jetson losing power must not keep a half-written file
        # mkstemp makes the file 0600; give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def format_table(doc: Dict[str, Any]) -> str:
    """The results of a bench document as a fixed-width text table (latencies in ms)."""
    head = ("batch", "iters", "mean", "sd", "p50", "p90", "p99", "max", "img/s")
    rows: List[Sequence[str]] = [head]
    for r in doc["results"]:
        lat = r["latency_ms"]
        rows.append([str(r["batch_size"]), str(r["iterations"])]
                    + ["%.3f" % lat[k] for k in ("mean", "sd", "p50", "p90", "p99", "max")]
                    + ["%.1f" % r["throughput_ips"]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(row[i].rjust(widths[i]) for i in range(len(head))) for row in rows)


def summary_lines(doc: Dict[str, Any]) -> List[str]:
    """The MLPerf-style figures of merit of a bench document: SingleStream p90 (batch 1) and
    the best throughput over the batch sizes (Offline), plus power where it was sampled."""
    lines = []
    for r in doc["results"]:
        if r.get("scenario") == "SingleStream":
            lines.append("SingleStream (batch 1): p90 %.3f ms" % r["p90_ms"])
    best = max(doc["results"], key=lambda r: r["throughput_ips"])
    lines.append("throughput: %.1f img/s at batch %d" % (best["throughput_ips"], best["batch_size"]))
    for r in doc["results"]:
        p = r.get("power")
        if p and p.get("input_mean_mw") is not None:
            lines.append("power at batch %d: %s %.0f mW mean (%s, %d samples), %.3f mJ/image"
                         % (r["batch_size"], p["input_rail"], p["input_mean_mw"], p["source"],
                            p["samples"], p.get("energy_mj_per_image") or 0.0))
    line = sustained_line(doc.get("sustained"))
    if line:
        lines.append(line)
    return lines


def sustained_line(s: Optional[Dict[str, Any]]) -> Optional[str]:
    """One line beside the short figures: how the p50 moved over a sustained run."""
    if not s:
        return None
    temps = [w["max_temp_c"] for w in s["windows"] if w.get("max_temp_c") is not None]
    heat = (", hottest zone %.0f -> %.0f C" % (temps[0], temps[-1])) if temps else ""
    return ("sustained %g s at batch %d: p50 %.3f -> %.3f ms (%+.1f %%), steady %.3f ms%s"
            % (s["seconds"], s["batch_size"], s["first_p50_ms"], s["last_p50_ms"], s["drift_pct"],
               s["steady_p50_ms"], heat))


def _check_batches(runner: Runner, batch_sizes: List[int]) -> None:
    fixed = runner.input_shape[0] if runner.input_shape else None
    if fixed is not None and any(b != fixed for b in batch_sizes):
        raise DeployError("model input %s has a fixed batch of %d; export it with a dynamic batch "
                          "or bench with --batch %d" % (runner.input_name, fixed, fixed))
