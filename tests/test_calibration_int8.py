"""calibration/: calibration sets, ONNX Runtime INT8 and the TensorRT calibrator core.

Real data (scikit-learn's bundled 8x8 digits), a real conv net trained here in a few
seconds, a real ONNX export and real ONNX Runtime sessions.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import calibration
from calibration import (
    CalibBatches,
    CalibrationError,
    CalibSetReader,
    check_budget,
    compare_accuracy,
    evaluate_onnx,
    int8_support,
    load_calibset,
    make_entropy_calibrator,
    quantize_static_qdq,
    stratified_indices,
    trt_version_info,
    write_calibset,
)

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[1]
CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def digits():
    """Digits as (N, 1, 8, 8) float32 in [0, 1], split 70/30 with a fixed permutation."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None]
    y = data.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    train, test = perm[:1257], perm[1257:]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


@pytest.fixture(scope="module")
def fp32_model(digits, tmp_path_factory):
    """A small conv net trained on the digits for a few seconds, exported to ONNX (FP32)."""
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )  # fmt: skip
    x, y = torch.from_numpy(digits["x_train"]), torch.from_numpy(digits["y_train"])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            batch = order[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        torch_preds = net(torch.from_numpy(digits["x_test"])).argmax(1).numpy()
    path = tmp_path_factory.mktemp("model") / "fp32.onnx"
    with warnings.catch_warnings():  # the legacy exporter is deprecated, and fast
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (x[:2],), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    return {"path": path, "torch_preds": torch_preds}


@pytest.fixture(scope="module")
def calib(digits):
    idx = stratified_indices(digits["y_train"], 200, seed=0)
    return digits["x_train"][idx]


@pytest.fixture(scope="module")
def quantized(fp32_model, calib, tmp_path_factory):
    """quantize(method, for_tensorrt) -> (path, info), each done once and shared by tests."""
    done = {}

    def quantize(method, for_tensorrt=False):
        key = (method, for_tensorrt)
        if key not in done:
            out = tmp_path_factory.mktemp(f"{method}_trt{int(for_tensorrt)}") / "int8.onnx"
            info = quantize_static_qdq(
                fp32_model["path"], out, calib, method=method, for_tensorrt=for_tensorrt
            )
            done[key] = (out, info)
        return done[key]

    return quantize


def _write_digit_set(digits, directory, n=100, seed=0, overwrite=False):
    idx = stratified_indices(digits["y_train"], n, seed)
    x, y = digits["x_train"][idx], digits["y_train"][idx]
    return write_calibset(directory, x, y, CLASSES, seed, "digits train", overwrite=overwrite)


def _nodes(path):
    return list(onnx.load(str(path)).graph.node)


# --- calibration set format ---------------------------------------------------------------


def test_calibset_round_trip(digits, tmp_path):
    idx = stratified_indices(digits["y_train"], 100, seed=3)
    images, labels = digits["x_train"][idx], digits["y_train"][idx]
    out = write_calibset(tmp_path / "cs", images, labels, CLASSES, seed=3, source="digits train")

    cs = load_calibset(out)
    np.testing.assert_array_equal(cs.images, images)
    np.testing.assert_array_equal(cs.labels, labels)
    assert cs.images.dtype == np.float32 and cs.labels.dtype == np.int64
    meta = json.loads((out / "calib.json").read_text())
    assert meta["format"] == "edgekd.calibset" and meta["version"] == 1
    assert meta["count"] == 100 and meta["shape"] == [100, 1, 8, 8] and meta["layout"] == "NCHW"
    assert meta["classes"] == CLASSES and meta["seed"] == 3 and meta["source"] == "digits train"
    assert meta["value_range"] == [float(images.min()), float(images.max())]
    for name in ("images.npy", "labels.npy"):
        assert meta["sha256"][name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert cs.classes == CLASSES and len(cs) == 100
    np.testing.assert_array_equal(load_calibset(out, mmap=True).images, images)


def test_truncated_images_are_detected(digits, tmp_path):
    out = _write_digit_set(digits, tmp_path / "cs")
    data = (out / "images.npy").read_bytes()
    (out / "images.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(CalibrationError, match="sha256 mismatch"):
        load_calibset(out)
    with pytest.raises(CalibrationError, match="re-create the calibration set"):
        load_calibset(out, verify=False)  # without hashes, the short read is still caught


def test_flipped_byte_is_detected(digits, tmp_path):
    out = _write_digit_set(digits, tmp_path / "cs")
    data = bytearray((out / "images.npy").read_bytes())
    data[-5] ^= 0xFF
    (out / "images.npy").write_bytes(bytes(data))
    with pytest.raises(CalibrationError, match="images.npy is corrupt"):
        load_calibset(out)


def test_missing_or_foreign_set_is_reported(tmp_path):
    with pytest.raises(CalibrationError, match="no calibration set"):
        load_calibset(tmp_path / "nowhere")
    (tmp_path / "calib.json").write_text('{"format": "something else"}')
    with pytest.raises(CalibrationError, match="not an edgekd.calibset manifest"):
        load_calibset(tmp_path)


def test_failed_write_leaves_no_set_behind(digits, tmp_path, monkeypatch):
    real_save, calls = np.save, []

    def save_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # images.npy is written, labels.npy fails
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        _write_digit_set(digits, tmp_path / "cs")
    assert list(tmp_path.iterdir()) == []  # neither the set nor its temporary folder

    monkeypatch.setattr(np, "save", real_save)
    first = load_calibset(_write_digit_set(digits, tmp_path / "cs", seed=1))
    calls.clear()
    monkeypatch.setattr(np, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        _write_digit_set(digits, tmp_path / "cs", seed=2, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["cs"]
    np.testing.assert_array_equal(load_calibset(tmp_path / "cs").images, first.images)


def test_write_refuses_to_clobber_unless_asked(digits, tmp_path):
    _write_digit_set(digits, tmp_path / "cs", seed=1)
    with pytest.raises(CalibrationError, match="overwrite=True"):
        _write_digit_set(digits, tmp_path / "cs", seed=2)
    _write_digit_set(digits, tmp_path / "cs", n=50, seed=2, overwrite=True)
    replaced = load_calibset(tmp_path / "cs")
    assert replaced.meta["seed"] == 2 and len(replaced) == 50
    assert [p.name for p in tmp_path.iterdir()] == ["cs"]


def test_write_rejects_unpreprocessed_or_mislabelled_input(digits, tmp_path):
    x, y = digits["x_train"][:10], digits["y_train"][:10]
    with pytest.raises(CalibrationError, match="not float"):
        write_calibset(tmp_path / "a", (x * 16).astype(np.uint8), y, CLASSES, 0, "x")
    with pytest.raises(CalibrationError, match="class names"):
        write_calibset(tmp_path / "b", x, y, CLASSES[:3], 0, "x")
    with pytest.raises(CalibrationError, match="one per image"):
        write_calibset(tmp_path / "c", x, y[:5], CLASSES, 0, "x")
    assert list(tmp_path.iterdir()) == []


# --- stratified sampling --------------------------------------------------------------------


def test_stratified_indices_balanced_and_deterministic(digits):
    labels = digits["y_train"]
    idx = stratified_indices(labels, 95, seed=7)
    assert len(idx) == len(set(idx.tolist())) == 95
    assert sorted(set(np.bincount(labels[idx], minlength=10).tolist())) == [9, 10]
    np.testing.assert_array_equal(idx, stratified_indices(labels, 95, seed=7))
    assert not np.array_equal(idx, stratified_indices(labels, 95, seed=8))
    all_idx = stratified_indices(labels, len(labels), seed=0)
    np.testing.assert_array_equal(all_idx, np.arange(len(labels)))
    with pytest.raises(CalibrationError, match="--calib-size"):
        stratified_indices(labels, len(labels) + 1, seed=0)


def test_stratified_indices_fills_from_other_classes_when_one_is_small():
    labels = np.array([0] * 2 + [1] * 50 + [2] * 50)
    counts = np.bincount(labels[stratified_indices(labels, 30, seed=0)])
    assert counts.tolist() == [2, 14, 14]


# --- readers and batches --------------------------------------------------------------------


def test_calibset_reader_yields_each_image_once_and_rewinds(calib):
    from onnxruntime.quantization import CalibrationDataReader

    reader = CalibSetReader(calib, batch_size=32, input_name="input")
    assert isinstance(reader, CalibrationDataReader) and len(reader) == 7
    for _ in range(2):
        batches = []
        while (item := reader.get_next()) is not None:
            assert list(item) == ["input"] and item["input"].dtype == np.float32
            batches.append(item["input"])
        assert [len(b) for b in batches] == [32] * 6 + [8]
        np.testing.assert_array_equal(np.concatenate(batches), calib)
        assert reader.get_next() is None
        reader.rewind()

    padded = [b["input"] for b in CalibSetReader(calib, 32, "input", pad_last=True)]
    assert {len(b) for b in padded} == {32}
    np.testing.assert_array_equal(padded[-1][8:], calib[:24])


def test_calib_batches_over_a_real_npy(digits, tmp_path):
    cs = load_calibset(_write_digit_set(digits, tmp_path / "cs", n=100), mmap=True)
    batches = CalibBatches(cs.images, batch_size=32)
    assert len(batches) == 4 and batches.batch_shape == (32, 1, 8, 8)
    assert batches.batch_nbytes == 32 * 64 * 4
    seen = list(batches)
    assert len(seen) == 4
    for batch in seen:
        assert batch.shape == (32, 1, 8, 8) and batch.dtype == np.float32
        assert batch.flags["C_CONTIGUOUS"] and isinstance(batch, np.ndarray)
    stacked = np.concatenate(seen)
    np.testing.assert_array_equal(stacked[:100], cs.images)
    np.testing.assert_array_equal(stacked[100:], cs.images[:28])  # last batch wraps around
    assert len(list(batches)) == 4  # every iteration is a fresh pass
    with pytest.raises(CalibrationError, match="batch_size"):
        CalibBatches(cs.images, 0)


# --- ONNX Runtime INT8 ----------------------------------------------------------------------


def test_fp32_onnx_matches_torch(digits, fp32_model):
    result = evaluate_onnx(fp32_model["path"], digits["x_test"], digits["y_test"], batch_size=100)
    np.testing.assert_array_equal(result["predictions"], fp32_model["torch_preds"])
    assert result["n"] == len(digits["y_test"]) and result["top1"] > 95.0


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_quantize_static_qdq_keeps_accuracy(method, digits, fp32_model, calib, quantized):
    out, info = quantized(method)
    ops = [n.op_type for n in _nodes(out)]
    assert ops.count("QuantizeLinear") == info["quantized_nodes"] > 0
    assert "DequantizeLinear" in ops and {"Conv", "Gemm"} <= set(ops)
    assert info["method"] == method and info["per_channel"] and info["preprocessed"]
    assert info["excluded_nodes"] == [] and info["calib_images"] == len(calib)
    assert info["size_int8_bytes"] == out.stat().st_size < info["size_fp32_bytes"]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary files left

    result = compare_accuracy(fp32_model["path"], out, digits["x_test"], digits["y_test"])
    assert result["n"] == len(digits["y_test"])
    assert result["drop_pp"] == pytest.approx(result["fp32_top1"] - result["int8_top1"])
    assert result["drop_pp"] <= 3.0 and result["agreement"] >= 95.0


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_quantize_for_tensorrt_is_symmetric_qdq(method, digits, fp32_model, quantized):
    out, info = quantized(method, for_tensorrt=True)
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize and info["activation_symmetric"]
    for node in quantize:  # TensorRT accepts signed INT8 with zero point 0 only
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    # weights stay FP32 behind Q/DQ pairs, and the logits are not quantized
    conv_weights = [n.input[0] for n in quantize if inits.get(n.input[0], np.zeros(0)).ndim == 4]
    assert len(conv_weights) == 3
    assert all(n.output[0] != "logits" for n in model.graph.node if n.op_type == "DequantizeLinear")
    result = compare_accuracy(fp32_model["path"], out, digits["x_test"], digits["y_test"])
    assert result["drop_pp"] <= 3.0


def _activation_scales(path):
    model = onnx.load(str(path))
    return {
        i.name: float(numpy_helper.to_array(i))
        for i in model.graph.initializer
        if i.name.endswith("_scale") and not i.dims and i.name != "input_scale"
    }


def test_entropy_clips_ranges_that_minmax_keeps(quantized):
    # ORT's own entropy settings (128 bins, 128 quantized bins) reproduce min-max exactly;
    # the 2048-bin histogram must find tighter thresholds for some activations.
    minmax = _activation_scales(quantized("minmax")[0])
    entropy = _activation_scales(quantized("entropy")[0])
    assert minmax.keys() == entropy.keys() and len(minmax) >= 3
    assert all(entropy[k] <= minmax[k] * 1.0001 for k in minmax)
    assert any(entropy[k] < minmax[k] * 0.95 for k in minmax)


def _only_node_of(model, op_type):
    (name,) = [n.name for n in model.graph.node if n.op_type == op_type]
    return name


def _weight_producer(model, node):
    return next((n for n in model.graph.node if node.input[1] in n.output), None)


def test_exclude_keeps_matched_nodes_in_fp32(fp32_model, calib, tmp_path):
    out = tmp_path / "int8_excl.onnx"
    info = quantize_static_qdq(fp32_model["path"], out, calib, exclude=["/0/Conv", "Gemm"])
    model = onnx.load(str(out))
    by_name = {n.name: n for n in model.graph.node}
    assert sorted(info["excluded_nodes"]) == sorted(["/0/Conv", _only_node_of(model, "Gemm")])
    for name in info["excluded_nodes"]:  # weight comes straight from an FP32 initializer
        assert _weight_producer(model, by_name[name]) is None
    others = [n for n in model.graph.node if n.op_type == "Conv" and n.name != "/0/Conv"]
    assert len(others) == 2
    for node in others:
        assert _weight_producer(model, node).op_type == "DequantizeLinear"

    with pytest.raises(CalibrationError, match="matches no node"):
        quantize_static_qdq(fp32_model["path"], tmp_path / "x.onnx", calib, exclude=["/nope/*"])
    assert not (tmp_path / "x.onnx").exists()


def test_quantize_rejects_bad_arguments(fp32_model, calib, tmp_path):
    with pytest.raises(CalibrationError, match="entropy"):
        quantize_static_qdq(fp32_model["path"], tmp_path / "q.onnx", calib, method="kl")
    with pytest.raises(CalibrationError, match="no ONNX model"):
        quantize_static_qdq(tmp_path / "missing.onnx", tmp_path / "q.onnx", calib)


def test_check_budget_uses_the_measured_drop(digits, fp32_model, calib, quantized, tmp_path):
    # Calibrating on images dimmed 20x sets activation ranges far too narrow, so real inputs
    # saturate: a genuine, measured accuracy loss.
    bad = tmp_path / "int8_bad.onnx"
    quantize_static_qdq(fp32_model["path"], bad, calib * 0.05)
    result = compare_accuracy(fp32_model["path"], bad, digits["x_test"], digits["y_test"])
    assert result["drop_pp"] > 5.0
    with pytest.raises(CalibrationError) as err:
        check_budget(result, max_drop_pp=1.0)
    message = str(err.value)
    assert f"dropped {result['drop_pp']:.2f} pp (> budget 1.00 pp)" in message
    assert "--calib-size" in message and "--method" in message and "--exclude" in message
    assert "\n" not in message
    assert check_budget(result, max_drop_pp=100.0) is result

    ok = compare_accuracy(
        fp32_model["path"], quantized("minmax")[0], digits["x_test"], digits["y_test"]
    )
    assert check_budget(ok, max_drop_pp=3.0) is ok
    with pytest.raises(CalibrationError, match=">= 0"):
        check_budget(ok, max_drop_pp=-1.0)


# --- TensorRT -------------------------------------------------------------------------------


def test_int8_support_by_tensorrt_version():
    assert int8_support("8.5.2.2")["implicit_int8_supported"] is True
    ten = int8_support("10.3.0")
    assert ten["major"] == 10 and ten["implicit_int8_supported"] and ten["implicit_int8_deprecated"]
    eleven = int8_support("11.0.0")
    assert not eleven["implicit_int8_supported"] and eleven["explicit_qdq_supported"]


def test_tensorrt_absent_is_reported_with_the_fix(calib, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        pass
    else:
        pytest.skip("tensorrt is importable here; this checks the CPU-only behaviour")
    assert trt_version_info() is None
    with pytest.raises(CalibrationError, match="pip install tensorrt pycuda"):
        make_entropy_calibrator(calib, 32, tmp_path / "calib.cache")
    with pytest.raises(CalibrationError, match="batch_size"):  # checked before any import
        make_entropy_calibrator(calib, 0, tmp_path / "calib.cache")
    assert not (tmp_path / "calib.cache").exists()


def _stand_in_tensorrt(monkeypatch, version):
    """Minimal stand-ins for tensorrt and pycuda (neither can run here): record the copies and
    the CUDA context each device buffer was allocated in. As on a device, the only context is
    the GPU's primary one, made current by deploy.trt_build.primary_context; pycuda.autoinit
    would create a second one, so importing it fails (as in tests/test_trt_build.py)."""
    import types

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    if int(version.split(".")[0]) < 11:

        class IInt8EntropyCalibrator2:
            def __init__(self):
                self.base_initialised = True

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    contexts = []  # the driver's stack of current contexts

    class PrimaryContext:
        def push(self):
            contexts.append("primary")

        def pop(self):
            contexts.pop()

    class DeviceBuffer:
        def __init__(self, nbytes):
            self.nbytes, self.copies = nbytes, []
            self.context = contexts[-1] if contexts else None  # None: CUDA would refuse

        def __int__(self):
            return 0xDEADBEEF

    def memcpy_htod(dest, src):
        assert src.flags["C_CONTIGUOUS"] and src.nbytes == dest.nbytes
        dest.copies.append(src.copy())

    driver = types.ModuleType("pycuda.driver")
    driver.mem_alloc, driver.memcpy_htod = DeviceBuffer, memcpy_htod
    driver.init = lambda: None
    driver.Device = lambda i: types.SimpleNamespace(retain_primary_context=PrimaryContext,
                                                   name=lambda: "Orin",
                                                   compute_capability=lambda: (8, 7))
    for name, module in [
        ("tensorrt", trt),
        ("pycuda", types.ModuleType("pycuda")),
        ("pycuda.autoinit", None),  # importing it raises ImportError
        ("pycuda.driver", driver),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    return contexts


def test_entropy_calibrator_feeds_batches_and_caches(calib, tmp_path, monkeypatch):
    from deploy.trt_build import primary_context

    contexts = _stand_in_tensorrt(monkeypatch, "10.3.0")
    assert trt_version_info()["implicit_int8_supported"] is True
    cache_path = tmp_path / "calib.cache"
    ctx = primary_context()  # what build_engine makes current before the calibrator exists
    calibrator = make_entropy_calibrator(calib, 64, cache_path)
    # Its device buffer lives in the primary context, the one made current, and making the
    # calibrator pushed no context of its own (pycuda.autoinit cannot even be imported here).
    assert calibrator._device.context == "primary" and contexts == ["primary"]
    assert calibrator.base_initialised and calibrator.get_batch_size() == 64
    assert calibrator.read_calibration_cache() is None  # no cache yet: TensorRT calibrates
    pointers = iter(lambda: calibrator.get_batch(["input"]), None)
    assert list(pointers) == [[0xDEADBEEF]] * 4  # 200 images -> 4 batches of 64, then None
    copies = calibrator._device.copies
    np.testing.assert_array_equal(np.concatenate(copies)[:200], calib)
    # TensorRT's trampoline would swallow an exception: the calibrator keeps it instead and
    # says "no more batches"; the builder raises it after the build (tests/test_trt_build.py).
    assert calibrator.get_batch(["image", "mask"]) is None
    assert "get_batch: CalibrationError" in calibrator.error and "one input" in calibrator.error
    calibrator.write_calibration_cache(b"TRT-1003-EntropyCalibration2\n")
    assert make_entropy_calibrator(calib, 64, cache_path).read_calibration_cache() == (
        b"TRT-1003-EntropyCalibration2\n"
    )
    ctx.pop()
    assert contexts == []


def test_tensorrt_11_points_to_explicit_qdq(calib, tmp_path, monkeypatch):
    _stand_in_tensorrt(monkeypatch, "11.0.0")
    assert trt_version_info()["implicit_int8_supported"] is False
    with pytest.raises(CalibrationError, match="for_tensorrt=True"):
        make_entropy_calibrator(calib, 32, tmp_path / "calib.cache")


def test_calibration_cache_round_trip(tmp_path):
    cache = calibration.CalibrationCache(tmp_path / "sub" / "calib.cache")
    assert cache.read() is None
    cache.write(memoryview(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n"))
    assert cache.read() == b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["calib.cache"]


# --- import isolation -----------------------------------------------------------------------


def test_import_leaves_torch_edgekd_and_onnxruntime_out():
    code = (
        "import sys, calibration;"
        "lazy = 'onnxruntime' not in sys.modules;"
        "from calibration import quantize_static_qdq;"
        "import calibration.trt_int8;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'edgekd', 'tensorrt', 'pycuda'));"
        "print(lazy, 'onnxruntime' in sys.modules, bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True", "[]"]
