"""A latency budget's verdict as a certificate anyone can re-check.

The final check of `compress` (stage `budget`) measures the run's teacher and student on the
target. `judge` turns that measurement into the verdict; `certificate` records it with what it
depended on: the model files' sha256, the target's environment fingerprint, the harness's
version and settings, the budget and the figures. `edgekd bench --verify RUN` measures the same
files again through the same path and judges them by the same rule (edgekd.bench.verify), so a
user can gate a driver, JetPack or model change on it.
"""

from __future__ import annotations

from typing import Any

from edgekd.config.budget import Budget
from edgekd.selection.select import measured_value

SCHEMA = "edgekd.budget-certificate"
VERSION = 1


def judge(doc: dict, student_key: str, percentile: str, latency_ms: float | None,
          speedup: float | None, selected_limit_ms: float | None = None) -> dict:
    """The verdict of one edgekd.run-bench document holding 'teacher' and `student_key`.

    Held strictly: the student's percentile at its CI's upper end, the teacher's at the lower. With a
    speed-up the limit is the teacher's figure / speed-up, or `selected_limit_ms` (the
    selection's) when that is lower, so that a teacher slowed by other load on the device
    cannot loosen the budget."""
    def value(key: str, side: int) -> float:
        r = doc["models"][key]["results"][0]
        return measured_value({"latency_ms": r["latency_ms"]}, percentile, side)

    teacher_ms, student_ms = value("teacher", 0), value(student_key, 1)
    limit = Budget(latency_ms=latency_ms, speedup=speedup).limit_ms(teacher_ms)
    if speedup is not None and selected_limit_ms:
        limit = min(limit, selected_limit_ms)
    return {"limit_ms": limit, "student_ms": student_ms, "teacher_ms": teacher_ms,
            "speedup": round(teacher_ms / student_ms, 2), "margin_ms": limit - student_ms,
            "margin_pct": round(100 * (limit - student_ms) / limit, 2), "holds": student_ms <= limit}


def certificate(budget: dict, models: dict[str, dict], doc: dict, environment: dict,
                verdict: dict) -> dict:
    """Self-contained: `budget` (latency_ms or speedup, batch, percentile, precision, backend,
    threads, target), `models` ({'teacher'|'student': {'file', 'sha256'}}, the student's key in
    the bundle under 'key'), the run-bench document `doc` the verdict came from, the target's
    environment fingerprint (edgekd.selection.cache.environment_fingerprint) and the verdict."""
    from edgekd.version import __version__

    student = doc["models"][models["student"]["key"]]
    return {
        "schema": SCHEMA, "schema_version": VERSION, "edgekd_version": __version__,
        "budget": budget, "models": models, "environment": environment,
        "harness": {"schema": student.get("schema"), "schema_version": student.get("schema_version"),
                    "settings": student.get("settings"),
                    "runner": _runner(student.get("runner") or {})},
        "measured": {k: verdict[k] for k in ("limit_ms", "student_ms", "teacher_ms", "speedup",
                                             "margin_pct", "holds")},
        "created": doc.get("created"),
    }


def _runner(runner: dict) -> dict:
    keep = ("backend", "version", "providers", "intra_op_threads", "device", "compute_capability")
    return {k: runner[k] for k in keep if k in runner}


def differences(before: Any, after: Any, prefix: str = "") -> list[str]:
    """'field: old -> new' for every leaf that differs between two fingerprints."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for k in sorted(set(before) | set(after), key=str):
            out += differences(before.get(k), after.get(k), f"{prefix}{k}.")
        return out
    if before == after:
        return []
    return [f"{prefix.rstrip('.')}: {before!r} -> {after!r}"]
