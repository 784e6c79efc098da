"""Stage `student`: the student distilled with the run's method (a combination of loss
terms, the task loss included), from the warm-up's weights with `indistill`, as RUN/student.pt."""

from __future__ import annotations

import dataclasses

from edgekd.attribution.cache import weights_sha256
from edgekd.distill.losses import DistillObjective
from edgekd.distill.methods import FEATURE_TERMS, LOSS_TERMS, build_terms
from edgekd.distill.soft_labels import CachedTeacher, SoftLabelCache, ViewReplay
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
from edgekd.train import engine, precision

STUDENT = "student.pt"
SOFT_LABELS = "soft_labels"


def _source(ctx: Context) -> str:
    # The auxiliary teacher teaches stage 2 as well, as in the InDistill paper and code.
    d = ctx.cfg.distill
    return AUX if d.aux_teacher and d.aux_teaches == "both" else "teacher.pt"


def uses_soft_label_cache(cfg) -> bool:
    """Whether the run reads its teacher's logits from the soft-label cache (settings only:
    `auto` takes it when every teacher term is on logits)."""
    methods = cfg.methods
    if not any(m in LOSS_TERMS for m in methods) or cfg.distill.soft_labels == "live":
        return False
    return not any(m in FEATURE_TERMS for m in methods)


def recorded_teacher(ctx: Context, teacher, source: str, transform, epochs: int,
                     train_cfg) -> CachedTeacher:
    """The teacher's logits for epochs 1..`epochs` of the run's views, from the soft-label
    cache (built here where missing; edgekd.distill.soft_labels)."""
    cfg, d = ctx.cfg, ctx.cfg.distill
    dtype = precision.autocast_dtype(ctx.device, train_cfg.amp)
    overlaid = "ig" in cfg.methods and d.teacher_input == "overlaid"
    view = {"overlay": ctx.ig_id, "p": cfg.ig.p, "blend": cfg.ig.blend} if overlaid else "clean"
    # The teacher by its weights: each run's copy of a shared teacher carries its own metadata.
    key = {"teacher": weights_sha256(teacher), "data": ctx.data.fingerprint(),
           "augment": {"kind": type(augment_settings(ctx)).__name__, **augment_settings(ctx).__dict__},
           "seed": cfg.seed, "batch_size": train_cfg.batch_size, "device": ctx.device.type,
           "precision": str(dtype), "view": view, "topk": d.soft_label_topk}
    cache = SoftLabelCache(d.soft_label_dir or ctx.run.path / SOFT_LABELS, key)
    # The clean view is the plain augmentation's: overlays draw from a generator of their own.
    replay = ViewReplay(cfg.seed, train_cfg.batch_size,
                        transform if overlaid else engine.StandardAugment(augment_settings(ctx)))
    missing = epochs - len([e for e in cache.recorded() if e <= epochs])
    if missing > 0:
        ctx.reporter.stage("soft-labels", "start", f"recording the teacher on {missing} of {epochs} "
                           f"epochs of views in {cache.folder.name}")
    show = getattr(ctx.reporter, "on_progress", None)
    built = cache.build(teacher, ctx.data.train.images, epochs, replay, ctx.device, amp_dtype=dtype,
                        channels_last=train_cfg.channels_last, topk=d.soft_label_topk,
                        progress=(lambda done, total: show("soft-labels", done, total, "epochs"))
                        if show else None)
    if built:
        ctx.reporter.stage("soft-labels", "done", f"{len(built)} epochs recorded")
    return CachedTeacher(cache, ctx.data.num_classes, ctx.device)


def student_objective(ctx: Context, model, source: str = "teacher.pt", train_cfg=None):
    """The run's distillation loss for `model` (the method's terms from `source`, the task
    loss included; cross-entropy alone when the method uses no teacher) and its batch
    transform (the IG overlays with `ig`, else None: the standard augmentation). With the
    soft-label cache, the teacher's logits for `train_cfg.epochs` epochs are recorded first."""
    cfg = ctx.cfg
    train_cfg = train_cfg or cfg.student.train
    methods = cfg.methods
    ls = train_cfg.label_smoothing
    uses_teacher = any(m in LOSS_TERMS for m in methods)
    clean = uses_teacher and cfg.distill.teacher_input == "clean"
    transform = overlay_transform(ctx, clean_for_teacher=clean) if "ig" in methods else None
    if uses_teacher:
        teacher = frozen_teacher(ctx, source.removesuffix(".pt"))
        terms, task_weight = build_terms(methods, cfg, model, teacher, ctx.data.input_size)
        recorded = None
        if uses_soft_label_cache(cfg):
            recorded = recorded_teacher(ctx, teacher, source, transform, train_cfg.epochs, train_cfg)
            teacher = None  # not needed while training: its memory is freed
        objective = DistillObjective(teacher, terms, task_weight=task_weight, label_smoothing=ls,
                                     recorded=recorded)
    else:
        objective = engine.CrossEntropy(ls)
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
        train_cfg = dataclasses.replace(scfg.train, epochs=plan["distill"])
        objective, transform = student_objective(ctx, model, source, train_cfg)
        result = train_stage(ctx, "student", model, train_cfg, objective, key, transform)
        summary = {"method": cfg.method, "teacher": source, "epoch_plan": plan,
                   "teacher_logits": ("cached" if uses_soft_label_cache(cfg) else "live")
                   if uses_teacher else None, **result.summary()}
        save_trained(ctx, "student", key, model, STUDENT, scfg.arch, summary,
                     method=cfg.method, training=summary)
        ctx.reporter.stage("student", "done", f"test top-1 {summary['last_epoch']['test_acc']:.2f} %")


STAGE = StudentStage()
