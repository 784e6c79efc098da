"""INT8 users can act on: the per-layer diagnosis (calibration.diagnose, `edgekd quantize
--diagnose`), the diagnosis written when INT8 is over budget, and `--auto-fallback`, on a real
digits run, real ONNX Runtime sessions and real quantized graphs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from calibration import CalibrationError, predict, write_calibset
from calibration.diagnose import diagnose, module_scope, scope_candidates
from edgekd.cli import cli
from edgekd.export.quantize import QuantizeError, quantize_onnx
from edgekd.train.checkpoint import load_model


@pytest.fixture()
def run(tiny_run, tmp_path):
    return shutil.copytree(tiny_run, tmp_path / "run")


def _black_calibration(run, tmp_path):
    """One black image: every activation range collapses, so INT8 saturates on real images;
    labels = the FP32 model's own predictions, so any disagreement is a drop."""
    from edgekd.pipeline.standalone import open_run
    from edgekd.runfiles import ensure_samples

    # real test images, written from the run's test split (a --no-bench run has none yet)
    x = np.load(ensure_samples(run, open_data=lambda: open_run(run).data)[0])
    y = predict(str(run / "student.onnx"), x)
    calib = write_calibset(tmp_path / "black", x[:1] * 0, y[:1], [str(i) for i in range(10)], 0, "black")
    return calib, x, y


def test_module_scopes_from_torch_onnx_node_names():
    assert module_scope("/body/layer3/layer3.0/conv1/Conv") == "body.layer3.0.conv1"
    assert module_scope("/body/features/features.3/conv/conv.0/conv.0.0/Conv") == "body.features.3.conv.0.0"
    assert module_scope("/body/layer2/layer2.0/relu_1/Relu_output_0") == "body.layer2.0.relu_1"
    assert scope_candidates("body.layer2.0.relu_1") == ["body.layer2.0.relu_1", "body.layer2.0.relu"]
    assert module_scope("/Sub") == ""  # the Classifier's own normalisation
    assert module_scope("input") is None


def test_quantize_diagnose_ranks_every_quantized_tensor_with_node_and_module(run):
    r = CliRunner().invoke(cli, ["quantize", str(run), "--calib-size", "64", "--max-drop", "100",
                                 "--diagnose", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    doc = json.loads((run / "student.int8.diagnosis.json").read_text())
    assert (run / "student.int8.diagnosis.png").read_bytes()[:4] == b"\x89PNG"
    assert info["diagnosis"]["json"] == str(run / "student.int8.diagnosis.json")
    rows = doc["rows"]
    sqnr = [row["sqnr_db"] for row in rows if row["sqnr_db"] is not None]
    assert sqnr == sorted(sqnr) and len(rows) == doc["quantized_tensors"] > 5
    graph = onnx.load(str(run / "student.int8.onnx")).graph
    names = {n.name for n in graph.node}
    quantized_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    modules = dict(load_model(run / "student.pt")[0].named_modules())
    for row in rows:
        assert row["tensor"] in quantized_inputs and set(row["consumers"]) <= names
        if row["module"] != "(model input)":  # every module path is a real PyTorch module
            assert any(c in modules for c in scope_candidates(row["module"])), row
    # The ranking is not arbitrary: the worst tensor's quantization loses the most signal.
    assert rows[0]["sqnr_db"] < rows[-1]["sqnr_db"]


def test_over_budget_writes_the_diagnosis_and_names_the_worst_layers(run, tmp_path):
    calib, x, y = _black_calibration(run, tmp_path)
    out = tmp_path / "s.int8.onnx"
    with pytest.raises(QuantizeError, match=r"dropped \d+\.\d\d pp .*worst layers are .*dB.*--auto-fallback"):
        quantize_onnx(run / "student.onnx", out, calib, x, y, max_drop=0.5)
    assert not out.exists()
    doc = json.loads((tmp_path / "s.int8.diagnosis.json").read_text())
    # With a black calibration image the range of the model's (normalised) input is the first
    # thing lost: the graph input, or the root module's own normalisation ("").
    assert doc["rows"][0]["module"] in ("(model input)", "") and doc["rows"][0]["sqnr_db"] < 10


def test_auto_fallback_keeps_the_worst_layers_fp32_until_the_drop_fits(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "trained")
    calib, x, y = _black_calibration(run, tmp_path)
    out = tmp_path / "s.int8.onnx"
    info = quantize_onnx(run / "student.onnx", out, calib, x, y, max_drop=5.0, auto_fallback=True)
    fb = info["fallback"]
    assert info["accuracy"]["drop_pp"] <= 5.0 and fb["steps"] and fb["steps"][0]["drop_pp_before"] > 5.0
    graph = onnx.load(str(out)).graph
    kept = set(fb["kept_fp32"])
    # A kept convolution computes in FP32: its weights are a float initializer, not a
    # DequantizeLinear of INT8 ones; convolutions not kept still have INT8 weights.
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    convs = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert any(n.name in kept for n in convs)
    for n in convs:
        assert (n.input[1] in floats) == (n.name in kept), n.name
    assert info["quantized_nodes"] > 0
    assert set(fb["latency_cost"]) == {"batch_1", "batch_64"} and all(v > 0 for v in fb["latency_cost"].values())


def test_auto_fallback_that_keeps_everything_fp32_says_int8_buys_nothing(run, tmp_path):
    # Only the first convolution left to quantize, calibrated on a black image: its input
    # range collapses, every real image saturates, and the predictions collapse with it on
    # any CPU, so the fallback must keep that last layer in FP32 too.
    calib, x, y = _black_calibration(run, tmp_path)
    nodes = onnx.load(str(run / "student.onnx")).graph.node
    first_conv = next(n.name for n in nodes if n.op_type == "Conv")
    others = sorted({n.op_type for n in nodes if n.op_type not in ("Conv", "Constant")}) + [
        n.name for n in nodes if n.op_type == "Conv" and n.name != first_conv]
    with pytest.raises(QuantizeError, match="kee?pt? every quantized layer in FP32.*INT8 buys nothing here"):
        quantize_onnx(run / "student.onnx", tmp_path / "s.int8.onnx", calib, x, y, max_drop=5.0,
                      exclude=others, auto_fallback=True)
    assert not (tmp_path / "s.int8.onnx").exists()


def test_diagnosing_a_model_without_qdq_is_refused(run):
    with pytest.raises(CalibrationError, match="no Q/DQ nodes.*quantize the model first"):
        diagnose(run / "student.onnx", run / "student.onnx", np.load(run / "samples.npy")[:8])
