"""deploy/ runners, latency harness, statistics, environment capture and `python -m deploy`,
on real ONNX Runtime sessions over a small conv net built here (no torch needed)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy.envinfo import capture
from deploy.errors import DeployError, RunnerUnavailable
from deploy.harness import MeasureSettings, assemble_batches, batch_sweep, measure, single_stream
from deploy.runners import OrtRunner, TrtRunner, default_intra_op_threads, make_runner
from deploy.stats import bootstrap_cis, bootstrap_median_ci, percentiles, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Fast settings: tests check behaviour, not figures.
QUICK = MeasureSettings(warmup_s=0.0, warmup_iters=2, min_iters=5, min_s=0.02, max_s=5.0)


def build_convnet(path: str, seed: int = 0) -> dict:
    """Conv(3->4, 3x3, pad 1) + Relu + GlobalAveragePool + Flatten + Gemm(4->5), batch dim 'N'."""
    rng = np.random.default_rng(seed)
    w = {"conv_w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
         "conv_b": rng.standard_normal(4).astype(np.float32),
         "fc_w": rng.standard_normal((5, 4)).astype(np.float32),
         "fc_b": rng.standard_normal(5).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by the older onnxruntime of a JetPack 5 device
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return w


def reference(x: np.ndarray, w: dict) -> np.ndarray:
    """The same network in numpy, float64."""
    x = x.astype(np.float64)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, wd = x.shape[2:]
    conv = np.zeros((x.shape[0], 4, h, wd))
    for i in range(3):
        for j in range(3):
            conv += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w["conv_w"][:, :, i, j])
    conv += w["conv_b"][None, :, None, None]
    pooled = np.maximum(conv, 0).mean(axis=(2, 3))
    return pooled @ w["fc_w"].T + w["fc_b"]


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model") / "convnet.onnx")
    return path, build_convnet(path)


@pytest.fixture(scope="module")
def samples():
    return np.random.default_rng(1).random((6, 3, 8, 8), dtype=np.float32)


class SleepRunner:
    """A runner whose run() sleeps: the first `cold` calls for `cold_s`, then for `sleep_s`;
    it records every batch it sees and, on the harness's clock (time.perf_counter_ns), when
    each call began and ended."""

    def __init__(self, sleep_s: float, cold: int = 0, cold_s: float = 0.0) -> None:
        self.sleep_s, self.cold, self.cold_s = sleep_s, cold, cold_s
        self.seen = []
        self.calls = []  # (start_ns, end_ns) of every run(), measured inside it

    def run(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter_ns()
        time.sleep(self.cold_s if len(self.seen) < self.cold else self.sleep_s)
        self.seen.append(batch.copy())
        self.calls.append((start, time.perf_counter_ns()))
        return batch


def timed_call_bounds(runner: SleepRunner, result: dict, before_ns: int, after_ns: int):
    """For each timing of `result` (the last len(timings) calls of `runner`): the call's own
    duration and the time from the end of the call before it to the start of the one after it
    (`before_ns` / `after_ns`: the test's clock around measure()), in ms. A timing taken around
    that one call lies between the two whatever the load; more than the upper bound means it
    spans another call or time outside the loop."""
    calls = runner.calls
    first = len(calls) - len(result["timings_ms"])
    ends = [before_ns] + [end for _, end in calls] + [after_ns]
    starts = [before_ns] + [start for start, _ in calls] + [after_ns]
    own, gap = [], []
    for k in range(first, len(calls)):
        start, end = calls[k]
        own.append((end - start) / 1e6)
        gap.append((starts[k + 2] - ends[k]) / 1e6)  # next call's start - previous call's end
    return own, gap


# --- runners ---------------------------------------------------------------------------

def test_ort_runner_matches_numpy_reference(convnet, samples):
    path, w = convnet
    with OrtRunner(path, intra_op_threads=1) as runner:
        for batch in (samples[:1], samples):  # dynamic batch dim
            out = runner.run(batch)
            assert out.dtype == np.float32 and out.shape == (len(batch), 5)
            np.testing.assert_allclose(out, reference(batch, w), rtol=1e-4, atol=1e-5)
        assert runner.input_shape == [None, 3, 8, 8]
        assert runner.describe()["input"] == {"name": "x", "shape": [None, 3, 8, 8],
                                              "dtype": "float32"}


def test_ort_runner_applies_thread_settings(convnet):
    path, _ = convnet
    runner = OrtRunner(path, intra_op_threads=2, inter_op_threads=1)
    opts = runner.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
    assert str(opts.execution_mode).endswith("ORT_SEQUENTIAL")
    assert str(opts.graph_optimization_level).endswith("ORT_ENABLE_ALL")
    d = runner.describe()
    assert (d["backend"], d["intra_op_threads"], d["inter_op_threads"]) == ("onnxruntime", 2, 1)
    assert d["providers"] == ["CPUExecutionProvider"]
    assert d["execution_mode"] == "ORT_SEQUENTIAL"

    default = OrtRunner(path)  # None -> the CPUs this process may use, recorded as a number
    assert default.describe()["intra_op_threads"] == default_intra_op_threads() >= 1
    assert default.session.get_session_options().intra_op_num_threads == default_intra_op_threads()


def test_ort_runner_refuses_a_provider_it_does_not_have(convnet):
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the TensorRT provider")
    with pytest.raises(RunnerUnavailable, match="TensorrtExecutionProvider.*onnxruntime-gpu"):
        OrtRunner(convnet[0], providers=["tensorrt"])


def test_trt_runner_without_tensorrt_names_the_install(tmp_path):
    try:
        import pycuda.driver  # noqa: F401
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt and pycuda are installed here")
    except ImportError:
        pass
    with pytest.raises(RunnerUnavailable, match="pip install tensorrt pycuda.*JetPack"):
        TrtRunner(str(tmp_path / "model.engine"))
    with pytest.raises(RunnerUnavailable):
        make_runner(str(tmp_path / "model.engine"), backend="tensorrt")


def test_make_runner_and_bad_paths(convnet, tmp_path):
    assert isinstance(make_runner(convnet[0], "ort", intra_op_threads=1), OrtRunner)
    with pytest.raises(DeployError, match="unknown backend"):
        make_runner(convnet[0], backend="tvm")
    with pytest.raises(DeployError, match="model not found"):
        OrtRunner(str(tmp_path / "missing.onnx"))
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(DeployError, match="cannot load"):
        OrtRunner(str(tmp_path / "garbage.onnx"))


# --- statistics ------------------------------------------------------------------------

def test_percentiles_are_numpy_linear():
    data = np.arange(1.0, 11.0)  # 1..10: p90 sits between 9 and 10 at rank 8.1
    assert percentiles(data) == pytest.approx({"p50": 5.5, "p90": 9.1, "p95": 9.55, "p99": 9.91})
    skewed = np.random.default_rng(3).lognormal(size=1001)
    p50, p90, p999 = np.percentile(skewed, [50, 90, 99.9], method="linear")
    got = percentiles(skewed, (50, 90, 99.9))
    assert got == pytest.approx({"p50": p50, "p90": p90, "p99.9": p999})


def test_bootstrap_ci_contains_median_and_is_deterministic():
    data = np.random.default_rng(4).lognormal(size=500)
    lo, hi = bootstrap_median_ci(data, seed=7)
    assert lo < np.median(data) < hi
    assert (lo, hi) == bootstrap_median_ci(data, seed=7)
    assert (lo, hi) != bootstrap_median_ci(data, seed=8)
    wide = bootstrap_median_ci(data[:50], seed=7)
    assert wide[1] - wide[0] > hi - lo  # fewer samples, wider interval


def test_tail_percentile_cis_come_from_the_same_resamples_and_bracket_their_percentile():
    data = np.random.default_rng(5).lognormal(size=2000)
    cis = bootstrap_cis(data, (50, 90, 99), seed=2)
    # one set of resamples for all three, drawn as the median's always were
    rows = data[np.random.default_rng(2).integers(0, data.size, size=(1000, data.size))]
    for q in (50, 90, 99):
        ref = np.percentile(np.percentile(rows, q, axis=1), [2.5, 97.5])
        assert cis[f"p{q}"] == pytest.approx(tuple(ref), rel=1e-12)
    for q in (50, 90, 99):
        lo, hi = cis[f"p{q}"]
        assert lo < np.percentile(data, q) < hi
    assert cis["p99"][1] - cis["p99"][0] > cis["p50"][1] - cis["p50"][0]  # the tail is noisier
    s = summarize(data, seed=2)
    assert s["p90_ci95"] == list(cis["p90"]) and s["p99_ci95"] == list(cis["p99"])


def test_summarize_fields():
    data = [3.0, 1.0, 2.0, 4.0, 10.0]
    s = summarize(data)
    assert s["mean"] == 4.0 and s["min"] == 1.0 and s["max"] == 10.0 and s["p50"] == 3.0
    assert s["sd"] == pytest.approx(np.std(data, ddof=1))
    # A percentile bootstrap of 5 samples need not contain their median (its ends are
    # percentiles of resampled medians); what holds by construction: an ordered interval
    # within the sample's range, the one bootstrap_median_ci computes.
    lo, hi = s["median_ci95"]
    assert s["min"] <= lo <= hi <= s["max"]
    assert (lo, hi) == bootstrap_median_ci(data, 0.95, 1000, 0)
    with pytest.raises(ValueError):
        summarize([])


# --- harness ---------------------------------------------------------------------------

def test_measure_honours_min_iters(convnet, samples):
    runner = OrtRunner(convnet[0], intra_op_threads=1)
    settings = MeasureSettings(warmup_s=0, warmup_iters=3, min_iters=30, min_s=0)
    r = measure(runner, samples, 2, settings)
    assert r["iterations"] == 30 == len(r["timings_ms"])
    assert r["stop_reason"] == "min_reached" and r["warmup"]["iterations"] == 3
    assert r["latency_ms"]["p50"] == pytest.approx(np.percentile(r["timings_ms"], 50), rel=1e-3)
    assert r["throughput_ips"] == pytest.approx(2 * 30 / r["duration_s"])


def test_measure_honours_min_s_and_caps(convnet, samples):
    runner = OrtRunner(convnet[0], intra_op_threads=1)
    r = measure(runner, samples, 1, MeasureSettings(warmup_s=0, min_iters=1, min_s=0.2))
    # min_s, not min_iters, ended it, at the first timing past 0.2 s: the timings before the
    # last one sum to less (each lies inside the elapsed time the harness compared to min_s),
    # however fast or slow this machine runs them.
    assert r["stop_reason"] == "min_reached" and r["duration_s"] >= 0.2
    assert sum(r["timings_ms"][:-1]) < 200.0
    # max_iters ends it long before min_s / max_s could (60 s: no load makes 10 runs that slow).
    capped = measure(runner, samples, 1, MeasureSettings(warmup_s=0, min_iters=10, min_s=60,
                                                         max_iters=10, max_s=60))
    assert capped["iterations"] == 10 and capped["stop_reason"] == "max_iters"
    assert "timings_ms" not in measure(runner, samples, 1, QUICK, keep_timings=False)


def test_warmup_by_time_runs_before_measuring_and_timings_are_the_run():
    runner = SleepRunner(0.01)
    settings = MeasureSettings(warmup_s=0.15, warmup_iters=1, min_iters=5, min_s=0)
    before = time.perf_counter_ns()
    r = measure(runner, np.zeros((4, 1, 2, 2), np.float32), 1, settings)
    after = time.perf_counter_ns()
    warm = r["warmup"]
    assert len(runner.seen) == warm["iterations"] + r["iterations"] == warm["iterations"] + 5
    # Time, not count (1), ended the warm-up, at the first call that took it past 0.15 s: the
    # calls before that one took less than 0.15 s by the runner's own clock.
    warm_calls = [(end - start) / 1e9 for start, end in runner.calls[:warm["iterations"]]]
    assert warm["duration_s"] >= 0.15 and warm["duration_s"] >= sum(warm_calls)
    assert sum(warm_calls[:-1]) < 0.15
    # Each timing covers its whole call (as the runner timed it from inside) and never reaches
    # into the calls either side of it: bounds that hold whatever the machine's load.
    own, gap = timed_call_bounds(runner, r, before, after)
    for timing, inside, outside in zip(r["timings_ms"], own, gap, strict=True):
        assert inside - 1e-5 <= timing <= outside + 1e-5, (timing, inside, outside)  # 1e-5: rounding
    # ... and little else: what the harness adds to a call, at its least, is a small part of the
    # call (a context switch can land inside one iteration's few microseconds, not in all five;
    # a harness doing work inside its timed region adds that work to every one).
    added = [timing - inside for timing, inside in zip(r["timings_ms"], own, strict=True)]
    assert min(added) < 0.1 * min(own), (added, own)


def test_cold_runs_are_left_in_warmup():
    runner = SleepRunner(0.001, cold=3, cold_s=0.08)
    settings = MeasureSettings(warmup_s=0, warmup_iters=3, min_iters=10, min_s=0)
    before = time.perf_counter_ns()
    r = measure(runner, np.zeros((2, 1, 2, 2), np.float32), 1, settings)
    after = time.perf_counter_ns()
    assert r["warmup"]["iterations"] == 3 and len(runner.calls) == 13
    cold = sum(end - start for start, end in runner.calls[:3]) / 1e9
    assert cold >= 0.24 and r["warmup"]["duration_s"] >= cold
    # The 10 timings are calls 4..13, each within its own call's neighbourhood: none reaches
    # back into the three cold calls, however long any call took on this machine.
    own, gap = timed_call_bounds(runner, r, before, after)
    assert len(own) == 10
    for timing, inside, outside in zip(r["timings_ms"], own, gap, strict=True):
        assert inside - 1e-5 <= timing <= outside + 1e-5, (timing, inside, outside)


def test_batches_cycle_through_the_real_inputs():
    inputs = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1) * np.ones((1, 1, 2, 2), np.float32)
    ids = [b[:, 0, 0, 0].tolist() for b in assemble_batches(inputs, 2)]
    assert ids == [[0, 1], [2, 3], [4, 0]]
    assert all(b.flags["C_CONTIGUOUS"] and b.dtype == np.float32
               for b in assemble_batches(inputs.astype(np.float64), 3))

    runner = SleepRunner(0.0)
    measure(runner, inputs, 2, MeasureSettings(warmup_s=0, warmup_iters=0, min_iters=6, min_s=0))
    assert [b[:, 0, 0, 0].tolist() for b in runner.seen] == [[0, 1], [2, 3], [4, 0]] * 2


def test_single_stream_and_batch_sweep(convnet, samples):
    runner = OrtRunner(convnet[0], intra_op_threads=1)
    ss = single_stream(runner, samples, QUICK)
    assert ss["batch_size"] == 1 and ss["scenario"] == "SingleStream"
    assert ss["p90_ms"] == ss["latency_ms"]["p90"]
    sweep = batch_sweep(runner, samples, (1, 4), QUICK, keep_timings=False)
    assert [r["batch_size"] for r in sweep] == [1, 4]
    for r in sweep:
        lat = r["latency_ms"]
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]


class ThrottlingRunner(SleepRunner):
    """A device that clocks down as it heats: each run sleeps a little longer than the last."""

    def __init__(self, sleep_s: float, step_s: float) -> None:
        super().__init__(sleep_s)
        self.step_s = step_s

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.sleep_s += self.step_s
        return super().run(batch)


def test_sustain_reports_the_drift_of_a_device_that_slows_down_over_time(samples):
    from deploy.harness import sustain

    temps = iter(range(40, 100))
    r = sustain(ThrottlingRunner(0.001, 0.0002), samples, 2, seconds=0.6, windows=3,
                temperatures=lambda: float(next(temps)))
    w = r["windows"]
    assert len(w) == 3 and all(x["iterations"] >= 1 for x in w)
    assert [x["max_temp_c"] for x in w] == [40.0, 41.0, 42.0]
    assert w[0]["t_s"] < w[1]["t_s"] < w[2]["t_s"] and w[2]["t_s"] >= 0.6
    assert w[0]["p50_ms"] < w[1]["p50_ms"] < w[2]["p50_ms"]
    assert r["drift_pct"] == pytest.approx(100 * (w[2]["p50_ms"] - w[0]["p50_ms"]) / w[0]["p50_ms"], abs=0.01)
    assert r["drift_pct"] > 20 and r["steady_p50_ms"] == w[2]["p50_ms"] and r["batch_size"] == 2
    steady = sustain(SleepRunner(0.002), samples, 2, seconds=0.3, windows=3)
    assert "max_temp_c" not in steady["windows"][0] and abs(steady["drift_pct"]) < 50
    with pytest.raises(DeployError, match="--sustain must be > 0"):
        sustain(SleepRunner(0.001), samples, 1, seconds=0)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_iters"):
        MeasureSettings(min_iters=10, max_iters=5)
    with pytest.raises(ValueError, match="warmup_s"):
        MeasureSettings(warmup_s=-1)


# --- environment -----------------------------------------------------------------------

def _fake_jetson(root, locked: bool) -> None:
    def put(rel: str, text: str, mode: int = 0o644) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)

    put("etc/nv_tegra_release", "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, "
        "EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n")
    put("proc/device-tree/model", "NVIDIA Jetson AGX Orin Developer Kit\x00")
    put("proc/cpuinfo", "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\n")
    put("sys/devices/system/cpu/online", "0-3\n")
    for cpu in range(4):
        d = f"sys/devices/system/cpu/cpu{cpu}/"
        put(d + "cpufreq/scaling_governor", "schedutil\n")
        put(d + "cpufreq/scaling_min_freq", "2201600\n" if locked else "115200\n")
        put(d + "cpufreq/scaling_max_freq", "2201600\n")
        put(d + "topology/core_cpus_list", f"{cpu}\n")
    put("sys/class/thermal/thermal_zone0/type", "CPU-therm\n")
    put("sys/class/thermal/thermal_zone0/temp", "47500\n")
    put("sys/class/thermal/thermal_zone1/type", "GPU-therm\n")
    put("sys/class/thermal/thermal_zone1/temp", "88000\n")
    put("usr/sbin/nvpmodel", "#!/bin/sh\necho 'NV Power Mode: MAXN'\necho 0\n", 0o755)
    gpu = "GPU MinFreq=1300500000" if locked else "GPU MinFreq=306000000"
    put("usr/bin/jetson_clocks", textwrap.dedent(f"""\
        #!/bin/sh
        [ "$1" = --show ] || exit 1
        echo 'SOC family:tegra234  Machine:Jetson AGX Orin'
        echo 'cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600'
        echo '{gpu} MaxFreq=1300500000 CurrentFreq=1300500000'
        echo 'EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1'
        """), 0o755)


def test_envinfo_on_a_fake_unlocked_jetson(tmp_path):
    _fake_jetson(tmp_path, locked=False)
    info = capture(root=str(tmp_path))
    jetson = info["jetson"]
    assert jetson["l4t_release"] == "35.4.1"
    assert jetson["model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert jetson["nvpmodel"] == {"mode": "MAXN", "id": 0}
    assert jetson["jetson_clocks"]["locked"] is False
    assert jetson["jetson_clocks"]["parts"] == {"cpu": True, "gpu": False, "emc": True}
    cpu = info["cpu"]
    assert cpu["model"] == "ARM Cortex-A78AE"
    assert (cpu["logical_cores"], cpu["physical_cores"]) == (4, 4)
    assert cpu["governor"] == {"schedutil": 4}
    assert [z["temp_c"] for z in info["thermal"]] == [47.5, 88.0]
    text = "\n".join(info["warnings"])
    assert "clocks not locked" in text and "sudo jetson_clocks" in text
    assert "governor is schedutil" in text and "GPU-therm" in text
    json.dumps(info)


def test_envinfo_on_a_fake_locked_jetson_and_an_empty_tree(tmp_path):
    _fake_jetson(tmp_path / "locked", locked=True)
    info = capture(root=str(tmp_path / "locked"))
    assert info["jetson"]["jetson_clocks"]["locked"] is True
    assert not any("clocks" in w or "governor" in w for w in info["warnings"])

    (tmp_path / "empty").mkdir()
    bare = capture(root=str(tmp_path / "empty"))  # nothing to read: Nones, no exception
    assert bare["jetson"] is None and bare["thermal"] is None and bare["warnings"] == []
    assert bare["cpu"]["governor"] is None
    assert bare["libraries"]["numpy"] == np.__version__


# --- command line and isolation --------------------------------------------------------

def _deploy(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "deploy"] + list(args), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_bench_writes_the_documented_json(convnet, samples, tmp_path):
    quick = ["--threads", "1", "--warmup-s", "0", "--warmup-iters", "2", "--min-s", "0.05",
             "--min-iters", "5"]
    out = tmp_path / "bench.json"
    proc = _deploy("bench", convnet[0], "--batch", "1", "--batch", "3", "--out", str(out), *quick)
    assert proc.returncode == 0, proc.stderr
    assert "p90" in proc.stdout and "img/s" in proc.stdout
    doc = json.loads(out.read_text())
    assert set(doc) == {"schema", "schema_version", "created", "environment", "model", "inputs",
                        "runner", "settings", "results"}
    assert (doc["schema"], doc["schema_version"]) == ("edgekd.bench", 1)
    with open(convnet[0], "rb") as f:
        assert doc["model"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert doc["model"]["input_shape"] == [None, 3, 8, 8]
    assert doc["inputs"]["source"] == "random" and doc["inputs"]["sha256"] is None
    assert doc["runner"]["intra_op_threads"] == 1
    assert doc["settings"]["min_iters"] == 5
    assert [r["batch_size"] for r in doc["results"]] == [1, 3]
    assert doc["results"][0]["scenario"] == "SingleStream"
    assert all(len(r["timings_ms"]) == r["iterations"] >= 5 for r in doc["results"])
    assert "warnings" in doc["environment"]

    npy = tmp_path / "samples.npy"
    np.save(str(npy), samples)
    proc = _deploy("bench", convnet[0], "--inputs", str(npy), "--out", str(out), *quick)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["inputs"]["sha256"] == hashlib.sha256(npy.read_bytes()).hexdigest()
    assert doc["inputs"]["shape"] == [6, 3, 8, 8]
    assert not list(tmp_path.glob(".bench.json.*"))  # no temp file left by the atomic write
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make, not mkstemp's 0600

    # --sustain: the largest batch runs on without pause; the drift is printed beside the figures
    proc = _deploy("bench", convnet[0], "--batch", "1", "--batch", "3", "--sustain", "0.5", "--out", str(out), *quick)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    s = doc["sustained"]
    assert s["seconds"] == 0.5 and s["batch_size"] == 3 and len(s["windows"]) == 10
    assert sum(w["iterations"] for w in s["windows"]) >= 10 and s["windows"][-1]["t_s"] >= 0.5
    assert "sustained 0.5 s at batch 3: p50" in proc.stdout


def test_cli_user_errors_are_one_line(convnet, tmp_path):
    proc = _deploy("bench", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "b.json"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: model not found") and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.npy"
    np.save(str(bad), np.zeros((2, 3, 9, 9), np.float32))
    proc = _deploy("bench", convnet[0], "--inputs", str(bad), "--out", str(tmp_path / "b.json"))
    assert proc.returncode == 2 and "the model takes" in proc.stderr
    assert not (tmp_path / "b.json").exists()


def test_deploy_never_imports_torch_or_edgekd(convnet):
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import deploy, deploy.runners, deploy.harness, deploy.envinfo, deploy.bench
        import deploy.__main__
        runner = deploy.OrtRunner(sys.argv[1], intra_op_threads=1)
        deploy.measure(runner, np.zeros((1, 3, 8, 8), np.float32), 1,
                       deploy.MeasureSettings(warmup_s=0, min_iters=2, min_s=0))
        deploy.capture()
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "edgekd"))
        print(bad)
        """)
    proc = subprocess.run([sys.executable, "-c", code, convnet[0]], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
