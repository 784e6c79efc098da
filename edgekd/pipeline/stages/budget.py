"""Stage `budget`: the final student measured again on the budget's target, beside the trained
teacher, at the budget's batch and precision, through `edgekd deploy`'s path (RUN/bundle/,
RUN/budget/bench-<target>.json, apart from what `edgekd deploy` itself writes).

A check that holds is recorded in the ledger. One that fails is not: the report records it,
compress raises BudgetError once the report is written, and a resume measures again (so a
failure caused by another load on the device is not final, and a pass is always measured).
"""

from __future__ import annotations

from edgekd.errors import BudgetError
from edgekd.pipeline.context import Context
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage
from edgekd.pipeline.stages.select import deploy_options

RESULTS_DIR = "budget"


def final_check(ctx: Context) -> dict:
    """This run's final measurement: recorded in the ledger, or (failed) held in ctx.budget_final."""
    return ctx.budget_final or ctx.run.stage_info("budget")


def verdict(ctx: Context) -> None:
    """Raise BudgetError when the final measurement is over the budget."""
    info = final_check(ctx)
    if info and not info["holds"]:
        raise BudgetError(
            f"the final student {info['student']} measures {info['student_ms']:.3g} ms "
            f"({info['percentile']}, batch {info['batch']}, {info['precision']}) on "
            f"{info['target']}, over its budget of {info['limit_ms']:.3g} ms: the run's files are "
            "kept; rerun with --resume to measure again on a quiet device, or choose a smaller "
            "student (a larger --speedup or a smaller --latency-budget, with --force)")


class BudgetStage(Stage):
    name = "budget"
    outputs = ()

    def applies(self, ctx: Context) -> bool:
        return ctx.cfg.budget.active and ctx.cfg.export.enabled

    def _models(self, ctx: Context) -> list[str]:
        return ["teacher", "student.int8" if ctx.cfg.budget.precision == "int8" else "student"]

    def key(self, ctx: Context) -> str:
        return stage_key("budget", ctx.cfg.budget.__dict__,
                         *[ctx.run.output_hash(f"{m}.onnx") for m in self._models(ctx)])

    def run(self, ctx: Context, key: str) -> None:
        from dataclasses import replace

        from edgekd.runfiles import ensure_samples
        from edgekd.selection.measure import SELECT_SETTINGS
        from edgekd.selection.select import measured_value
        from edgekd.ship.remote import deploy_run

        b = ctx.cfg.budget
        budget = ctx.cfg.budget
        models = self._models(ctx)
        ctx.reporter.stage("budget", "start", f"measuring {', '.join(models)} on {b.target} at batch "
                           f"{b.batch}")
        # The bundle's labelled samples from this run's data (bench writes them too; not with
        # --no-bench).
        ensure_samples(ctx.run.path, open_data=lambda: ctx.data)
        opts = replace(deploy_options(ctx), models=models, settings=SELECT_SETTINGS)
        result = deploy_run(ctx.run.path, opts, results_dir=RESULTS_DIR)
        doc = result["document"]

        def value(key: str, side: int) -> float:
            r = doc["models"][key]["results"][0]
            return measured_value({"latency_ms": r["latency_ms"]}, b.percentile, side)

        # Held strictly: the student's p50 at its CI's upper end, the teacher's at the lower.
        teacher_ms, student_ms = value("teacher", 0), value(models[1], 1)
        # With --speedup the limit comes from this very measurement of the trained teacher, or
        # from the selection's (measured first and last, the faster kept) when that is lower:
        # a teacher slowed by other load on the device cannot loosen the budget.
        limit = budget.limit_ms(teacher_ms)
        selected = (ctx.selection or ctx.run.stage_info("select") or {}).get("budget") or {}
        if budget.speedup is not None and selected.get("limit_ms"):
            limit = min(limit, selected["limit_ms"])
        results = f"{RESULTS_DIR}/{result['path'].rsplit('/', 1)[-1]}"
        info = {"student": ctx.cfg.student.arch, "precision": b.precision, "batch": b.batch,
                "percentile": b.percentile, "target": b.target, "backend": b.backend,
                "limit_ms": limit, "student_ms": student_ms, "teacher_ms": teacher_ms,
                "speedup": round(teacher_ms / student_ms, 2),
                "margin_ms": limit - student_ms, "margin_pct": round(100 * (limit - student_ms) / limit, 2),
                "holds": student_ms <= limit, "results": results,
                "cpu": ((doc.get("environment") or {}).get("cpu") or {}).get("model")}
        if info["holds"]:
            ctx.run.mark_done("budget", key, [results], info)
        else:
            ctx.budget_final = info
        ctx.reporter.stage("budget", "done" if info["holds"] else "note",
                           f"{'holds' if info['holds'] else 'OVER BUDGET'}: student {student_ms:.3g} ms "
                           f"vs {limit:.3g} ms, {info['speedup']:.1f}x faster than the teacher")


STAGE = BudgetStage()
