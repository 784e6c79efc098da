"""report.json: the run's summary, built from the ledger and the run directory's files."""

from __future__ import annotations

import json
import time

from edgekd.config import recipe_record
from edgekd.models.profile import count_macs, count_params
from edgekd.pipeline.context import AUX, WARMUP, Context, load_run_model
from edgekd.pipeline.stages.budget import final_check
from edgekd.pipeline.stages.ig import IG_FILES
from edgekd.runfiles import BENCH, METRICS, SAMPLE_LABELS, SAMPLES
from edgekd.version import __version__


def _model_entry(ctx: Context, role: str) -> dict:
    model = load_run_model(ctx, role)
    arch = getattr(ctx.cfg, role).arch
    training = ctx.run.stage_info(role)
    return {
        "arch": arch,
        "params": count_params(model),
        "macs": count_macs(model, ctx.data.input_size),
        # what the network computes at (a student may downscale the run's images first)
        "input_size": getattr(model, "input_size", None) or ctx.data.input_size,
        "accuracy": round(training["last_epoch"]["test_acc"], 2),
        # Without a validation split (`--recipe paper`) the best epoch could only be chosen on
        # the test split itself: no figure rather than an optimistic one.
        "accuracy_best_epoch": (round(training["best_epoch"]["test_acc"], 2)
                                if training["best_epoch"].get("selected_on") in ("val", "given")
                                else None),
        # Every epoch the model trained, split into stages (the warm-up counts for a student).
        "epochs": training.get("epoch_plan") or {"total": training.get("epochs")},
        "training": training,
    }


def _latency_summary(ctx: Context) -> dict:
    f = ctx.run / BENCH
    if not f.exists():
        return {}
    doc = json.loads(f.read_text())
    out: dict = {}
    for role, entry in doc["models"].items():
        out[role] = {
            f"batch_{r['batch_size']}": {
                "p50_ms": r["latency_ms"]["p50"], "p90_ms": r["latency_ms"]["p90"],
                "mean_ms": r["latency_ms"]["mean"], "throughput_ips": r["throughput_ips"],
            }
            for r in entry["results"]
        }
    student = doc["models"]["student"]
    out["backend"] = (f"onnxruntime {student['runner'].get('version', '')} CPU, "
                      f"{student['runner'].get('intra_op_threads')} threads")
    out["cpu"] = (student["environment"].get("cpu") or {}).get("model")
    return out


def _budget_summary(ctx: Context, teacher: dict, student: dict) -> dict:
    """The budget, the selection (candidates, the choice and its figure) and the final check
    of the exported student on the target (latency, margin, speed-up, whether it holds)."""
    b = ctx.cfg.budget
    selection = ctx.run.stage_info("select") or {}
    final = final_check(ctx) or {}
    return {
        "latency_ms": b.latency_ms, "speedup": b.speedup, "batch": b.batch,
        "percentile": b.percentile, "precision": b.precision, "margin": b.margin,
        "target": b.target, "backend": b.backend,
        "selection": {k: selection.get(k) for k in ("chosen", "choice", "chosen_ms", "teacher_ms",
                                                    "candidates", "fitting", "options", "left_out",
                                                    "measured", "cached", "trial", "files")}
                     | {"limit_ms": (selection.get("budget") or {}).get("limit_ms")},
        "final": {k: v for k, v in final.items() if k != "certificate"} or None,
        "holds": final.get("holds"),
        # what `edgekd bench --verify RUN` re-measures and judges again (a failed check's too)
        "certificate": final.get("certificate"),
        "accuracy_drop_pp": round(teacher["accuracy"] - student["accuracy"], 2),
    }


def build_report(ctx: Context, wall_time_s: float) -> dict:
    teacher, student = _model_entry(ctx, "teacher"), _model_entry(ctx, "student")
    artifacts = {
        name: name for name in ("config.yaml", "teacher.pt", "student.pt", "student.onnx",
                                "teacher.onnx", "student.int8.onnx", "teacher.int8.onnx",
                                "student.qat.pt", "student.qat.onnx", AUX,
                                WARMUP, METRICS, BENCH, SAMPLES, SAMPLE_LABELS, "data.json",
                                "select/select.json", "select/pareto.png", *IG_FILES)
        if (ctx.run / name).exists()
    }
    return {
        "edgekd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": ctx.cfg.method,
        "recipe": recipe_record(ctx.cfg),
        "settings": ctx.cfg.to_dict(),  # every setting, as config.yaml holds it
        "dataset": {k: v for k, v in ctx.data_summary.items() if k != "classes"} | {
            "classes": ctx.data.classes},
        "seed": ctx.cfg.seed,
        "device": str(ctx.device),
        "teacher": teacher,
        "student": student,
        "compression_factor": round(teacher["params"] / student["params"], 2),
        "mac_reduction": round(teacher["macs"] / student["macs"], 2),
        "export": ctx.run.stage_info("export"),
        **({"int8": ctx.run.stage_info("quantize")} if ctx.run.stage_info("quantize") else {}),
        **({"qat": ctx.run.stage_info("qat")} if ctx.cfg.export.int8_qat_epochs else {}),
        **({"ig": ctx.run.stage_info("ig")} if "ig" in ctx.cfg.methods else {}),
        "latency": _latency_summary(ctx),
        **({"budget": _budget_summary(ctx, teacher, student)} if ctx.cfg.budget.active else {}),
        "artifacts": artifacts,
        "wall_time_s": round(wall_time_s, 1),
        "status": ctx.opened,
    }
