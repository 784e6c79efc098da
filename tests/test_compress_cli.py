"""`edgekd compress` end to end through the real CLI, on real data, with tiny models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner

from edgekd.cli import cli
from edgekd.train import checkpoint
from tests.conftest import TINY, extract_cifar_subset

REPORT_KEYS = {"teacher", "student", "compression_factor", "method", "dataset", "artifacts"}
# A tenth of the digits training images (126: one step of 64 an epoch) for the runs whose
# checks do not depend on how much the models learn; validation and test stay whole.
FEW = ["--train-subset", "0.1"]
RUN = [*TINY, *FEW]  # the module's shared run (digits_run) and its reruns
MODEL_KEYS = {"arch", "params", "macs", "accuracy"}


def _compress(*args):
    result = CliRunner().invoke(cli, ["compress", *args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    result = _compress(*RUN, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out, result


def test_report_has_design_keys_and_real_numbers(digits_run):
    out, result = digits_run
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    for role in ("teacher", "student"):
        assert MODEL_KEYS <= set(report[role])
        assert 0 <= report[role]["accuracy"] <= 100
    assert report["compression_factor"] == round(report["teacher"]["params"] / report["student"]["params"], 2)
    for rel in report["artifacts"].values():
        assert (out / rel).exists(), rel
    # the summary table was printed
    assert "params" in result.output and "latency p50" in result.output
    # latency measured on both models at the requested batch sizes
    bench = json.loads((out / "bench.json").read_text())
    for role in ("teacher", "student"):
        doc = bench["models"][role]  # one edgekd.bench document (deploy/SCHEMA.md) per model
        assert doc["schema"] == "edgekd.bench" and doc["inputs"]["source"] == "file"
        assert [r["batch_size"] for r in doc["results"]] == [1, 8]
        assert doc["results"][0]["latency_ms"]["p50"] > 0
    samples = np.load(out / "samples.npy")  # real test images, not noise
    assert samples.shape[1:] == (3, 16, 16) and 0.0 <= samples.min() and samples.max() <= 1.0
    assert len(np.unique(samples.reshape(len(samples), -1), axis=0)) == len(samples)
    # metrics.jsonl has one line per epoch per stage
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in lines] == [("teacher", 1), ("student", 1), ("student", 2)]
    # config.yaml reproduces the run, and report.json carries the same settings
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["settings"]["seed"] == 0
    assert report["settings"] == config["settings"]


def test_student_onnx_runs_in_onnxruntime_and_matches_torch(digits_run):
    out, _ = digits_run
    from edgekd.data import load_dataset

    data = load_dataset("digits", 16)
    x = data.test.images[:20].float().div(255)
    model, meta = checkpoint.load_model(out / "student.pt")
    sess = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]  # raw [0, 1] pixels: normalisation is inside
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    contract = {p.key: p.value for p in __import__("onnx").load(str(out / "student.onnx")).metadata_props}
    assert json.loads(contract["classes"]) == [str(i) for i in range(10)]
    assert json.loads(contract["value_range"]) == [0.0, 1.0]


def test_rerun_skips_valid_stages_and_refuses_other_settings(digits_run):
    out, _ = digits_run
    before = (out / "student.pt").stat().st_mtime_ns
    again = _compress(*RUN, "--out", str(out))
    assert again.exit_code == 0
    assert (out / "student.pt").stat().st_mtime_ns == before
    assert "skip" in again.output

    other = _compress(*RUN, "--out", str(out), "--seed", "3")
    assert other.exit_code == 2
    assert "already holds a different run" in other.output and "seed: 0 -> 3" in other.output
    other = _compress(*RUN, "--out", str(out), "--seed", "3", "--resume")
    assert other.exit_code == 2 and "cannot resume" in other.output
    assert (out / "student.pt").stat().st_mtime_ns == before  # nothing was touched


def test_corrupt_artifact_is_detected_and_rebuilt(digits_run, tmp_path):
    out, _ = digits_run
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    onnx_file = copy / "student.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])  # truncated
    result = _compress(*RUN, "--out", str(copy), "--resume")
    assert result.exit_code == 0, result.output
    assert "export   start" in result.output or "export start" in result.output.replace("  ", " ")
    ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--student", "nope"], "unknown student model 'nope'"),
        (["--method", "kd+magic"], "unknown method"),
        (["--set", "student.train.optimiser=sgd"], "unknown config key student.train.optimiser"),
        (["--method", "kd+at+kd"], "repeats kd"),
        (["--method", "student+kd"], "cannot combine"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "--data-dir"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    result = _compress(*TINY, "--out", str(out), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ")
    assert not out.exists()  # nothing written, so a corrected rerun starts clean


def test_teacher_checkpoint_of_other_arch_or_classes(digits_run, tmp_path):
    out, _ = digits_run
    teacher = out / "teacher.pt"
    r = _compress(*TINY, "--out", str(tmp_path / "a"), "--teacher", str(teacher),
                  "--teacher-arch", "mbv2_cifar_w0.5")
    assert r.exit_code == 2 and "holds a mbv2_cifar_w0.25, not a mbv2_cifar_w0.5" in r.output
    root = extract_cifar_subset(tmp_path / "three", ["cat", "dog", "ship"], 8, 4)
    r = _compress(*TINY, "--out", str(tmp_path / "b"), "--teacher", str(teacher),
                  "--dataset", f"imagefolder:{root}")
    assert r.exit_code == 2 and "has 10 classes but the data set has 3" in r.output
    r = _compress(*TINY, "--out", str(tmp_path / "s"), "--teacher", str(teacher), "--input-size", "24")
    assert r.exit_code == 2 and "trained at 16x16, this run is at 24x24: pass --input-size 16" in r.output
    assert not (tmp_path / "s").exists()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(teacher.read_bytes()[:5000])
    r = _compress(*TINY, "--out", str(tmp_path / "c"), "--teacher", str(cut))
    assert r.exit_code == 2 and "unreadable" in r.output


def test_given_teacher_checkpoint_is_used_not_retrained(digits_run, tmp_path):
    out, _ = digits_run
    # Whether the teacher is the given one does not depend on the student's training, its
    # export or its latency: one epoch, neither of the others.
    r = _compress(*RUN, "--out", str(tmp_path / "t"), "--teacher", str(out / "teacher.pt"),
                  "--epochs", "1", "--no-bench", "--set", "export.enabled=false")
    assert r.exit_code == 0, r.output
    a, _ = checkpoint.load_model(out / "teacher.pt")
    b, _ = checkpoint.load_model(tmp_path / "t" / "teacher.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    stages = [json.loads(x)["stage"] for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert "teacher" not in stages


def test_imagefolder_of_another_size_and_class_count(tmp_path):
    root = extract_cifar_subset(tmp_path / "folder", ["airplane", "frog", "truck"], 40, 10, size=(48, 40))
    out = tmp_path / "run"
    r = _compress(*TINY, "--dataset", f"imagefolder:{root}", "--out", str(out), "--no-bench")
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["classes"] == ["airplane", "frog", "truck"]
    sess = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.random.rand(2, 3, 16, 16).astype(np.float32)})[0].shape == (2, 3)


def test_force_overwrites_only_runs(tmp_path):
    stranger = tmp_path / "notarun"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("precious")
    r = _compress(*TINY, "--out", str(stranger), "--force")
    assert r.exit_code == 2 and "holds no edgekd run" in r.output
    assert (stranger / "thesis.tex").read_text() == "precious"


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "edgekd", "compress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_killed_run_resumes_to_identical_weights(tmp_path):
    """SIGKILL mid-epoch, rerun with --resume: the same final weights as an uninterrupted run."""
    args = [*TINY, "--no-bench", "--set", "export.enabled=false", "--epochs", "3"]  # weights only
    # The uninterrupted reference needs no process of its own (the killed run, the refused
    # rerun and the resumption have theirs, the last two since this process, once it has run
    # `compress` on a folder, holds its lock to the end): one interpreter start less.
    ref = _compress(*args, "--out", str(tmp_path / "ref"))
    assert ref.exit_code == 0, ref.output

    out = tmp_path / "cut"
    proc = _cli(*args, "--out", str(out))
    state = out / "ckpt" / "student.state.pt"
    deadline = time.time() + 600
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # the student's first epoch is checkpointed: we are inside epoch 2
    time.sleep(0.3)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "student.pt").exists()

    refused = _cli(*args, "--out", str(out))
    assert refused.wait(timeout=120) == 2 and "--resume" in refused.stdout.read()
    resumed = _cli(*args, "--out", str(out), "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()

    a, _ = checkpoint.load_model(tmp_path / "ref" / "student.pt")
    b, _ = checkpoint.load_model(out / "student.pt")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_export_alone_at_another_opset(digits_run, tmp_path):
    import shutil

    import onnx

    out, _ = digits_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    r = CliRunner().invoke(cli, ["export", str(copy), "--opset", "18", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["parity"]["student"]["top1_agreement"] == 100.0
    proto = onnx.load(str(copy / "student.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    sess = ort.InferenceSession(str(copy / "student.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((3, 3, 16, 16), np.float32)})[0].shape == (3, 10)


def test_models_json_lists_paper_compression_factors():
    r = CliRunner().invoke(cli, ["models", "--json"])
    assert r.exit_code == 0
    cfs = {m["name"]: m["compression_factor"] for m in json.loads(r.output)}
    assert [cfs[f"mbv2_cifar_trunc{k}"] for k in (3, 5, 7, 9, 11, 13, 15, 17)] == [
        2.19, 4.12, 7.29, 12.04, 28.97, 54.59, 139.43, 1121.71]


def test_config_file_reproduces_a_run(digits_run, tmp_path):
    out, _ = digits_run
    r = _compress("--config", str(out / "config.yaml"), "--out", str(tmp_path / "again"), "--no-bench")
    assert r.exit_code == 0, r.output
    import yaml

    a = yaml.safe_load((out / "config.yaml").read_text())["settings"]
    b = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())["settings"]
    a["bench"]["enabled"] = False
    assert a == b
    x, _ = checkpoint.load_model(out / "student.pt")
    y, _ = checkpoint.load_model(tmp_path / "again" / "student.pt")
    assert all(torch.equal(p, q) for p, q in zip(x.state_dict().values(), y.state_dict().values(), strict=True))


def test_indistill_warmup_then_feature_terms(tmp_path):
    out = tmp_path / "run"
    r = _compress(*TINY, *FEW, "--teacher-arch", "mbv2_cifar_w0.5", "--student", "mbv2_cifar_w0.25",
                  "--method", "indistill+kd+at+pkt+fitnet", "--no-bench", "--epochs", "3",
                  "--set", "distill.indistill_a=1", "--set", "distill.indistill_b=0",
                  "--set", "distill.indistill_max_layers=2", "--out", str(out))
    assert r.exit_code == 0, r.output
    stages = [json.loads(x)["stage"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["teacher", "warmup", "warmup", "student"]
    warm, _ = checkpoint.load_model(out / "student.warmup.pt")
    final, _ = checkpoint.load_model(out / "student.pt")
    assert not torch.equal(warm.body.features[0][0].weight, final.body.features[0][0].weight)
    info = json.loads((out / "state.json").read_text())["warmup"]["info"]
    assert [c["epochs"] for c in info["curriculum"]] == [[1, 1], [2, 2]]
    assert "student.warmup.pt" in json.loads((out / "report.json").read_text())["artifacts"]


@pytest.mark.parametrize("how", ["kd", "pkt"])
def test_auxiliary_teacher_bridges_the_warmup_and_teaches_stage_2(tmp_path, monkeypatch, how):
    from edgekd.distill.losses import DistillObjective
    from edgekd.pipeline.stages import aux, student

    widths = []  # features.17 width of the teacher each distillation objective is built with

    class Recording(DistillObjective):
        def __init__(self, teacher, *a, **kw):
            widths.append(teacher.body.features[17].out_channels)
            super().__init__(teacher, *a, **kw)

    monkeypatch.setattr(aux, "DistillObjective", Recording)
    monkeypatch.setattr(student, "DistillObjective", Recording)
    out = tmp_path / "run"
    r = _compress(*TINY, *FEW, "--teacher-arch", "mbv2_cifar_w0.75", "--student", "mbv2_cifar_w0.25",
                  "--method", "indistill+kd", "--no-bench", "--set", "export.enabled=false", "--epochs", "2",
                  "--soft-labels", "live",  # the objective then holds the teacher it distils from
                  "--set", "distill.aux_teacher=mbv2_cifar_w0.5", "--set", f"distill.aux_method={how}",
                  "--set", "distill.indistill_a=1",
                  "--set", "distill.indistill_b=0", "--set", "distill.indistill_max_layers=1",
                  "--out", str(out))
    assert r.exit_code == 0, r.output
    stages = [json.loads(x)["stage"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    made = ["aux"] * 2 if how == "kd" else ["aux_ce"] * 2 + ["aux"] * 2
    assert stages == ["teacher", *made, "warmup", "student"]
    aux, meta = checkpoint.load_model(out / "aux_teacher.pt")
    assert meta["arch"] == "mbv2_cifar_w0.5"
    mapping = json.loads((out / "state.json").read_text())["warmup"]["info"]["mapping"]
    # the warm-up prunes the auxiliary teacher (w0.5), not the teacher
    assert mapping[0]["teacher_channels"] == aux.body.features[17].out_channels
    # the auxiliary is made from the teacher (w0.75: 240 channels), then teaches stage 2 itself
    assert widths == [240, 160]
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["training"]["teacher"] == "aux_teacher.pt"
    assert report["student"]["epochs"] == {"warmup": 1, "distill": 1, "total": 2, "warmup_per_layer": [1],
                                           "warmup_rule": "share 0.2 of 2 epochs"}


def test_auxiliary_teacher_for_the_warmup_only_keeps_the_teacher_for_stage_2(tmp_path):
    out = tmp_path / "run"
    r = _compress(*TINY, *FEW, "--teacher-arch", "mbv2_cifar_w0.75", "--student", "mbv2_cifar_w0.25",
                  "--method", "indistill+kd", "--no-bench", "--set", "export.enabled=false", "--epochs", "2",
                  "--set", "distill.aux_teacher=mbv2_cifar_w0.5", "--set", "distill.aux_teaches=warmup",
                  "--set", "distill.indistill_a=1", "--set", "distill.indistill_b=0",
                  "--set", "distill.indistill_max_layers=1", "--out", str(out))
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["training"]["teacher"] == "teacher.pt"


def test_a_dense_cifar_resnet_student_through_warmup_distillation_and_export(tmp_path):
    """A family from the new grid: InDistill maps its stages by size, ONNX export passes parity."""
    out = tmp_path / "run"
    r = _compress(*TINY, *FEW, "--teacher-arch", "mbv2_cifar_w0.5", "--student", "resnet8_cifar",
                  "--method", "indistill+kd", "--no-bench", "--epochs", "2",
                  "--set", "distill.indistill_a=1", "--set", "distill.indistill_b=0",
                  "--out", str(out))
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["arch"] == "resnet8_cifar"
    mapping = json.loads((out / "state.json").read_text())["warmup"]["info"]["mapping"]
    assert [m["student"] for m in mapping] == ["body.layer1"]  # the one stage the w0.5 teacher is as wide as
    assert report["export"]["parity"]["student"]["top1_agreement"] >= 99.0


def test_an_input_size_below_the_architectures_stride_is_refused(tmp_path):
    out = tmp_path / "run"
    r = _compress(*TINY, "--input-size", "3", "--out", str(out))
    assert r.exit_code == 2
    assert ("input size 3 is below what the teacher mbv2_cifar_w0.25 takes: its total stride is 8, "
            "so use --input-size 8 or more") in r.output
    assert not out.exists()


def test_a_run_directory_in_use_is_refused_and_a_dead_holders_lock_taken_over(tmp_path):
    """Two `compress --resume` on one run directory would write the same files at once."""
    from edgekd.pipeline.rundir import RunDir

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from edgekd.pipeline.rundir import RunDir; "
         f"RunDir({str(out)!r}).lock(); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    try:
        r = _compress(*TINY, "--no-bench", "--out", str(out))
        assert r.exit_code == 2
        assert f"{out} is in use by another edgekd process (PID {holder.pid})" in r.output
    finally:
        holder.kill()
        holder.wait()
    RunDir(out).lock()  # the dead process's lock file is still there: taken over
    assert (tmp_path / ".run.lock").read_text() == str(os.getpid())
