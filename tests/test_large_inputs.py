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


def test_a_student_at_half_the_teachers_resolution(tmp_path):
    import onnx

    from edgekd.models.registry import describe

    root = extract_cifar_subset(tmp_path / "imgs", ["airplane", "cat", "ship"], 20, 8)
    base = ["compress", "--dataset", f"imagefolder:{root}", "--input-size", "64",
            "--teacher-arch", "resnet8_cifar_w0.5", "--student", "resnet8_cifar_w0.5",
            "--teacher-epochs", "1", "--epochs", "1", "--batch-size", "12", "--no-bench"]
    r = CliRunner().invoke(cli, [*base, "--method", "kd+at", "--student-input-size", "32",
                                 "--out", str(tmp_path / "at")])
    assert r.exit_code != 0 and "at compare feature maps" in " ".join(r.output.split())
    r = CliRunner().invoke(cli, [*base, "--method", "kd", "--student-input-size", "2",
                                 "--out", str(tmp_path / "tiny")])
    assert r.exit_code != 0 and "its total stride is 4" in " ".join(r.output.split())
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [*base, "--method", "kd+ig", "--ig-steps", "2", "--ig-p", "0.5",
                                 "--student-input-size", "32", "--out", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert (report["teacher"]["input_size"], report["student"]["input_size"]) == (64, 32)
    # the network computes at 32 px: the MACs of the architecture at 32, a quarter of 64's
    assert report["student"]["macs"] == describe("resnet8_cifar_w0.5", 3, 32).macs
    graph = onnx.load(out / "student.onnx").graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:] == [3, 64, 64]
    assert graph.node[0].op_type == "AveragePool" or any(n.op_type == "AveragePool" for n in graph.node[:3])
    student, _ = checkpoint.load_model(out / "student.pt")
    assert student.input_size == 32  # kept in the checkpoint
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(student(x), student(torch.nn.functional.avg_pool2d(x, 2)))
