"""`edgekd select` as a library: measure every combination of candidate architecture,
precision and input size (and the teacher) on the target, rank them against the budget, write
select.json and the Pareto plot.

A combination fits when its measured percentile, taken at the upper end of its 95 % bootstrap
CI, is at most the limit less the budget's margin. A precision is never chosen where it
measures slower than FP32 on the target (INT8 often does on a CPU without VNNI). For each
architecture at each size the most accurate precision that fits (FP32, then FP16, then INT8)
is its option; options are ranked by MACs, then parameters (capacity, known before training),
and `compress --select-epochs N` re-ranks the top few by a short training's validation
accuracy (edgekd.pipeline.stages.select).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekd.config.budget import Budget
from edgekd.errors import SelectError
from edgekd.io import write_json
from edgekd.models.registry import describe, list_models, min_input_size
from edgekd.selection.cache import LatencyCache
from edgekd.selection.measure import SELECT_SETTINGS, Item, Progress, Spec, label, measure_archs
from edgekd.ship.remote import DeployOptions

SCHEMA = "edgekd.select"
VERSION = 2  # 2: combinations of architecture x precision x input size, `choice`
SELECT_JSON = "select.json"
PARETO_PNG = "pareto.png"
TEACHER_FAMILIES = ("mobilenetv2-cifar",)  # the full-size teacher is not a student candidate
PRECISION_ORDER = ("fp32", "fp16", "int8")  # most accurate first


def default_candidates(input_size: int, exclude: Sequence[str] = ()) -> list[str]:
    """Every registered student family that takes `input_size` (edgekd models)."""
    out = []
    for name in list_models():
        if name in exclude or describe(name, teacher=None).family in TEACHER_FAMILIES:
            continue
        if min_input_size(name) <= input_size:
            out.append(name)
    return out


def combinations(names: Sequence[str], input_size: int, sizes: Sequence[int],
                 precisions: Sequence[str]) -> tuple[list[Item], dict[str, str]]:
    """Every (architecture, precision, size) to measure, size None for the run's own, and the
    ones an architecture cannot compute at (its total stride), each with the reason."""
    items, skipped = [], {}
    for name in names:
        for size in sizes:
            at = None if size == input_size else size
            if min_input_size(name) > size:
                skipped[label(name, "fp32", at)] = (f"{name} needs inputs of at least "
                                                    f"{min_input_size(name)} px")
                continue
            items += [(name, p, at) for p in precisions]
    return items, skipped


def search_space(candidates: Sequence[str] | None, teacher: str | None, input_size: int,
                 sizes: Sequence[int], precisions: Sequence[str]) -> tuple[list[Item], dict[str, str]]:
    """The combinations a selection measures: `candidates` (default: every student family that
    takes the largest size, the teacher's left out) x `precisions` x `sizes`, and the skipped
    ones (see `combinations`). A named candidate that cannot take even the largest size is a
    SelectError."""
    names = list(candidates) if candidates else default_candidates(max(sizes), [teacher or ""])
    if not names:
        raise SelectError(f"no candidate takes {max(sizes)}x{max(sizes)} inputs: "
                          "raise --input-size or name candidates with --candidates")
    check_input_size(names, max(sizes))
    return combinations(names, input_size, sizes, precisions)


def measured_value(record: dict, percentile: str, side: int = 1) -> float:
    """The figure held against the budget: the percentile at its 95 % CI's upper end (`side`
    1; the lower end, 0, for the teacher whose latency a --speedup divides, so that either
    error makes the budget stricter, never looser). A p90 or p99 measured before the harness
    kept their intervals counts as measured."""
    lat = record["latency_ms"]
    ci = lat.get("median_ci95" if percentile == "p50" else f"{percentile}_ci95")
    return float(ci[side]) if ci else float(lat[percentile])


def rank(records: dict[str, dict], budget: Budget, limit_ms: float | None) -> list[dict]:
    """Combinations as rows with `key`, `value_ms`, `fits`, `margin_pct`, `excluded` (why a row
    can never be chosen) and `option` (the most accurate fitting precision of its architecture
    at its size). Options first, by MACs then params (descending), then the other fitting
    rows, then the rest by latency."""
    rows = []
    for key, r in records.items():
        value = measured_value(r, budget.percentile)
        row = {"key": key, **r, "value_ms": value, "excluded": None, "option": False}
        if limit_ms is not None:
            row["fits"] = value <= limit_ms * (1 - budget.margin)
            row["margin_pct"] = round(100.0 * (limit_ms - value) / limit_ms, 2)
        rows.append(row)
    by_pair: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        by_pair.setdefault((row["arch"], row["input_size"]), {})[row["precision"]] = row
    for pair in by_pair.values():
        fp32 = pair.get("fp32")
        for precision, row in pair.items():
            if precision != "fp32" and fp32 is not None and row["value_ms"] >= fp32["value_ms"]:
                row["excluded"] = (f"slower than fp32 on the target ({row['value_ms']:.3g} vs "
                                   f"{fp32['value_ms']:.3g} ms)")
        best = next((pair[p] for p in PRECISION_ORDER
                     if p in pair and pair[p].get("fits") and not pair[p]["excluded"]), None)
        if best is not None:
            best["option"] = True
    options = sorted((r for r in rows if r["option"]), key=lambda r: (-r["macs"], -r["params"]))
    fitting = sorted((r for r in rows if r.get("fits") and not r["option"]),
                     key=lambda r: (-r["macs"], -r["params"]))
    rest = sorted((r for r in rows if not r.get("fits")), key=lambda r: r["value_ms"])
    return options + fitting + rest


def choice_of(row: dict | None) -> dict | None:
    """What the run trains and ships: the architecture, its input size and precision."""
    if row is None:
        return None
    return {"key": row["key"], "arch": row["arch"], "input_size": row["input_size"],
            "precision": row["precision"]}


def choose(doc: dict, key: str, by: str) -> None:
    """Make the combination `key` the document's choice (`by`: how it was chosen)."""
    row = next(r for r in doc["candidates"] if r["key"] == key)
    doc["chosen"], doc["choice"], doc["chosen_by"] = row["arch"], choice_of(row), by


def no_fit_message(budget: Budget, limit_ms: float, rows: list[dict], target: str,
                   input_size: int | None = None) -> str:
    """Nothing fits: the nearest combination and the axes that would help."""
    usable = [r for r in rows if not r.get("excluded")] or rows
    fastest = min(usable, key=lambda r: r["value_ms"])
    room = limit_ms * (1 - budget.margin)
    size = fastest.get("input_size") or input_size
    hints = []
    if size:
        # latency follows the pixels about linearly: the side that would fit, if any does
        need = int(size * math.sqrt(room / fastest["value_ms"]))
        if need >= min_input_size(fastest["arch"]):
            hints.append(f"--budget-input-sizes {need} ({fastest['arch']} computes at "
                         f"{need} px with pixels ~{room / fastest['value_ms']:.0%} of {size} px's)")
    if "int8" not in budget.precisions() and budget.backend == "onnxruntime":
        hints.append("--budget-precision auto (searches int8 too)")
    if budget.batch > 1:
        hints.append("a smaller --budget-batch")
    hints.append("a larger budget")
    what = fastest["key"] if "key" in fastest else fastest["arch"]
    return (f"no candidate meets {limit_ms:.3g} ms ({budget.describe()}, {budget.margin:.0%} headroom) "
            f"on {target}: the nearest, {what}, measures {fastest['value_ms']:.3g} ms; "
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
    sizes: Sequence[int] | None = None,
    items: Sequence[Item] | None = None,
    skipped: dict[str, str] | None = None,
) -> dict:
    """Measure every combination (and the teacher) on the target and rank them: the
    edgekd.select document, `chosen` None when nothing fits (or there is no budget). `items`
    (architecture, precision, size) are measured as given; otherwise they are the candidates x
    the budget's precisions x `sizes` (default: the budget's). Writes only into `work_dir` (the
    ONNX files and bundle)."""
    precisions = budget.precisions()
    sizes = list(sizes) if sizes is not None else budget.sizes(spec.input_size)
    if items is None:
        items, skipped = search_space(candidates, teacher, spec.input_size, sizes, precisions)
    items = list(items)
    if not items:
        raise SelectError(f"no candidate computes at {', '.join(map(str, sizes))} px: name larger "
                          "--budget-input-sizes or other --candidates")
    # The teacher as the user runs it today (FP32): the reference of --speedup (measured once
    # when it is a candidate too).
    ref = label(teacher, "fp32") if teacher is not None else None
    measure = list(items)
    if teacher is not None and (teacher, "fp32", None) not in measure:
        measure.append((teacher, "fp32", None))
    records = measure_archs(measure, spec, deploy, work_dir, cache or LatencyCache(), samples,
                            calib, SELECT_SETTINGS, progress, on_export,
                            bracket=[ref] if ref is not None else [])
    cached = sum(1 for r in records.values() if r.get("cached"))  # items, the teacher included
    measured = len(records) - cached
    teacher_rec = None
    if teacher is not None:
        teacher_rec = records[ref] if (teacher, "fp32", None) in items else records.pop(ref)
    teacher_ms = measured_value(teacher_rec, budget.percentile, side=0) if teacher_rec else None
    if budget.speedup is not None and teacher_ms is None:
        raise SelectError("--speedup needs the teacher measured on the target: pass --teacher-arch")
    limit = budget.limit_ms(teacher_ms)
    rows = rank(records, budget, limit)
    doc = {
        "schema": SCHEMA, "schema_version": VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": {"spec": deploy.target, "backend": deploy.backend,
                   "cpu": next((r.get("cpu") for r in records.values() if r.get("cpu")), None),
                   "threads": deploy.threads},
        "input_size": spec.input_size, "num_classes": spec.num_classes,
        "budget": {"latency_ms": budget.latency_ms, "speedup": budget.speedup, "batch": budget.batch,
                   "percentile": budget.percentile, "precision": budget.precision,
                   "margin": budget.margin, "limit_ms": limit},
        "axes": {"architectures": sorted({it[0] for it in items}), "precisions": list(precisions),
                 "input_sizes": sorted(sizes, reverse=True)},
        "ranking": "per architecture and input size, the most accurate precision that fits and "
                   "is not slower than fp32 on the target; those options by MACs, then params "
                   "(most first); a percentile is held against the budget at the upper end of "
                   "its 95 % CI, the teacher's (for --speedup) at the lower end",
        "settings": SELECT_SETTINGS.__dict__,
        "teacher": ({**teacher_rec, "value_ms": teacher_ms} if teacher_rec else None),
        "candidates": rows,
        "skipped": dict(skipped or {}),
        "chosen": None, "choice": None, "chosen_by": None,
        "cached": cached,
        "measured": measured,
        "files": {"json": SELECT_JSON, "plot": PARETO_PNG},
    }
    if limit is not None and rows and rows[0]["option"]:
        choose(doc, rows[0]["key"], "the most MACs among the options that fit")
    return doc


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
                                             "precision", "margin")},
                        backend=doc["target"]["backend"])
        raise SelectError(no_fit_message(budget, b["limit_ms"], doc["candidates"], target,
                                         doc["input_size"]))


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
    sizes: Sequence[int] | None = None,
) -> dict:
    """`edgekd select`: evaluate, then OUT/select.json and OUT/pareto.png (also when nothing
    fits, so the table and plot show how far off the candidates are); with `require_fit` a
    budget no candidate meets is then a SelectError naming the fastest and what would help."""
    doc = evaluate(budget, spec, deploy, Path(out_dir) / "work", candidates, teacher, cache,
                   samples, calib, progress, on_export, sizes)
    write_outputs(doc, out_dir)
    if require_fit:
        check_fit(doc, deploy.target)
    return doc


__all__ = ["Budget", "Spec", "evaluate", "select", "default_candidates", "combinations", "rank",
           "label", "choose"]
