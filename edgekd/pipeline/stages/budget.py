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
from edgekd.pipeline.stages.select import chosen_precision, deploy_options

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
        return ["teacher", "student.int8" if chosen_precision(ctx) == "int8" else "student"]

    def key(self, ctx: Context) -> str:
        from edgekd.selection.certificate import VERSION

        # the certificate's version: a run checked before it existed, or under an older one,
        # is measured again on --resume and gets one
        return stage_key("budget", ctx.cfg.budget.__dict__, f"certificate-{VERSION}", chosen_precision(ctx),
                         *[ctx.run.output_hash(f"{m}.onnx") for m in self._models(ctx)])

    def run(self, ctx: Context, key: str) -> None:
        from dataclasses import replace

        from edgekd.runfiles import ensure_samples
        from edgekd.selection.cache import environment_fingerprint
        from edgekd.selection.certificate import certificate, judge
        from edgekd.selection.measure import SELECT_SETTINGS
        from edgekd.ship.remote import MODEL_FILES, deploy_run

        b = ctx.cfg.budget
        models = self._models(ctx)
        ctx.reporter.stage("budget", "start", f"measuring {', '.join(models)} on {b.target} at batch "
                           f"{b.batch}")
        # The bundle's labelled samples from this run's data (bench writes them too; not with
        # --no-bench).
        ensure_samples(ctx.run.path, open_data=lambda: ctx.data)
        opts = replace(deploy_options(ctx), models=models, settings=SELECT_SETTINGS)
        result = deploy_run(ctx.run.path, opts, results_dir=RESULTS_DIR)
        doc = result["document"]

        # With --speedup the limit comes from this very measurement of the trained teacher, or
        # from the selection's (measured first and last, the faster kept) when that is lower.
        selected = (ctx.selection or ctx.run.stage_info("select") or {}).get("budget") or {}
        judged = judge(doc, models[1], b.percentile, b.latency_ms, b.speedup, selected.get("limit_ms"))
        results = f"{RESULTS_DIR}/{result['path'].rsplit('/', 1)[-1]}"
        files = {role: {"file": MODEL_FILES[key], "key": key, "sha256": doc["models"][key]["model"]["sha256"]}
                 for role, key in zip(("teacher", "student"), models, strict=True)}
        cert = certificate({**certified_budget(b), "precision": chosen_precision(ctx),
                            "selection_limit_ms": selected.get("limit_ms")}, files,
                           doc, environment_fingerprint(result["probe"], b.backend), judged)
        info = {"student": ctx.cfg.student.arch, "precision": chosen_precision(ctx),
                "input_size": ctx.cfg.student.input_size or ctx.data.input_size, "batch": b.batch,
                "percentile": b.percentile, "target": b.target, "backend": b.backend,
                **judged, "results": results,
                "cpu": ((doc.get("environment") or {}).get("cpu") or {}).get("model"),
                "certificate": cert}
        student_ms, limit = judged["student_ms"], judged["limit_ms"]
        if info["holds"]:
            ctx.run.mark_done("budget", key, [results], info)
        else:
            ctx.budget_final = info
        ctx.reporter.stage("budget", "done" if info["holds"] else "note",
                           f"{'holds' if info['holds'] else 'OVER BUDGET'}: student {student_ms:.3g} ms "
                           f"vs {limit:.3g} ms, {info['speedup']:.1f}x faster than the teacher")


def certified_budget(b) -> dict:
    """The settings a budget's verdict depends on (how the target is reached does not)."""
    return {k: getattr(b, k) for k in ("latency_ms", "speedup", "batch", "percentile", "precision",
                                       "margin", "backend", "threads", "target")}


STAGE = BudgetStage()
