"""The device side of `edgekd deploy`, without SSH: the bundle and its verification, the
`run-bundle` verb (accuracy check + harness on the bundle's real images), power sampling from
a tegrastats stream, and the `bench` scenarios. Real ONNX Runtime sessions on a digits run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from deploy.bundle import build_bundle
from deploy.harness import MeasureSettings, measure
from deploy.power import PowerSampler, parse_tegrastats, summarize_power
from deploy.runners import OrtRunner
from deploy.verify import BundleError, verify_bundle

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--warmup-s", "0", "--warmup-iters", "1", "--min-s", "0", "--min-iters", "3"]
# Real tegrastats lines: Orin on JetPack 5/6 (mW rails), Nano on JetPack 4 (bare numbers).
ORIN = ("RAM 2448/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@1510,1%@1510,0%@1510,"
        "0%@1510] EMC_FREQ 0% GR3D_FREQ 0% cpu@45.5C soc2@44.1C VDD_IN 5034mW/4990mW "
        "VDD_CPU_GPU_CV 481mW/470mW VDD_SOC 1441mW/1440mW")
NANO = ("RAM 1200/3964MB (lfb 100x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU "
        "[3%@102,2%@102,off,off] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@29C CPU@31.5C "
        "PMIC@100C GPU@30.5C AO@37C thermal@30.75C POM_5V_IN 1834/1834 POM_5V_GPU 0/0 POM_5V_CPU 270/270")


def _deploy(*args, cwd=None):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "deploy", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=dict(os.environ, PYTHONPATH=path), timeout=300)


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    """A bundle of the tiny run's two models, samples and labels; returns (folder, manifest)."""
    folder = tmp_path_factory.mktemp("bundle") / "digits"
    models = {role: {"path": str(tiny_run / f"{role}.onnx"), "role": role, "precision": "fp32"}
              for role in ("teacher", "student")}
    manifest = build_bundle(str(folder), models, str(tiny_run / "samples.npy"),
                            str(tiny_run / "samples_labels.npy"), "digits", source={"run": "digits"})
    return folder, manifest


def _copy(bundle, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle[0], dst)
    return dst


def test_bundle_lists_every_file_with_its_sha256_and_a_stable_id(bundle, tiny_run, tmp_path):
    folder, manifest = bundle
    files = manifest["files"]
    assert {"models/teacher.onnx", "models/student.onnx", "data/samples.npy", "data/samples_labels.npy",
            "deploy/__main__.py", "deploy/verify.py", "deploy/harness.py", "calibration/calibset.py"} <= set(files)
    assert (folder / "models" / "student.onnx").read_bytes() == (tiny_run / "student.onnx").read_bytes()
    # The workstation's own predictions travel along, for the device to agree with.
    y = np.load(tiny_run / "samples_labels.npy")
    student = manifest["models"]["student"]
    assert len(student["workstation_predictions"]) == len(y)
    assert student["workstation_top1"] == round(100.0 * float(np.mean(np.asarray(student["workstation_predictions"]) == y)), 4)
    # Same inputs, same bundle id (no times in the manifest): a retry resumes the same folder.
    again = build_bundle(str(tmp_path / "again"), {k: {"path": str(tiny_run / f"{k}.onnx"), "role": k,
                                                       "precision": "fp32"} for k in ("teacher", "student")},
                         str(tiny_run / "samples.npy"), str(tiny_run / "samples_labels.npy"), "digits",
                         source={"run": "digits"})
    assert again["manifest_sha256"] == manifest["manifest_sha256"]


@pytest.mark.parametrize("damage, message", [
    (lambda b: open(b / "models" / "student.onnx", "ab").write(b"\0"), "has .* bytes, the manifest says"),
    (lambda b: (b / "deploy" / "harness.py").write_text((b / "deploy" / "harness.py").read_text().replace("def ", "def  ", 1)),
     "bytes, the manifest says|does not match its sha256"),
    (lambda b: (b / "data" / "samples.npy").unlink(), "is missing"),
    (lambda b: (b / "models" / "extra.onnx").write_bytes(b"x"), "files the manifest does not list"),
    (lambda b: (b / "manifest.json").unlink(), "has no manifest.json"),
    (lambda b: (b / "manifest.json").write_text("{"), "not valid JSON"),
])
def test_a_damaged_bundle_never_verifies_and_never_runs(bundle, tmp_path, damage, message):
    folder = _copy(bundle, tmp_path)
    damage(folder)
    with pytest.raises(BundleError, match=message):
        verify_bundle(str(folder))
    assert _deploy("verify", folder).returncode == 3
    out = tmp_path / "r.json"
    proc = _deploy("run-bundle", folder, "--out", out, *FAST)
    assert proc.returncode == 2 and "refusing to run" in proc.stderr
    assert not out.exists()


def test_a_manifest_may_not_point_outside_its_bundle(bundle, tmp_path):
    folder = _copy(bundle, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["../outside.py"] = {"sha256": "0" * 64, "bytes": 0}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unsafe or malformed entry"):
        verify_bundle(str(folder))


def test_verify_expects_the_manifest_the_sender_built(bundle):
    folder, manifest = bundle
    assert verify_bundle(str(folder), manifest["manifest_sha256"])["name"] == "digits"
    with pytest.raises(BundleError, match="is not the bundle that was sent"):
        verify_bundle(str(folder), "f" * 64)


def test_run_bundle_checks_accuracy_and_measures_every_model(bundle, tmp_path):
    folder, manifest = bundle
    out = tmp_path / "results.json"
    proc = _deploy("run-bundle", folder, "--out", out, "--batch", "1", "--batch", "4", "--threads", "1",
                   *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "edgekd.run-bench" and doc["bundle"]["id"] == manifest["manifest_sha256"]
    assert set(doc["models"]) == {"teacher", "student"}
    for key, m in doc["models"].items():
        assert m["schema"] == "edgekd.bench" and [r["batch_size"] for r in m["results"]] == [1, 4]
        assert m["runner"]["intra_op_threads"] == 1
        assert m["inputs"]["source"] == "file" and m["inputs"]["path"].endswith("data/samples.npy")
        assert m["accuracy"]["agreement"] == 100.0
        assert m["accuracy"]["top1"] == m["accuracy"]["workstation_top1"] == manifest["models"][key]["workstation_top1"]
        assert f"{key}: top-1" in proc.stdout
    # Running it wrote nothing into the verified folder: it still verifies.
    assert verify_bundle(str(folder))["manifest_sha256"] == manifest["manifest_sha256"]


def test_run_bundle_user_errors(bundle, tmp_path):
    folder, _ = bundle
    out = tmp_path / "r.json"
    for args, message in [
        (["--model", "nope"], "bundle has no model nope"),
        (["--backend", "tensorrt", "--precision", "int8"], "needs a calibration set"),
        (["--backend", "tensorrt", "--threads", "2"], "onnxruntime only"),
    ] + ([(["--provider", "cuda"], "CUDAExecutionProvider")]
         if "CUDAExecutionProvider" not in ort.get_available_providers() else []):
        proc = _deploy("run-bundle", folder, "--out", out, *args, *FAST)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and re.search(message, proc.stderr)
        assert not out.exists()


def test_run_bundle_tensorrt_without_tensorrt_names_the_install(bundle, tmp_path, without_tensorrt):
    # Runs where TensorRT is installed too: the device process cannot import it (conftest).
    proc = _deploy("run-bundle", bundle[0], "--out", tmp_path / "r.json", "--backend", "tensorrt", *FAST)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "TensorRT unavailable" in proc.stderr and "python3-libnvinfer" in proc.stderr
    assert "No module named 'tensorrt'" in proc.stderr and not (tmp_path / "r.json").exists()


def test_tegrastats_lines_parse_into_rails():
    assert parse_tegrastats(ORIN) == {"VDD_IN": 5034.0, "VDD_CPU_GPU_CV": 481.0, "VDD_SOC": 1441.0}
    assert parse_tegrastats(NANO) == {"POM_5V_IN": 1834.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 270.0}
    assert parse_tegrastats("RAM 2448/7620MB SWAP 0/3810MB") == {}
    s = summarize_power([(0.0, {"POM_5V_IN": 1800.0}), (0.1, {"POM_5V_IN": 2000.0})], "tegrastats", 100)
    assert s["input_rail"] == "POM_5V_IN" and s["input_mean_mw"] == 1900.0
    assert s["rails_mw"]["POM_5V_IN"] == {"mean": 1900.0, "max": 2000.0} and s["samples"] == 2


def test_power_sampled_during_the_timed_phase_gives_energy_per_image(bundle, tmp_path):
    """A tegrastats stand-in (a real process printing Orin lines every 20 ms) sampled by the
    harness around the timed loop; off a Jetson `auto` finds nothing and adds nothing."""
    fake = tmp_path / "tegrastats"
    fake.write_text(f"#!/bin/sh\nwhile :; do echo '{ORIN}'; sleep 0.02; done\n")
    fake.chmod(0o755)
    runner = OrtRunner(str(bundle[0] / "models" / "student.onnx"), intra_op_threads=1)
    x = np.load(bundle[0] / "data" / "samples.npy")
    settings = MeasureSettings(warmup_s=0, warmup_iters=1, min_s=0.3, min_iters=3)
    try:
        r = measure(runner, x, 2, settings, monitor=PowerSampler("tegrastats", interval_ms=20, tegrastats=str(fake)))
        plain = measure(runner, x, 2, settings, monitor=PowerSampler("auto"))
    finally:
        runner.close()
    p = r["power"]
    assert p["source"] == "tegrastats" and p["samples"] >= 3 and p["input_rail"] == "VDD_IN"
    assert p["rails_mw"]["VDD_IN"]["mean"] == 5034.0
    assert p["energy_mj_per_image"] == pytest.approx(5034.0 * r["duration_s"] / (2 * r["iterations"]), rel=1e-6)
    if shutil.which("tegrastats") is None:
        assert "power" not in plain


def test_bench_scenarios(bundle, tmp_path):
    model = bundle[0] / "models" / "student.onnx"
    samples = bundle[0] / "data" / "samples.npy"
    proc = _deploy("bench", model, "--inputs", samples, "--scenario", "sweep", "--no-timings",
                   "--out", tmp_path / "s.json", *FAST)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "s.json").read_text())
    assert [r["batch_size"] for r in doc["results"]] == [1, 8, 64]
    assert "SingleStream (batch 1): p90" in proc.stdout and "throughput:" in proc.stdout
    bad = _deploy("bench", model, "--scenario", "single-stream", "--batch", "8", "--out", tmp_path / "x.json")
    assert bad.returncode == 2 and "single-stream is batch 1" in bad.stderr


def test_device_verbs_import_neither_torch_nor_edgekd(bundle, tmp_path):
    code = textwrap.dedent("""
        import sys
        import deploy.bundle, deploy.run_bundle, deploy.verify, deploy.probe, deploy.power, deploy.__main__
        doc = deploy.run_bundle.run_bundle(sys.argv[1], batch_sizes=[1], power="off",
            settings=deploy.MeasureSettings(warmup_s=0, warmup_iters=1, min_s=0, min_iters=2))
        assert doc["models"]["student"]["accuracy"]["agreement"] == 100.0
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "edgekd")))
        """)
    proc = subprocess.run([sys.executable, "-c", code, str(bundle[0])], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
