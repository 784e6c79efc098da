"""`edgekd bench` through the real CLI: ONNX Runtime and PyTorch-eager runners on a digits
run's real test images, the JSON and PNG outputs, and `--compare` (teacher vs student next to
the papers' claimed 10.8x)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deploy.stats import bootstrap_median_ci
from edgekd.cli import cli

# Tiny measuring budgets: these tests check the plumbing and the documents, not the numbers.
# Iterations (and 20 ms) end each measurement; the time cap is far out of reach so that a
# loaded machine still measures the 5 iterations the tests count on.
FAST = ["--warmup-s", "0", "--warmup-iters", "2", "--min-s", "0.02", "--min-iters", "5", "--max-s", "600"]
LATENCY_KEYS = {"mean", "sd", "min", "p50", "p90", "p95", "p99", "max", "median_ci95", "p90_ci95", "p99_ci95"}


def _bench(*args):
    return CliRunner().invoke(cli, ["bench", *args, *FAST])


@pytest.fixture(scope="module")
def int8_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run with INT8 (QDQ) exports of both models, calibrated on its images."""
    from calibration import quantize_static_qdq

    run = tmp_path_factory.mktemp("int8-run") / "digits"
    run.mkdir()
    for f in ("config.yaml", "report.json", "teacher.pt", "student.pt", "teacher.onnx", "student.onnx",
              "samples.npy", "samples_labels.npy", "data.json"):
        shutil.copy(tiny_run / f, run / f)
    images = np.load(run / "samples.npy")
    for role in ("teacher", "student"):
        quantize_static_qdq(run / f"{role}.onnx", run / f"{role}.int8.onnx", images)
    return run


def test_bench_onnx_and_checkpoint_table_json_and_plot(tiny_run, tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    r = _bench(str(tiny_run / "student.onnx"), str(tiny_run / "student.pt"), "--batch", "1", "--batch", "4",
               "--threads", "1", "--out", str(out), "--plot", str(png))
    assert r.exit_code == 0, r.output
    assert "student.onnx" in r.stdout and "student.pt" in r.stdout and "p90 ms" in r.stdout

    doc = json.loads(out.read_text())
    assert doc["schema"] == "edgekd.bench-set" and doc["schema_version"] == 1 and doc["threads"] == 1
    ort_entry, torch_entry = doc["entries"]
    assert (ort_entry["backend"], torch_entry["backend"]) == ("onnxruntime", "torch")
    samples = np.load(tiny_run / "samples.npy")
    for entry in doc["entries"]:
        bench = entry["document"]
        assert bench["schema"] == "edgekd.bench" and entry["precision"] == "fp32"
        # fed the run's real test images found beside the model, not noise
        assert bench["inputs"]["source"] == "file" and bench["inputs"]["shape"] == list(samples.shape)
        assert [res["batch_size"] for res in bench["results"]] == [1, 4]
        for res in bench["results"]:
            assert LATENCY_KEYS <= set(res["latency_ms"]) and res["latency_ms"]["p50"] > 0
            assert len(res["timings_ms"]) == res["iterations"] >= 5
        assert bench["results"][0]["scenario"] == "SingleStream"
    assert ort_entry["document"]["runner"]["intra_op_threads"] == 1
    assert torch_entry["document"]["runner"]["intra_op_threads"] == 1
    assert torch_entry["document"]["runner"]["arch"] == "mbv2_cifar_trunc13"

    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_compare_prints_measured_ratio_at_64_and_1_next_to_the_claim(int8_run, tmp_path):
    out, png = tmp_path / "compare.json", tmp_path / "compare.png"
    r = _bench("--compare", str(int8_run), "--threads", "1", "--out", str(out), "--plot", str(png))
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == "edgekd.latency-compare"
    report = json.loads((int8_run / "report.json").read_text())
    assert doc["mac_ratio"] == round(report["teacher"]["macs"] / report["student"]["macs"], 3)

    pairs = {(row["backend"], row["teacher_precision"], row["student_precision"], row["batch"]): row
             for row in doc["rows"]}
    for batch in (64, 1):  # the papers' unit first, then single-stream
        for pair in (("torch", "fp32", "fp32"), ("onnxruntime", "fp32", "fp32"),
                     ("onnxruntime", "int8", "int8"), ("onnxruntime", "fp32", "int8")):
            row = pairs[pair + (batch,)]
            # the ratio is the measured medians' ratio, from the documents that are kept
            t = doc["documents"][f"{pair[0]}/{pair[1]}/teacher"]
            s = doc["documents"][f"{pair[0]}/{pair[2]}/student"]
            tres = next(x for x in t["results"] if x["batch_size"] == batch)
            sres = next(x for x in s["results"] if x["batch_size"] == batch)
            tl, sl = tres["latency_ms"], sres["latency_ms"]
            assert row["speedup"] == pytest.approx(tl["p50"] / sl["p50"])
            # Each median's interval is the percentile bootstrap of that run's own timings (as
            # few as 5 here), and the speed-up's combines them: slowest teacher over fastest
            # student median, and back. A 5-sample bootstrap interval need not contain the
            # median, so neither need this one contain the speed-up; what holds by
            # construction: each end is a percentile of resampled medians, so lies within the
            # timings' min and max, the ends are ordered, and so is their ratio.
            for res, lat, doc_ in ((tres, tl, t), (sres, sl, s)):
                ci = bootstrap_median_ci(res["timings_ms"], 0.95, doc_["settings"]["bootstrap_resamples"],
                                         doc_["settings"]["seed"])
                assert lat["median_ci95"] == pytest.approx(list(ci), rel=1e-4, abs=1e-4)  # 5-decimal timings
                assert lat["min"] <= lat["median_ci95"][0] <= lat["median_ci95"][1] <= lat["max"]
            (t_lo, t_hi), (s_lo, s_hi) = tl["median_ci95"], sl["median_ci95"]
            lo, hi = row["speedup_ci95"]
            assert (lo, hi) == pytest.approx((t_lo / s_hi, t_hi / s_lo))
            assert tl["min"] / sl["max"] <= lo <= hi <= tl["max"] / sl["min"]
            assert tl["min"] / sl["max"] <= row["speedup"] <= tl["max"] / sl["min"]
    assert doc["documents"]["onnxruntime/int8/student"]["model"]["path"].endswith("student.int8.onnx")

    # printed: the claim with the MAC ratio, then one line per batch size with every backend
    text = " ".join(r.stdout.split())
    assert "claimed: 140 ms -> 13 ms per batch of 64 = 10.8x" in text
    assert f"MAC ratio teacher/student = {doc['mac_ratio']:.2f}x" in text
    for batch in (64, 1):
        line = re.search(rf"measured at batch {batch}: (.*)", r.stdout).group(1)
        torch_ratio = pairs[("torch", "fp32", "fp32", batch)]["speedup"]
        ort_ratio = pairs[("onnxruntime", "fp32", "fp32", batch)]["speedup"]
        assert f"torch eager {torch_ratio:.2f}x" in line and f"ONNX Runtime {ort_ratio:.2f}x" in line
        assert "ONNX Runtime int8" in line
    assert r.stdout.index("measured at batch 64") < r.stdout.index("measured at batch 1:")
    with Image.open(png) as im:
        assert im.format == "PNG"


def test_compare_without_int8_exports_has_fp32_rows_only(tiny_run, tmp_path):
    r = _bench("--compare", str(tiny_run), "--batch", "2", "--threads", "1", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {(row["backend"], row["student_precision"]) for row in doc["rows"]} == {
        ("torch", "fp32"), ("onnxruntime", "fp32")}
    assert [row["batch"] for row in doc["rows"]] == [2, 2]


@pytest.mark.parametrize("case, args, message", [
    ("missing", ["{tmp}/nope.onnx"], "model not found"),
    ("kind", ["{run}/config.yaml"], "measures .onnx models"),
    ("both", ["{run}/student.onnx", "--compare", "{run}"], "not both"),
    ("none", [], "give at least one model"),
    ("unfinished", ["--compare", "{tmp}"], "has no teacher.pt"),
    ("settings", ["{run}/student.onnx", "--min-iters", "-1"], "min_iters must be >= 0"),
])
def test_bench_user_errors_are_one_line(tiny_run, tmp_path, case, args, message):
    r = CliRunner().invoke(cli, ["bench", *[a.format(tmp=tmp_path, run=tiny_run) for a in args]])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.stdout == ""
    assert r.stderr.count("error:") == 1 and "\n" not in r.stderr.strip()
    assert message in r.stderr
