"""The budget certificate (edgekd.selection.certificate) and `edgekd bench --verify`: a real
budget run measured on `local` through deploy's bundle path, re-measured, then tampered with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploy.harness import MeasureSettings
from edgekd.cli import cli
from edgekd.selection.certificate import differences
from tests.test_selection import BUDGET_RUN, ONE_COMBINATION_EACH

# Sub-millisecond models: 40 timed runs cost little, and unlike 5 (whose median's interval is
# their min to max) they keep one preempted run from deciding the verdict.
CERT_SETTINGS = MeasureSettings(warmup_s=0, warmup_iters=3, min_s=0, min_iters=40, max_s=600)


def _fast_settings(mp) -> None:
    import edgekd.selection.measure as measure
    import edgekd.selection.select as select

    mp.setattr(measure, "SELECT_SETTINGS", CERT_SETTINGS)
    mp.setattr(select, "SELECT_SETTINGS", CERT_SETTINGS)


@pytest.fixture(autouse=True)
def _fast(monkeypatch, tmp_path):
    _fast_settings(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the local target's bundles folder


@pytest.fixture(scope="module")
def certified_once(tmp_path_factory):
    """A run whose resnet8_cifar_w0.5 student is certified 1.5x faster than its teacher
    (mbv2_cifar_w0.25 at 16x16: about 2.5x the MACs, with depthwise convolutions)."""
    base = tmp_path_factory.mktemp("certified")
    with pytest.MonkeyPatch.context() as mp:
        _fast_settings(mp)
        mp.setenv("HOME", str(base / "home"))
        r = CliRunner().invoke(cli, [*BUDGET_RUN, *ONE_COMBINATION_EACH, "--speedup", "1.5", "--set",
                                     "budget.candidates=resnet8_cifar_w0.5", "--out", str(base / "run")])
    assert r.exit_code == 0, r.output
    return base / "run"


@pytest.fixture
def certified(certified_once, tmp_path):
    """A copy of the certified run that a test may tamper with."""
    return Path(shutil.copytree(certified_once, tmp_path / "run", symlinks=True))


def _verify(run, *extra):
    return CliRunner().invoke(cli, ["bench", "--verify", str(run), *extra])


def test_verify_holds_on_its_run_and_fails_once_the_student_is_swapped_for_a_slower_one(certified, tmp_path):
    cert = json.loads((certified / "report.json").read_text())["budget"]["certificate"]
    assert cert["schema"] == "edgekd.budget-certificate" and cert["measured"]["holds"] is True
    assert set(cert["models"]) == {"teacher", "student"} and len(cert["models"]["student"]["sha256"]) == 64
    assert cert["budget"]["speedup"] == 1.5 and cert["budget"]["batch"] == 8
    assert cert["environment"]["cpu"] and cert["harness"]["settings"]["min_iters"] == 40

    r = _verify(certified, "--out", str(tmp_path / "v.json"))
    assert r.exit_code == 0, r.output
    assert "verified:" in r.stdout and "holds" in r.stdout and "nothing changed" in r.stdout
    doc = json.loads((tmp_path / "v.json").read_text())
    assert doc["holds"] is True and doc["changed_files"] == [] and (certified / doc["results"]).is_file()

    r = _verify(certified, "--sustain", "-1")  # refused by deploy's option check, before any run
    assert r.exit_code == 2 and "--sustain -1: give the seconds" in r.stderr

    # The student swapped for the teacher's model: the same speed as the teacher, not 1.5x.
    shutil.copyfile(certified / "teacher.onnx", certified / "student.onnx")
    r = _verify(certified)
    assert r.exit_code == 1, r.output
    lines = [x for x in r.stderr.strip().splitlines() if x.startswith("FAIL:")]
    assert len(lines) == 1, r.stderr
    assert "no longer holds" in lines[0] and "% over" in lines[0]
    assert "student.onnx changed (sha256" in lines[0] and "teacher.onnx" not in lines[0]


def test_verify_names_environment_fields_that_differ_from_the_certificate(certified):
    report = json.loads((certified / "report.json").read_text())
    report["budget"]["certificate"]["environment"]["cpu"] = "a CPU this is not"
    (certified / "report.json").write_text(json.dumps(report))
    r = _verify(certified, "--json", "--sustain", "0.4")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    # --sustain: each model then ran 0.4 s more, its drift beside the verdict, not deciding it
    assert doc["sustained"]["student"]["seconds"] == 0.4 and len(doc["sustained"]["teacher"]["windows"]) == 10
    assert "student: sustained 0.4 s at batch 8" in r.stderr
    assert len(doc["changed_environment"]) == 1, doc["changed_environment"]
    assert doc["changed_environment"][0].startswith("cpu: 'a CPU this is not' -> ")
    assert "environment: cpu: 'a CPU this is not'" in doc["summary"] and doc["holds"] is True


def test_verify_refuses_a_run_without_a_certificate_and_stray_arguments(trained_run):
    r = _verify(trained_run)
    assert r.exit_code == 2 and "has no budget certificate" in r.stderr and "--speedup" in r.stderr
    r = CliRunner().invoke(cli, ["bench", "--target", "local", str(trained_run / "student.onnx")])
    assert r.exit_code == 2 and "--target and --sustain go with --verify" in r.stderr
    r = _verify(trained_run, "--batch", "4")
    assert r.exit_code == 2 and "drop --batch" in r.stderr


def test_differences_lists_each_changed_leaf():
    before = {"cpu": "A", "libraries": {"onnxruntime": "1.20", "numpy": "2.0"}, "l4t": None}
    after = {"cpu": "A", "libraries": {"onnxruntime": "1.22", "numpy": "2.0"}, "l4t": "36.4"}
    assert differences(before, after) == ["l4t: None -> '36.4'", "libraries.onnxruntime: '1.20' -> '1.22'"]
    assert differences(before, before) == []
