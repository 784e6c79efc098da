"""Stage `warmup`: InDistill stage 1, layer-wise curriculum feature distillation
(edgekd.distill.indistill), as RUN/student.warmup.pt; and the epoch plan that splits the
student's epochs between the warm-up and distillation."""

from __future__ import annotations

import dataclasses

import torch

from edgekd.config import RunConfig
from edgekd.distill.indistill import InDistillObjective, auto_mapping, build_mapping, layer_epochs
from edgekd.distill.methods import parse_pair
from edgekd.errors import EdgeKDError
from edgekd.models.registry import create_model
from edgekd.pipeline.context import (
    AUX,
    WARMUP,
    Context,
    augment_settings,
    frozen_teacher,
    new_model,
    save_trained,
    train_stage,
)
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage


def warmup_pairs(cfg: RunConfig, student: torch.nn.Module, teacher: torch.nn.Module,
                 input_size: int) -> list[tuple[str, str]]:
    d = cfg.distill
    return ([parse_pair(p, "distill.indistill_layers") for p in d.indistill_layers]
            or auto_mapping(student, teacher, d.indistill_max_layers, input_size))


def epoch_plan(cfg: RunConfig, num_classes: int, input_size: int) -> dict:
    """How the student's epochs (`student.train.epochs`) split: the InDistill warm-up's come
    out of the same budget, so every method of an ablation trains the same number of epochs
    (the InDistill code counts its warm-up inside its 60). By default the warm-up is a share
    of them (`distill.indistill_share`); refused when nothing is left for distillation."""
    total = cfg.student.train.epochs
    plan: dict = {"warmup": 0, "distill": total, "total": total}
    if "indistill" in cfg.methods:
        d = cfg.distill
        # Random weights suffice: the mapping depends on the architectures only.
        teacher = create_model(d.aux_teacher or cfg.teacher.arch, num_classes)
        n = len(warmup_pairs(cfg, create_model(cfg.student.arch, num_classes), teacher, input_size))
        layers = layer_epochs(n, d.indistill_a, d.indistill_b, d.indistill_share, total)
        warm = sum(layers)
        if total - warm < 1:
            spans = " + ".join(map(str, layers))
            fix = (f"pass --epochs {warm + 1} or more" if d.indistill_share is not None else
                   f"pass --epochs {warm + 1} or more, make the warm-up a share of the budget "
                   "(--warmup-share 0.2), or shorten the curriculum (--set distill.indistill_a=1 "
                   "--set distill.indistill_b=0)")
            raise EdgeKDError(
                f"the InDistill warm-up takes {warm} of the student's {total} epochs ({spans}) "
                f"and leaves none for distillation: {fix}")
        rule = (f"share {d.indistill_share:g} of {total} epochs" if d.indistill_share is not None
                else f"{d.indistill_a} + {d.indistill_b}*l epochs per layer")
        plan = {"warmup": warm, "distill": total - warm, "total": total,
                "warmup_per_layer": layers, "warmup_rule": rule}
    return plan


def plan_epochs(ctx: Context) -> dict:
    """The run's epoch plan, computed once and kept in ctx.epoch_plan."""
    if ctx.epoch_plan is None:
        ctx.epoch_plan = epoch_plan(ctx.cfg, ctx.data.num_classes, ctx.data.input_size)
    return ctx.epoch_plan


class WarmupStage(Stage):
    name = "warmup"
    outputs = (WARMUP,)

    def applies(self, ctx: Context) -> bool:
        return "indistill" in ctx.cfg.methods

    def check(self, ctx: Context) -> None:
        # A warm-up that cannot be mapped or leaves no epochs is refused here; a student still
        # to be selected by latency is planned once it is chosen.
        if ctx.cfg.student.arch:
            plan_epochs(ctx)

    def _source(self, ctx: Context) -> str:
        return AUX if ctx.cfg.distill.aux_teacher else "teacher.pt"

    def key(self, ctx: Context) -> str:
        cfg, scfg = ctx.cfg, ctx.cfg.student
        indistill = {k: v for k, v in cfg.distill.__dict__.items() if k.startswith("indistill")}
        source = self._source(ctx)
        return stage_key("warmup", scfg.arch, scfg.train.__dict__, indistill, source,
                         ctx.run.output_hash(source), ctx.data.fingerprint(), cfg.seed,
                         ctx.device.type, augment_settings(ctx).__dict__, scfg.norm)

    def run(self, ctx: Context, key: str) -> None:
        cfg, d, scfg = ctx.cfg, ctx.cfg.distill, ctx.cfg.student
        model = new_model(ctx, "student")
        teacher = frozen_teacher(ctx, self._source(ctx).removesuffix(".pt"))
        pairs = warmup_pairs(cfg, model, teacher, ctx.data.input_size)
        mapping = build_mapping(model.to(ctx.device), teacher, pairs, ctx.data.input_size)
        objective = InDistillObjective(teacher, mapping, d.indistill_a, d.indistill_b,
                                       d.indistill_share, scfg.train.epochs)
        ctx.reporter.stage("warmup", "start", "InDistill over " + ", ".join(
            f"{p.student} ({p.teacher_channels}->{p.student_channels} ch)" for p in mapping)
            + f", {objective.epochs} epochs")
        # Constant lr as the InDistill code; one optimizer for the whole curriculum.
        wcfg = dataclasses.replace(scfg.train, epochs=objective.epochs, lr=d.indistill_lr,
                                   schedule="constant")
        # The classifier head does not train in the warm-up: only its last epoch is evaluated.
        result = train_stage(ctx, "warmup", model, wcfg, objective, key, evaluate_every_epoch=False)
        summary = {
            "mapping": [dataclasses.asdict(p) for p in mapping],
            "curriculum": [{"layer": p.student, "epochs": [a, b]}
                           for p, (a, b) in zip(mapping, objective.spans, strict=True)],
            "final_mse": result.last["train_loss"],
        }
        save_trained(ctx, "warmup", key, model, WARMUP, scfg.arch, summary, warmup=summary)
        ctx.reporter.stage("warmup", "done", f"feature MSE {summary['final_mse']:.4f}")


STAGE = WarmupStage()
