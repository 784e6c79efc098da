"""`edgekd select` as a library: measure the candidates (and the teacher) on the target, rank
them against the budget, write select.json and the Pareto plot.

Ranking: among the candidates that fit, the one with the most MACs (ties: the most
parameters), as the proxy for capacity that is known before training; `compress
--select-epochs N` instead trains the top few briefly and keeps the best validation accuracy.
A candidate fits when its measured percentile, taken at the upper end of its 95 % bootstrap
CI, is at most the limit less the budget's margin.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekd.config.budget import Budget
from edgekd.errors import SelectError
from edgekd.io import write_json
from edgekd.models.registry import describe, list_models, min_input_size
from edgekd.selection.cache import LatencyCache
from edgekd.selection.measure import SELECT_SETTINGS, Progress, Spec, label, measure_archs
from edgekd.ship.remote import DeployOptions

SCHEMA = "edgekd.select"
SELECT_JSON = "select.json"
PARETO_PNG = "pareto.png"
TEACHER_FAMILIES = ("mobilenetv2-cifar",)  # the full-size teacher is not a student candidate


def default_candidates(input_size: int, exclude: Sequence[str] = ()) -> list[str]:
    """Every registered student family that takes `input_size` (edgekd models)."""
    out = []
    for name in list_models():
        if name in exclude or describe(name, teacher=None).family in TEACHER_FAMILIES:
            continue
        if min_input_size(name) <= input_size:
            out.append(name)
    return out


def measured_value(record: dict, percentile: str, side: int = 1) -> float:
    """The figure held against the budget: the percentile at its 95 % CI's upper end (`side`
    1; the lower end, 0, for the teacher whose latency a --speedup divides, so that either
    error makes the budget stricter, never looser). A p90 or p99 measured before the harness
    kept their intervals counts as measured."""
    lat = record["latency_ms"]
    ci = lat.get("median_ci95" if percentile == "p50" else f"{percentile}_ci95")
    return float(ci[side]) if ci else float(lat[percentile])


def rank(records: dict[str, dict], budget: Budget, limit_ms: float | None) -> list[dict]:
    """Candidates as rows with `value_ms`, `fits` and `margin_pct`, best first: fitting ones by
    MACs then params (descending), then the rest by latency."""
    rows = []
    for key, r in records.items():
        value = measured_value(r, budget.percentile)
        row = {"key": key, **r, "value_ms": value}
        if limit_ms is not None:
            row["fits"] = value <= limit_ms * (1 - budget.margin)
            row["margin_pct"] = round(100.0 * (limit_ms - value) / limit_ms, 2)
        rows.append(row)
    fitting = sorted((r for r in rows if r.get("fits")), key=lambda r: (-r["macs"], -r["params"]))
    rest = sorted((r for r in rows if not r.get("fits")), key=lambda r: r["value_ms"])
    return fitting + rest


def no_fit_message(budget: Budget, limit_ms: float, rows: list[dict], target: str) -> str:
    fastest = min(rows, key=lambda r: r["value_ms"])
    hints = []
    if budget.precision == "fp32":
        hints.append("--budget-precision int8")
    if budget.batch > 1:
        hints.append("a smaller --budget-batch")
    hints.append("a lower --input-size")
    hints.append("a larger budget")
    return (f"no candidate meets {limit_ms:.3g} ms ({budget.describe()}, {budget.margin:.0%} headroom) "
            f"on {target}: the fastest, {fastest['arch']}, measures {fastest['value_ms']:.3g} ms; "
            f"try {', '.join(hints[:-1])} or {hints[-1]}")


def evaluate(
    budget: Budget,
    spec: Spec,
    deploy: DeployOptions,
    work_dir: str | Path,
    candidates: Sequence[str] | None = None,
    teacher: str | None = "mbv2_cifar",
    cache: LatencyCache | None = None,
    samples: np.ndarray | None = None,
    calib: np.ndarray | None = None,
    progress: Progress | None = None,
    on_export=None,
) -> dict:
    """Measure the candidates (and the teacher) on the target and rank them: the edgekd.select
    document, `chosen` None when nothing fits (or there is no budget). Writes only into
    `work_dir` (the candidates' ONNX files and bundle)."""
    names = list(candidates) if candidates else default_candidates(spec.input_size, [teacher or ""])
    if not names:
        raise SelectError(f"no candidate takes {spec.input_size}x{spec.input_size} inputs: "
                          "raise --input-size or name candidates with --candidates")
    check_input_size(names, spec.input_size)
    items = [(n, budget.precision) for n in names]
    # The teacher as the user runs it today (FP32): the reference of --speedup (measured once
    # when it is a candidate too).
    if teacher is not None and (teacher, "fp32") not in items:
        items.append((teacher, "fp32"))
    records = measure_archs(items, spec, deploy, work_dir, cache or LatencyCache(), samples,
                            calib, SELECT_SETTINGS, progress, on_export,
                            bracket=[teacher] if teacher is not None else [])
    cached = sum(1 for r in records.values() if r.get("cached"))  # items, the teacher included
    measured = len(records) - cached
    teacher_rec = None
    if teacher is not None:
        teacher_rec = records[teacher] if teacher in names and budget.precision == "fp32" else records.pop(teacher)
    teacher_ms = measured_value(teacher_rec, budget.percentile, side=0) if teacher_rec else None
    if budget.speedup is not None and teacher_ms is None:
        raise SelectError("--speedup needs the teacher measured on the target: pass --teacher-arch")
    limit = budget.limit_ms(teacher_ms)
    rows = rank(records, budget, limit)
    chosen = rows[0] if limit is not None and rows and rows[0].get("fits") else None
    return {
        "schema": SCHEMA, "schema_version": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": {"spec": deploy.target, "backend": deploy.backend,
                   "cpu": next((r.get("cpu") for r in records.values() if r.get("cpu")), None),
                   "threads": deploy.threads},
        "input_size": spec.input_size, "num_classes": spec.num_classes,
        "budget": {"latency_ms": budget.latency_ms, "speedup": budget.speedup, "batch": budget.batch,
                   "percentile": budget.percentile, "precision": budget.precision,
                   "margin": budget.margin, "limit_ms": limit},
        "ranking": "fitting candidates by MACs, then params (most first); a p50 is held against "
                   "the budget at the upper end of its 95 % CI, the teacher's (for --speedup) at "
                   "the lower end",
        "settings": SELECT_SETTINGS.__dict__,
        "teacher": ({**teacher_rec, "value_ms": teacher_ms} if teacher_rec else None),
        "candidates": rows,
        "chosen": chosen["arch"] if chosen else None,
        "cached": cached,
        "measured": measured,
        "files": {"json": SELECT_JSON, "plot": PARETO_PNG},
    }


def check_input_size(names: Sequence[str], input_size: int) -> None:
    too_small = [n for n in names if min_input_size(n) > input_size]
    if too_small:
        raise SelectError(f"{too_small[0]} needs inputs of at least {min_input_size(too_small[0])} px, "
                          f"the selection is at {input_size}: drop it from the candidates")


def check_fit(doc: dict, target: str) -> None:
    """SelectError naming the fastest candidate and what would help, when a budget was set and
    no candidate meets it."""
    b = doc["budget"]
    if b["limit_ms"] is not None and doc["chosen"] is None:
        budget = Budget(**{k: b[k] for k in ("latency_ms", "speedup", "batch", "percentile",
                                             "precision", "margin")})
        raise SelectError(no_fit_message(budget, b["limit_ms"], doc["candidates"], target))


def write_outputs(doc: dict, out_dir: str | Path) -> None:
    """OUT/select.json and OUT/pareto.png, each written atomically."""
    from edgekd.selection.plot import pareto_png

    out = Path(out_dir)
    pareto_png(doc, out / PARETO_PNG)
    write_json(out / SELECT_JSON, doc)


def select(
    budget: Budget,
    spec: Spec,
    deploy: DeployOptions,
    out_dir: str | Path,
    candidates: Sequence[str] | None = None,
    teacher: str | None = "mbv2_cifar",
    cache: LatencyCache | None = None,
    samples: np.ndarray | None = None,
    calib: np.ndarray | None = None,
    progress: Progress | None = None,
    require_fit: bool = True,
    on_export=None,
) -> dict:
    """`edgekd select`: evaluate, then OUT/select.json and OUT/pareto.png (also when nothing
    fits, so the table and plot show how far off the candidates are); with `require_fit` a
    budget no candidate meets is then a SelectError naming the fastest and what would help."""
    doc = evaluate(budget, spec, deploy, Path(out_dir) / "work", candidates, teacher, cache,
                   samples, calib, progress, on_export)
    write_outputs(doc, out_dir)
    if require_fit:
        check_fit(doc, deploy.target)
    return doc


__all__ = ["Budget", "Spec", "evaluate", "select", "default_candidates", "rank", "label"]
