"""Stage `student`: the student distilled with the run's method (a combination of loss
terms, the task loss included), from the warm-up's weights with `indistill`, as RUN/student.pt."""

from __future__ import annotations

import dataclasses

from edgekd.distill.losses import DistillObjective
from edgekd.distill.methods import LOSS_TERMS, build_terms
from edgekd.pipeline.context import (
    AUX,
    WARMUP,
    Context,
    augment_settings,
    frozen_teacher,
    load_run_model,
    new_model,
    save_trained,
    train_stage,
)
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage
from edgekd.pipeline.stages.ig import overlay_transform
from edgekd.pipeline.stages.warmup import plan_epochs
from edgekd.train import engine

STUDENT = "student.pt"


def _source(ctx: Context) -> str:
    # The auxiliary teacher teaches stage 2 as well, as in the InDistill paper and code.
    d = ctx.cfg.distill
    return AUX if d.aux_teacher and d.aux_teaches == "both" else "teacher.pt"


def student_objective(ctx: Context, model, source: str = "teacher.pt"):
    """The run's distillation loss for `model` (the method's terms from `source`, the task
    loss included; cross-entropy alone when the method uses no teacher) and its batch
    transform (the IG overlays with `ig`, else None: the standard augmentation)."""
    cfg = ctx.cfg
    methods = cfg.methods
    ls = cfg.student.train.label_smoothing
    uses_teacher = any(m in LOSS_TERMS for m in methods)
    if uses_teacher:
        teacher = frozen_teacher(ctx, source.removesuffix(".pt"))
        terms, task_weight = build_terms(methods, cfg, model, teacher, ctx.data.input_size)
        objective = DistillObjective(teacher, terms, task_weight=task_weight, label_smoothing=ls)
    else:
        objective = engine.CrossEntropy(ls)
    clean = uses_teacher and cfg.distill.teacher_input == "clean"
    transform = overlay_transform(ctx, clean_for_teacher=clean) if "ig" in methods else None
    return objective, transform


class StudentStage(Stage):
    name = "student"
    outputs = (STUDENT,)

    def key(self, ctx: Context) -> str:
        cfg, scfg = ctx.cfg, ctx.cfg.student
        methods = cfg.methods
        init = ctx.run.output_hash(WARMUP) if "indistill" in methods else None
        source = _source(ctx)
        # With overlays the student depends on the maps themselves (their content id), not only
        # on the settings that made them.
        ig = [cfg.ig.__dict__, ctx.ig_id] if "ig" in methods else []
        return stage_key("student", scfg.arch, scfg.train.__dict__, cfg.method, cfg.kd.__dict__,
                         cfg.distill.__dict__, init, ctx.run.output_hash("teacher.pt"),
                         ctx.data.fingerprint(), cfg.seed, ctx.device.type,
                         augment_settings(ctx).__dict__, *ig, scfg.norm, plan_epochs(ctx),
                         *([source, ctx.run.output_hash(source)] if source == AUX else []),
                         *([{"input_size": scfg.input_size}] if scfg.input_size is not None else []))

    def run(self, ctx: Context, key: str) -> None:
        cfg, scfg = ctx.cfg, ctx.cfg.student
        methods = cfg.methods
        plan = plan_epochs(ctx)
        source = _source(ctx)
        uses_teacher = any(m in LOSS_TERMS for m in methods)
        teaching = f" from {source.removesuffix('.pt')}" if uses_teacher else ""
        ctx.reporter.stage("student", "start", f"distilling {scfg.arch} with {cfg.method}{teaching}, "
                           f"{plan['distill']} of {plan['total']} epochs")
        model = new_model(ctx, "student")
        if "indistill" in methods:
            model = load_run_model(ctx, WARMUP.removesuffix(".pt"))
        objective, transform = student_objective(ctx, model, source)
        train_cfg = dataclasses.replace(scfg.train, epochs=plan["distill"])
        result = train_stage(ctx, "student", model, train_cfg, objective, key, transform)
        summary = {"method": cfg.method, "teacher": source, "epoch_plan": plan, **result.summary()}
        save_trained(ctx, "student", key, model, STUDENT, scfg.arch, summary,
                     method=cfg.method, training=summary)
        ctx.reporter.stage("student", "done", f"test top-1 {summary['last_epoch']['test_acc']:.2f} %")


STAGE = StudentStage()
