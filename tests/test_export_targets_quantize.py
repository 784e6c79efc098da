"""Export targets (opset / IR per device), simplification, external data, `edgekd quantize` and
the compress INT8 stage, on a real tiny digits run, real ONNX Runtime sessions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from calibration import CalibrationError, check_contract, load_calibset, write_calibset
from edgekd.cli import cli
from edgekd.config.targets import TARGETS, resolve_opset
from edgekd.errors import EdgeKDError
from edgekd.export.onnx import data_file, export_onnx, read_contract
from edgekd.export.quantize import QuantizeError, quantize_onnx
from edgekd.models.registry import create_model


@pytest.fixture()
def run(tiny_run, tmp_path):
    return shutil.copytree(tiny_run, tmp_path / "run")


@pytest.fixture()
def trained(trained_run, tmp_path):
    return shutil.copytree(trained_run, tmp_path / "trained")


def _opset(path):
    proto = onnx.load(str(path))
    return next(o.version for o in proto.opset_import if o.domain == ""), proto.ir_version


def test_target_table():
    assert resolve_opset("jetson-jp5") == (17, 8)  # TensorRT 8.5: opsets up to 17
    assert resolve_opset("jetson-jp6") == (17, 8)  # JetPack 6.0 ships TensorRT 8.6 (<= 17)
    assert resolve_opset("jetson-jp7") == (20, 9)  # TensorRT 10.x
    assert resolve_opset("cpu") == (17, 8)
    assert resolve_opset("cpu", 21) == (21, 10)
    assert set(TARGETS) == {"jetson-jp5", "jetson-jp6", "jetson-jp7", "cpu"}
    with pytest.raises(EdgeKDError, match="cannot be parsed on jetson-jp6.*up to 17"):
        resolve_opset("jetson-jp6", 18)
    with pytest.raises(EdgeKDError, match="unknown export target"):
        resolve_opset("jetson-jp4")


def test_export_refuses_an_opset_the_target_cannot_parse(run):
    r = CliRunner().invoke(cli, ["export", str(run), "--target", "jetson-jp5", "--opset", "19"])
    assert r.exit_code == 2
    assert "opset 19 cannot be parsed on jetson-jp5" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) <= 2  # one message (rich may wrap it once)


def test_export_for_jetson_jp7_simplified(run):
    r = CliRunner().invoke(cli, ["export", str(run), "--target", "jetson-jp7", "--simplify", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert (info["target"], info["opset"], info["ir_version"]) == ("jetson-jp7", 20, 9)
    assert info["parity"]["student"]["top1_agreement"] >= 99.9
    assert info["parity"]["student"]["simplified"]["tool"].startswith("onnxslim")
    for name in ("student", "teacher"):
        path = run / f"{name}.onnx"
        assert _opset(path) == (20, 9)
        onnx.checker.check_model(str(path), full_check=True)
        contract = read_contract(path)
        assert contract["target"] == "jetson-jp7" and contract["external_data"] is None
        assert contract["value_range"] == [0.0, 1.0] and contract["input_shape"][0] == "batch"
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch in (1, 7):  # dynamic batch dimension
            assert sess.run(None, {"input": np.zeros((batch, 3, 16, 16), np.float32)})[0].shape == (batch, 10)
    assert not list(run.glob("*.data"))  # self-contained


def test_large_models_keep_their_weights_beside_the_graph(tmp_path):
    torch.manual_seed(0)
    model = create_model("mbv2_cifar_trunc13", 10, (0.5,) * 3, (0.25,) * 3)
    path = tmp_path / "m.onnx"
    x = torch.rand(4, 3, 16, 16)
    contract = export_onnx(model, path, 16, 17, external_data_bytes=0)  # as if > 2 GB
    assert contract["external_data"] == "m.onnx.data" and data_file(path).is_file()
    assert path.stat().st_size < data_file(path).stat().st_size
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = model.eval()(x).detach().numpy()
    assert np.abs(sess.run(None, {"input": x.numpy()})[0] - ref).max() < 1e-4
    export_onnx(model, path, 16, 17)  # small again: one file, the stale sidecar removed
    assert not data_file(path).exists() and read_contract(path)["external_data"] is None


def test_quantize_cli_on_a_run(trained):
    r = CliRunner().invoke(cli, ["quantize", str(trained), "--calib-size", "64", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    out = trained / "student.int8.onnx"
    assert info["out_path"] == str(out) and out.is_file()
    assert info["quantized_nodes"] > 0 and info["method"] == "minmax"
    acc = info["accuracy"]
    assert acc["n"] == 360 and acc["drop_pp"] <= 1.0
    calib = load_calibset(trained / "calib")  # stratified, seeded training images in [0, 1]
    assert len(calib) == 64 and calib.meta["seed"] == 0
    assert np.bincount(calib.labels, minlength=10).min() >= 6
    assert 0.0 <= calib.images.min() and calib.images.max() <= 1.0
    proto = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)


def test_quantize_refuses_a_calibration_set_that_does_not_fit_the_model(run, tmp_path):
    classes = [str(i) for i in range(10)]
    labels = np.arange(20) % 10
    small = write_calibset(tmp_path / "small", np.random.rand(20, 3, 8, 8), labels, classes, 0, "t")
    r = CliRunner().invoke(cli, ["quantize", str(run), "--calib", str(small)])
    assert r.exit_code == 2 and "(3, 8, 8) per image, the model takes (3, 16, 16)" in r.output
    normalised = write_calibset(tmp_path / "norm", (np.random.rand(20, 3, 16, 16) - 0.5) / 0.25,
                                labels, classes, 0, "t")
    r = CliRunner().invoke(cli, ["quantize", str(run), "--calib", str(normalised)])
    assert r.exit_code == 2 and "not normalised ones" in r.output
    assert not (run / "student.int8.onnx").exists()
    with pytest.raises(CalibrationError, match="layout"):
        check_contract({"shape": [1, 16, 16, 3], "layout": "NHWC"},
                       {"layout": "NCHW", "input_shape": ["batch", 16, 16, 3]})


def test_over_budget_fails_with_the_measured_drop_and_writes_nothing(run, tmp_path):
    from calibration import predict

    fp32 = run / "student.onnx"
    x = np.load(run / "samples.npy")
    # Labels the FP32 model gets all right: any INT8 disagreement is a drop.
    y = predict(str(fp32), x)
    # One black image: every activation range collapses, so INT8 saturates.
    one = write_calibset(tmp_path / "one", x[:1] * 0, y[:1], [str(i) for i in range(10)], 0, "black")
    out = tmp_path / "s.int8.onnx"
    with pytest.raises(QuantizeError, match=r"INT8 accuracy dropped \d+\.\d\d pp \(> budget 0\.10 pp\).*--calib-size"):
        quantize_onnx(fp32, out, one, x, y, max_drop=0.1)
    assert not out.exists() and not list(tmp_path.glob(".s.int8*"))


def test_compress_int8_stage_records_in_the_report(trained):
    from edgekd.pipeline.report import build_report
    from edgekd.pipeline.stages.quantize import STAGE as stage_quantize
    from edgekd.pipeline.standalone import open_run

    ctx = open_run(trained)
    ctx.cfg.export.int8 = True
    ctx.cfg.export.int8_calib_size = 40
    stage_quantize(ctx)
    info = ctx.run.stage_info("quantize")
    assert info["student"]["out_path"] == "student.int8.onnx" and info["calibration"]["count"] == 40
    assert info["student"]["accuracy"]["drop_pp"] <= 1.0
    report = build_report(ctx, 0.0)
    assert report["int8"]["student"]["accuracy"] == info["student"]["accuracy"]
    assert report["artifacts"]["student.int8.onnx"] == "student.int8.onnx"
    calls = []
    ctx.reporter = type("R", (), {"stage": lambda self, *a: calls.append(a)})()
    stage_quantize(ctx)  # valid: skipped
    assert calls[-1][1] == "skip"
