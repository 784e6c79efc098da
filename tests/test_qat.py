"""Quantization-aware distillation (edgekd.export.qat, the `qat` stage, `--qat-epochs`) and the
INT8 accuracy gate on the graph's exact arithmetic, on real digits runs and real ONNX Runtime
sessions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from calibration import load_calibset
from edgekd.cli import cli
from edgekd.export.qat import attach
from edgekd.export.quantize import QuantizeError
from edgekd.pipeline.context import load_run_model
from edgekd.pipeline.standalone import open_run, quantize_run
from tests.conftest import TINY


def _logits(path, x, exact):
    options = ort.SessionOptions()
    if exact:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def test_fake_quant_computes_what_the_int8_graph_computes(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    quantize_run(run, max_drop=100, calib_size=64)
    ctx = open_run(run)
    model = load_run_model(ctx, "student").eval()
    x = ctx.data.test.images.float() / 255
    with torch.no_grad():
        fp32 = model(x).numpy()
    fake = attach(model, torch.from_numpy(load_calibset(run / "calib").images))
    assert len(fake.folded) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        simulated = model(x).numpy()
    fake.remove()
    with torch.no_grad():
        assert np.array_equal(model(x).numpy(), fp32)  # hooks and parametrizations gone
    assert not any("parametrizations" in k for k in model.state_dict())
    int8 = _logits(run / "student.int8.onnx", x.numpy(), exact=True)
    # The simulation explains most of the INT8 graph's error against FP32.
    err_fp32, err_sim = ((fp32 - int8) ** 2).mean(), ((simulated - int8) ** 2).mean()
    assert err_sim < 0.6 * err_fp32, (err_sim, err_fp32)


def test_qat_meets_a_budget_ptq_misses_with_fewer_fp32_layers_than_fallback(trained_run, tmp_path):
    # The trained weights, and so the PTQ drop, differ from one CPU to another: min-max PTQ
    # costs this student 0.28 pp on an AVX2 EPYC and nothing on an AVX-512 Xeon, where entropy
    # calibration (slower: 17 s a pass) clips hard enough to cost it about 3 pp.
    run = shutil.copytree(trained_run, tmp_path / "run")
    method = "minmax"
    ptq = quantize_run(run, max_drop=100, calib_size=64)
    if ptq["accuracy"]["drop_pp"] <= 0.2:
        method = "entropy"
        ptq = quantize_run(run, max_drop=100, calib_size=64, method=method)
    drop = ptq["accuracy"]["drop_pp"]
    assert drop > 0.2, "the setup needs a student that PTQ costs accuracy"
    budget = round(drop * (0.5 if method == "minmax" else 0.75), 3)
    if method == "minmax":
        with pytest.raises(QuantizeError, match="--qat-epochs"):
            quantize_run(run, max_drop=budget, calib_size=64)
        fallback = quantize_run(run, max_drop=budget, calib_size=64, auto_fallback=True)
        kept = fallback["fallback"]["kept_fp32"]
        assert fallback["accuracy"]["drop_pp"] <= budget and kept
        fewest_ptq_keeps = len(kept)
    else:
        # Under entropy a pass takes 17 s and a fallback minutes, so it is not run: its first
        # pass is the all-INT8 PTQ model measured above (the same calibration set and method),
        # whose drop is over the budget, and each pass over it keeps at least one more layer in
        # FP32 (quantize_onnx): PTQ with fallback keeps at least one layer.
        assert drop > budget
        fewest_ptq_keeps = 1
    r = CliRunner().invoke(cli, ["quantize", str(run), "--calib-size", "64", "--max-drop", str(budget), "--method", method,
                                 "--qat-epochs", "2", "--qat-teacher", "student", "--auto-fallback",
                                 "--json"])
    assert r.exit_code == 0, r.output
    qad = json.loads(r.output)
    assert qad["accuracy"]["drop_pp"] <= budget
    # QAD meets the budget keeping fewer layers in FP32 than PTQ's fallback can: under
    # entropy none at all, so its all-INT8 model alone fits the budget PTQ's misses.
    assert len(qad["fallback"]["kept_fp32"]) < fewest_ptq_keeps
    if method == "entropy":
        assert qad["fallback"]["steps"] == [] and qad["fallback"]["drop_pp"] <= budget < drop
    assert qad["quantized_from"].endswith("student.qat.onnx")
    assert qad["accuracy_reference"].endswith("student.onnx")
    assert qad["accuracy"]["fp32_top1"] == ptq["accuracy"]["fp32_top1"]  # against the student as trained
    assert qad["qat"]["loss"] == "kd from the FP32 student" and qad["qat"]["fake_quant"]["folded_batchnorms"]
    assert (run / "student.qat.pt").is_file() and (run / "student.int8.onnx").is_file()
    assert onnx.load(str(run / "student.qat.onnx")).graph.node  # a plain FP32 export


def test_compress_runs_qat_before_int8_and_resumes_past_it(tmp_path):
    run = tmp_path / "run"
    # a tenth of the training images (126) for teacher and student: the stages, their order
    # and the report do not depend on it
    args = ["compress", *TINY, "--train-subset", "0.1", "--epochs", "1", "--set", "export.opset=17",
            "--out", str(run),
            "--qat-epochs", "1", "--set", "export.int8_max_drop=100",
            "--set", "export.int8_calib_size=32", "--no-bench"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "with kd's loss from the teacher" in " ".join(r.output.split())
    report = json.loads((run / "report.json").read_text())
    assert report["qat"]["loss"] == "kd" and report["qat"]["epochs"] == 1
    assert report["int8"]["student"]["quantized_from"] == "student.qat.onnx"
    assert report["artifacts"]["student.qat.onnx"] == "student.qat.onnx"
    again = CliRunner().invoke(cli, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    text = " ".join(again.output.split())
    assert "quantization-aware" not in text and "student.qat.pt is valid" in text


def test_qat_without_a_teacher_says_so_and_refuses_an_onnx_file(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    r = CliRunner().invoke(cli, ["quantize", str(run), "--calib-size", "32", "--max-drop", "100",
                                 "--qat-epochs", "1"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "without a teacher" in text and "plain fake-quant fine-tuning" in text
    bad = CliRunner().invoke(cli, ["quantize", str(run / "student.onnx"), "--qat-epochs", "1"])
    assert bad.exit_code != 0 and "pass the run directory" in " ".join(bad.output.split())
    cfg = CliRunner().invoke(cli, ["compress", "--out", str(tmp_path / "x"), "--set", "export.int8_qat_epochs=1"])
    assert cfg.exit_code != 0 and "add --int8" in " ".join(cfg.output.split())


def test_the_gate_measures_the_graph_and_reports_this_cpus_kernels(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    info = quantize_run(run, max_drop=100, calib_size=64)
    a, host = info["accuracy"], info["host_kernels"]
    assert a["int8_arithmetic"] == "exact Q/DQ"
    x = (open_run(run).data.test.images.numpy() / 255).astype(np.float32)
    y = open_run(run).data.test.labels.numpy()
    exact = (_logits(run / "student.int8.onnx", x, True).argmax(1) == y).mean() * 100
    fused = (_logits(run / "student.int8.onnx", x, False).argmax(1) == y).mean() * 100
    assert a["int8_top1"] == pytest.approx(exact) and host["int8_top1"] == pytest.approx(fused)
    assert isinstance(host["int8_isa"], list) and host["cpu"]
    rr = quantize_run(run, max_drop=100, calib_size=64, reduce_range=True)
    assert rr["reduce_range"] is True
    # 7-bit weights: this CPU's kernels compute the graph exactly (no 16-bit saturation).
    assert abs(rr["host_kernels"]["int8_top1"] - rr["accuracy"]["int8_top1"]) <= 0.3
