"""benchmarks/paper_reproduction.py: its CPU miniature runs end to end, stops cleanly at its
budget with a partial table, and a rerun resumes it (the GPU run is the same code)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CIFAR_ZIP

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_reproduction.py"


def _run(work: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--mini", "--work", str(work), *extra],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_miniature_reproduction_is_cut_short_then_resumed(tmp_path):
    if not CIFAR_ZIP.exists():
        pytest.skip(f"{CIFAR_ZIP} is absent (the shared CIFAR-10 JPEG copy)")
    work = tmp_path / "work"
    first = _run(work, "--budget-s", "0")
    assert first.returncode == 0, first.stderr[-2000:]
    doc = json.loads((work / "paper_reproduction.json").read_text())
    assert doc["mini"] and "budget of 0 s reached before student" in doc["stopped"]
    assert doc["teacher"]["epochs"] == 1
    assert "table" not in doc and "ig" not in doc  # nothing half-done is reported
    teacher_mtime = (work / "experiment" / "teacher" / "teacher.pt").stat().st_mtime_ns

    second = _run(work)
    assert second.returncode == 0, second.stderr[-2000:]
    doc = json.loads((work / "paper_reproduction.json").read_text())
    assert "stopped" not in doc and "errors" not in doc
    assert doc["ig"]["images"] == 300 and doc["ig"]["images_per_s"] > 0
    rows = {r["label"]: r for r in doc["table"]["rows"]}
    assert list(rows) == ["student", "kd", "kd+ig", "indistill+kd", "indistill+kd+ig"]
    assert {r["epochs"] for r in rows.values()} == {2}  # the warm-up counts inside the budget
    assert rows["indistill+kd"]["warmup_epochs"] == 1
    assert (work / "experiment" / "teacher" / "teacher.pt").stat().st_mtime_ns == teacher_mtime
    md = (work / "paper_reproduction.md").read_text()
    assert "| kd+ig | 1 | 2 |" in md and "92.02 ± 0.34 (92.58)" in md  # side by side with the paper's figures (docs/methods.md)
    assert "Recipe: paper (deviations: " in md and "student.train.epochs 100 -> 2" in md
    # the IG maps were computed once, for the timing, and shared by both ig runs
    assert len([p for p in (work / "experiment" / "ig").iterdir() if p.is_dir()]) == 1
