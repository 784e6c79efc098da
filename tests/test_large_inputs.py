"""A 224 px run on a small real image folder: RandomResizedCrop chosen and recorded, IG maps
computed at 224 px and aligned with their images, export and report at 224 px."""

from __future__ import annotations

import json

import torch
from captum.attr import IntegratedGradients
from click.testing import CliRunner

from edgekd.attribution.cache import MapCache
from edgekd.cli import cli
from edgekd.pipeline.standalone import open_run
from edgekd.train import checkpoint
from tests.conftest import extract_cifar_subset


def test_a_224px_run_completes_and_its_ig_maps_align(tmp_path):
    root = extract_cifar_subset(tmp_path / "imgs", ["airplane", "cat", "ship"], 12, 6, size=(256, 240))
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [
        "compress", "--dataset", f"imagefolder:{root}", "--input-size", "224", "--method", "kd+ig",
        "--teacher-arch", "resnet8_cifar_w0.5", "--student", "resnet8_cifar_w0.5",
        "--teacher-epochs", "1", "--epochs", "1", "--batch-size", "12", "--ig-steps", "4",
        "--ig-p", "0.5", "--no-bench", "--out", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "data.json").read_text())
    assert data["input_size"] == 224 and data["augmentation"]["kind"] == "resized_crop"
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["accuracy"] == report["student"]["accuracy"]  # a number, not NaN
    import onnx

    dims = onnx.load(out / "student.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == [3, 224, 224]
    # map i is image i's at 224 px: recomputed with Captum for a few indices
    ctx = open_run(out)
    teacher, _ = checkpoint.load_model(out / "teacher.pt")
    teacher.eval()
    maps = MapCache(out / "ig").load()
    assert tuple(maps.shape[1:]) == (224, 224)
    idx = [0, 7, len(ctx.data.train) - 1]
    x = ctx.data.train.images[idx].float() / 255
    z = (x - teacher.mean) / teacher.std
    attr = IntegratedGradients(teacher.body).attribute(
        z, baselines=torch.zeros_like(z), target=ctx.data.train.labels[idx], n_steps=4,
        method="gausslegendre")
    direct = attr.abs().sum(1)
    for k, i in enumerate(idx):
        m = maps[i].float()
        assert ((m / m.max() - direct[k] / direct[k].max()).abs().sum() / (direct[k] / direct[k].max()).sum()) < 0.03, i
        dist = (maps.float() / maps.float().flatten(1).amax(1)[:, None, None]
                - direct[k] / direct[k].max()).abs().flatten(1).sum(1)
        assert int(dist.argmin()) == i
