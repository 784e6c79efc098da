"""Latency harness: warm-up by time and count, then timed synchronous runs on real inputs.

Works with any object that has `run(batch)` (see deploy.runners). Each iteration is timed
with time.perf_counter_ns around one `run` call; the runner returns only once its result is
on the host, so GPU work is included. Batches are assembled before timing starts.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .errors import DeployError
from .stats import percentiles, summarize


@dataclass
class MeasureSettings:
    """How long to warm up and to measure; a phase ends when BOTH its time and its count are
    reached, and measuring stops early at whichever cap (max_iters, max_s) comes first.

    Defaults: 1 s / 10 runs of warm-up lets DVFS clocks ramp, caches, allocator arenas and
    thread pools settle (trtexec warms up 200 ms, which is short for a Jetson's governor);
    at least 50 runs and 2 s give a stable p99 on a ms-scale model (trtexec measures 3 s);
    the caps keep a 1 ms model to 100k timings (~1 MB of JSON) and a slow one to a minute.
    The warm-up is capped by max_s as well.
    """

    warmup_s: float = 1.0
    warmup_iters: int = 10
    min_iters: int = 50
    min_s: float = 2.0
    max_iters: int = 100000
    max_s: float = 60.0
    bootstrap_resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("warmup_s", "warmup_iters", "min_iters", "min_s"):
            if getattr(self, name) < 0:
                raise DeployError("%s must be >= 0, got %r" % (name, getattr(self, name)))
        if self.bootstrap_resamples < 1:
            raise DeployError("bootstrap_resamples must be >= 1, got %r" % self.bootstrap_resamples)
        if self.max_iters < max(self.min_iters, 1):
            raise DeployError("max_iters (%d) must be >= min_iters (%d) and >= 1"
                              % (self.max_iters, self.min_iters))
        if self.max_s < self.min_s or self.max_s <= 0:
            raise DeployError("max_s (%r) must be > 0 and >= min_s (%r)" % (self.max_s, self.min_s))


def assemble_batches(inputs: np.ndarray, batch_size: int, dtype: Any = np.float32) -> List[np.ndarray]:
    """Contiguous batches that walk through `inputs` in order, wrapping around at the end,
    until every sample has been used at least once (ceil(N / batch_size) batches)."""
    inputs = np.asarray(inputs)
    if inputs.ndim < 1 or inputs.shape[0] < 1:
        raise DeployError("inputs must be an array of at least one sample (N, ...), got shape %s"
                          % (inputs.shape,))
    if batch_size < 1:
        raise DeployError("batch_size must be >= 1, got %r" % batch_size)
    n = inputs.shape[0]
    count = -(-n // batch_size)
    idx = np.arange(count * batch_size).reshape(count, batch_size) % n
    return [np.ascontiguousarray(inputs[row], dtype=dtype) for row in idx]


def measure(
    runner: Any,
    inputs: np.ndarray,
    batch_size: int,
    settings: Optional[MeasureSettings] = None,
    keep_timings: bool = True,
    monitor: Any = None,
) -> Dict[str, Any]:
    """Time `runner.run` on batches cycled from `inputs` (N, C, H, W); returns batch_size,
    iterations, duration_s, warmup, stop_reason, latency_ms (stats.summarize), throughput_ips,
    device_latency_ms (when the runner reports device time) and timings_ms.

    `monitor` (e.g. deploy.power.PowerSampler) is started after the warm-up and stopped after
    the timed loop; what its stop() returns becomes `power`, with the energy per image."""
    settings = settings or MeasureSettings()
    batches = assemble_batches(inputs, batch_size, getattr(runner, "input_dtype", np.float32))
    gc_was_enabled = gc.isenabled()
    # As timeit does: a collection landing inside one iteration is the harness's cost, not
    # the model's.
    gc.disable()
    try:
        warm_iters, warm_ns = _warm_up(runner, batches, settings)
        if monitor is not None:
            monitor.start()
        try:
            timings_ns, device_ms, duration_ns, stop_reason = _timed_loop(runner, batches, settings)
        finally:
            power = monitor.stop() if monitor is not None else None
    finally:
        if gc_was_enabled:
            gc.enable()

    timings_ms = np.asarray(timings_ns, dtype=np.float64) / 1e6
    result: Dict[str, Any] = {
        "batch_size": batch_size,
        "iterations": len(timings_ns),
        "duration_s": duration_ns / 1e9,
        "warmup": {"iterations": warm_iters, "duration_s": warm_ns / 1e9},
        "stop_reason": stop_reason,
        "latency_ms": summarize(timings_ms, settings.bootstrap_resamples, settings.seed),
        # Wall time of the whole measured phase, so time spent between runs is not hidden.
        "throughput_ips": batch_size * len(timings_ns) / (max(duration_ns, 1) / 1e9),
    }
    if device_ms:
        result["device_latency_ms"] = summarize(device_ms, settings.bootstrap_resamples,
                                                settings.seed)
    if power is not None:
        images = batch_size * len(timings_ns)
        if power.get("input_mean_mw") is not None and images:
            # mW x s = mJ: the module's input power over the timed phase, per image.
            power["energy_mj_per_image"] = power["input_mean_mw"] * (duration_ns / 1e9) / images
        result["power"] = power
    if keep_timings:
        result["timings_ms"] = [round(float(t), 5) for t in timings_ms]
    return result


def single_stream(runner: Any, inputs: np.ndarray, settings: Optional[MeasureSettings] = None,
                  keep_timings: bool = True, monitor: Any = None) -> Dict[str, Any]:
    """MLPerf SingleStream: batch 1, one query at a time; its figure of merit is p90 (`p90_ms`)."""
    result = measure(runner, inputs, 1, settings, keep_timings, monitor)
    result["scenario"] = "SingleStream"
    result["p90_ms"] = result["latency_ms"]["p90"]
    return result


def batch_sweep(runner: Any, inputs: np.ndarray, batch_sizes: Sequence[int] = (1, 8, 64),
                settings: Optional[MeasureSettings] = None, keep_timings: bool = True,
                monitor: Any = None) -> List[Dict[str, Any]]:
    """One `measure` per batch size, in the given order (batch 1 as `single_stream`)."""
    return [single_stream(runner, inputs, settings, keep_timings, monitor) if b == 1
            else measure(runner, inputs, b, settings, keep_timings, monitor) for b in batch_sizes]


def sustain(runner: Any, inputs: np.ndarray, batch_size: int, seconds: float, windows: int = 10,
            temperatures: Any = None) -> Dict[str, Any]:
    """Run without pause for `seconds` after a short measurement, in `windows` equal windows,
    and report how the latency drifts: a Jetson (or a laptop) reaches its thermal steady state
    after minutes and may clock down on the way, which a short figure does not show.

    Returns seconds, batch_size, windows (each: t_s, p50_ms, p90_ms, iterations and, when
    `temperatures` returns a reading, max_temp_c), first_p50_ms, last_p50_ms, drift_pct (last
    window's p50 against the first's), steady_p50_ms (median of the last third's window
    p50s). `temperatures()` gives degrees C or None (deploy.envinfo.max_temperature)."""
    if seconds <= 0:
        raise DeployError("--sustain must be > 0 seconds, got %r" % seconds)
    if windows < 1:
        raise DeployError("windows must be >= 1, got %r" % windows)
    batches = assemble_batches(inputs, batch_size, getattr(runner, "input_dtype", np.float32))
    run, clock, nb = runner.run, time.perf_counter_ns, len(batches)
    window_ns = int(seconds * 1e9 / windows)
    out: List[Dict[str, Any]] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    i = 0
    start = clock()
    try:
        for w in range(windows):
            end = start + (w + 1) * window_ns
            timings: List[int] = []
            while True:
                t0 = clock()
                run(batches[i % nb])
                t1 = clock()
                timings.append(t1 - t0)
                i += 1
                if t1 >= end:
                    break
            ms = np.asarray(timings, dtype=np.float64) / 1e6
            p = percentiles(ms, (50, 90))
            row: Dict[str, Any] = {"t_s": round((t1 - start) / 1e9, 3), "p50_ms": p["p50"],
                                   "p90_ms": p["p90"], "iterations": len(timings)}
            temp = temperatures() if temperatures is not None else None
            if temp is not None:
                row["max_temp_c"] = temp
            out.append(row)
    finally:
        if gc_was_enabled:
            gc.enable()
    first, last = out[0]["p50_ms"], out[-1]["p50_ms"]
    tail = [r["p50_ms"] for r in out[-max(1, len(out) // 3):]]
    return {"seconds": seconds, "batch_size": batch_size, "windows": out,
            "first_p50_ms": first, "last_p50_ms": last,
            "drift_pct": round(100.0 * (last - first) / first, 2),
            "steady_p50_ms": float(np.median(tail))}


def _warm_up(runner: Any, batches: List[np.ndarray], s: MeasureSettings) -> tuple:
    run, clock, nb = runner.run, time.perf_counter_ns, len(batches)
    min_ns, cap_ns = int(s.warmup_s * 1e9), int(s.max_s * 1e9)
    start = now = clock()
    i = 0
    while (i < s.warmup_iters or now - start < min_ns) and now - start < cap_ns:
        run(batches[i % nb])
        i += 1
        now = clock()
    return i, now - start


def _timed_loop(runner: Any, batches: List[np.ndarray], s: MeasureSettings) -> tuple:
    # The hot loop: nothing but the clock, the run call and an append between timestamps.
    run, clock, nb = runner.run, time.perf_counter_ns, len(batches)
    min_ns, cap_ns = int(s.min_s * 1e9), int(s.max_s * 1e9)
    reports_device = hasattr(runner, "last_device_ms")
    timings: List[int] = []
    device_ms: List[float] = []
    i = 0
    start = clock()
    while True:
        batch = batches[i % nb]
        t0 = clock()
        run(batch)
        t1 = clock()
        timings.append(t1 - t0)
        if reports_device and runner.last_device_ms is not None:
            device_ms.append(runner.last_device_ms)
        i += 1
        elapsed = t1 - start
        if i >= s.max_iters:
            return timings, device_ms, elapsed, "max_iters"
        if elapsed >= cap_ns:
            return timings, device_ms, elapsed, "max_s"
        if i >= s.min_iters and elapsed >= min_ns:
            return timings, device_ms, elapsed, "min_reached"
