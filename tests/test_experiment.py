"""`edgekd experiment`: statistics, retrieval mAP, and real tiny ablation / shift runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgekd.cli import cli
from edgekd.experiment.retrieval import mean_average_precision
from edgekd.experiment.stats import summarize, welch_p
from edgekd.experiment.suites import PAPER_ABLATION

TINY_EXP = ["--teacher-arch", "mbv2_cifar_w0.25", "--student", "mbv2_cifar_trunc13",
            "--set", "data.input_size=16", "--teacher-epochs", "1", "--epochs", "1", "--subset", "150"]


def test_summary_and_welch():
    s = summarize([90.0, 92.0, 94.0])
    assert s["mean"] == 92.0 and s["sd"] == pytest.approx(2.0) and s["best"] == 94.0
    # Welch's t for these samples: t = -3.674, df = 4 -> p = 0.0213 (scipy.stats reference)
    assert welch_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.0213, abs=5e-4)
    assert welch_p([1.0], [2.0, 3.0]) is None


def test_map_on_a_hand_computed_ranking():
    db = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    db_labels = np.array([0, 1, 0])
    q = np.array([[1.0, 0.0]])
    # ranking by cosine: db0 (rel), db1 (not), db2 (rel): AP = (1/1 + 2/3) / 2
    assert mean_average_precision(db, db_labels, q, np.array([0])) == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_ablation_end_to_end_and_resumable(tmp_path):
    """The default ablation (the papers' methods, IG and InDistill included) x 2 seeds."""
    out = tmp_path / "exp"
    # 20 runs on 64 training images (one step of 64 an epoch): the table does not depend on it
    args = ["experiment", "ablation", "--seeds", "2", "--out", str(out), *TINY_EXP,
            "--teacher-arch", "mbv2_cifar_w0.5", "--student", "mbv2_cifar_w0.25",  # prunable pair
            "--set", "ig.steps=2", "--set", "distill.indistill_a=1", "--set", "distill.indistill_b=0",
            "--set", "distill.indistill_max_layers=1", "--epochs", "2", "--subset", "64", "--json"]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{"):])
    rows = {row["label"]: row for row in doc["table"]["rows"]}
    assert set(rows) == set(PAPER_ABLATION) and rows["kd"]["last_epoch"]["n"] == 2
    assert "p_vs_student" in rows["kd"] and "p_vs_kd" in rows["kd+ig"]
    # every method trains the same 2 epochs: the warm-up's 1 comes out of them
    assert {row["epochs"] for row in rows.values()} == {2}
    assert rows["indistill+kd"]["warmup_epochs"] == 1 and rows["kd"]["warmup_epochs"] == 0
    # the runs with `ig` shared one computation of the maps
    caches = list((out / "ig").iterdir())
    assert len([c for c in caches if c.is_dir()]) == 1
    # and one recording of the teacher per seed and view: kd with indistill+kd (clean images),
    # kd+ig with indistill+kd+ig (overlaid); each run's own copy of the teacher does not split it
    assert len([c for c in (out / "soft_labels").iterdir() if c.is_dir()]) == 2 * 2
    report = json.loads((out / "runs" / "indistill_kd_ig" / "s1" / "report.json").read_text())
    assert report["ig"]["cache"] == str([c for c in caches if c.is_dir()][0].resolve())
    for name in ("ablation.md", "ablation.json", "ablation.png"):
        assert (out / name).stat().st_size > 0
    assert "| kd | 2 | 2 |" in (out / "ablation.md").read_text()
    assert "| indistill+kd | 2 | 2 (1 warm-up) |" in (out / "ablation.md").read_text()
    assert not (out / "runs" / "kd" / "s0" / "student.onnx").exists()  # accuracy only
    # a second invocation redoes nothing and reports the same numbers
    mtime = (out / "runs" / "kd" / "s1" / "student.pt").stat().st_mtime_ns
    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert json.loads(again.output[again.output.index("{"):])["table"] == doc["table"]
    assert (out / "runs" / "kd" / "s1" / "student.pt").stat().st_mtime_ns == mtime


@pytest.fixture
def run(tiny_run, tmp_path):
    """A finished TINY digits run (the session's, shared with the bench and deploy tests), copied:
    reopening a run rewrites its data.json."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def test_shift_on_another_folder_with_a_class_mapping(run, tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path / "other"
    names = {0: "zero", 1: "one", 7: "seven"}
    for label, name in names.items():
        (folder / name).mkdir(parents=True)
        for i in np.flatnonzero(digits.target == label)[:6]:
            img = (digits.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(img).resize((24, 24)).save(folder / name / f"{i}.png")
    (folder / "unrelated").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "unrelated" / "x.png")
    maps = [x for k, v in names.items() for x in ("--map", f"{v}={k}")]
    r = CliRunner().invoke(cli, ["experiment", "shift", str(run), "--folder", str(folder), *maps, "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["images"] == 18 and set(res["mapping"]) == {"zero", "one", "seven"}
    assert 0 <= res["student"]["accuracy"] <= 100
    bad = CliRunner().invoke(cli, ["experiment", "shift", str(run), "--folder", str(folder), "--map", "zero=cat"])
    assert bad.exit_code == 2 and "not classes of the run" in bad.output


def test_retrieval_map_of_a_run(run):
    r = CliRunner().invoke(cli, ["experiment", "retrieval", str(run), "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)[0]
    assert 0 < row["student"]["map"] <= 100 and row["queries"] == 360


def test_parallel_runs_in_spawned_workers(tmp_path):
    """--jobs N runs in spawned processes (a parent that used CUDA for the shared teacher
    cannot fork): the paper reproduction's GPU path, here on the CPU."""
    out = tmp_path / "exp"
    r = CliRunner().invoke(cli, ["experiment", "ablation", "--methods", "student,kd", "--seeds", "1",
                                 "--jobs", "2", "--out", str(out), *TINY_EXP, "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{"):])
    assert [row["label"] for row in doc["table"]["rows"]] == ["student", "kd"]
    for label in ("student", "kd"):
        assert (out / "runs" / label / "s0" / "student.pt").is_file()
