"""CUDA smoke tests (marker `gpu`): skipped cleanly without CUDA, run on a lent GPU before the
paper reproduction. bf16/fp16 autocast and channels-last training, IG on CUDA, export of a
CUDA-trained model with the parity check, deploy local with ONNX Runtime's CUDA provider."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from edgekd.cli import cli
from tests.conftest import TINY

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    """A real digits run trained on CUDA with autocast and channels-last, IG maps included."""
    out = tmp_path_factory.mktemp("gpu") / "run"
    tiny = [a for a in TINY if a not in ("--method", "kd")]
    r = CliRunner().invoke(cli, ["compress", *tiny, "--method", "kd+ig", "--device", "cuda",
                                 "--ig-steps", "4", "--set", "student.train.amp=true",
                                 "--set", "student.train.channels_last=true", "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def test_amp_channels_last_training_step_on_cuda(cuda_run):
    metrics = [json.loads(x) for x in (cuda_run / "metrics.jsonl").read_text().splitlines()]
    student = [m for m in metrics if m["stage"] == "student"]
    assert student and all(m["train_loss"] == m["train_loss"] for m in student)  # no NaN
    report = json.loads((cuda_run / "report.json").read_text())
    assert report["device"].startswith("cuda")


def test_the_cpu_speed_path_runs_on_cuda_too(tmp_path):
    """bf16 autocast, channels-last, fused optimizer, torch.compile and cached soft labels: the
    training step the CPU benchmark measured, on CUDA (benchmarks/train_throughput.py times it)."""
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["compress", *TINY, "--device", "cuda", "--soft-labels", "cached",
                                 "--set", "student.train.compile=true", "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    student = [m for m in metrics if m["stage"] == "student"]
    assert {m["precision"] for m in student} <= {"bf16", "fp16"}
    assert all(m["train_loss"] == m["train_loss"] for m in student)  # no NaN
    assert list((out / "soft_labels").glob("*/epoch-0002.npz"))


def test_ig_maps_on_cuda_match_the_cpu(cuda_run, tmp_path):
    from edgekd.attribution.cache import MapCache
    from edgekd.attribution.compute import MapComputer
    from edgekd.attribution.ig import IGSettings
    from edgekd.pipeline.standalone import open_run
    from edgekd.train import checkpoint

    doc = MapCache(cuda_run / "ig").manifest()
    assert doc["complete"] and doc["stats"]["device"] == "cuda"
    ctx = open_run(cuda_run)
    teacher, _ = checkpoint.load_model(cuda_run / "teacher.pt")
    s = IGSettings(steps=4)
    x, y = ctx.data.train.images[:8], ctx.data.train.labels[:8]
    on_gpu = MapComputer(teacher, s, torch.device("cuda"), 8, input_size=16)(x, y, torch.arange(8))
    on_cpu = MapComputer(teacher, s, torch.device("cpu"), 8, input_size=16)(x, y, torch.arange(8))
    torch.testing.assert_close(on_gpu.float().cpu(), on_cpu.float().cpu(), rtol=2e-2, atol=2e-3)


def test_export_of_the_cuda_trained_student_passes_parity(cuda_run):
    report = json.loads((cuda_run / "report.json").read_text())
    parity = report["export"]["parity"]["student"]
    assert parity["top1_agreement"] >= 99.0


def test_deploy_local_with_the_onnxruntime_cuda_provider(cuda_run, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider")
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cuda_run, run)
    r = CliRunner().invoke(cli, ["deploy", str(run), "--target", "local", "--provider", "cuda",
                                 "--batch", "8", "--min-s", "0.2", "--min-iters", "5",
                                 "--warmup-s", "0.1", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{"):])
    assert "CUDAExecutionProvider" in json.dumps(doc["models"]["student"])
