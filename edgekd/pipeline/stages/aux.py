"""Stage `aux`: InDistill's auxiliary teacher, a mid-size model made from the teacher, as
RUN/aux_teacher.pt. Made with KD from scratch (`distill.aux_method=kd`), or as the InDistill
code makes it (`pkt`): a cross-entropy baseline, then trained on with PKT from the teacher plus
the task loss. The warm-up prunes it in the teacher's place and (`distill.aux_teaches=both`)
it teaches stage 2 too."""

from __future__ import annotations

import torch

from edgekd.distill.losses import DistillObjective, KDLoss, PKTLoss
from edgekd.distill.methods import penultimate
from edgekd.models.registry import create_model
from edgekd.pipeline.context import (
    AUX,
    Context,
    augment_settings,
    frozen_teacher,
    input_norm,
    on_main,
    save_trained,
    train_stage,
)
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage
from edgekd.train import engine


class AuxTeacherStage(Stage):
    name = "aux"
    outputs = (AUX,)

    def applies(self, ctx: Context) -> bool:
        return ctx.cfg.distill.aux_teacher is not None

    def key(self, ctx: Context) -> str:
        cfg, d = ctx.cfg, ctx.cfg.distill
        how = cfg.kd.__dict__ if d.aux_method == "kd" else {"pkt_weight": d.pkt_weight}
        return stage_key("aux", d.aux_teacher, d.aux_method, how, cfg.student.train.__dict__,
                         cfg.student.norm, ctx.run.output_hash("teacher.pt"), ctx.data.fingerprint(),
                         cfg.seed, ctx.device.type, augment_settings(ctx).__dict__)

    def run(self, ctx: Context, key: str) -> None:
        cfg, d = ctx.cfg, ctx.cfg.distill
        arch, tcfg = d.aux_teacher, cfg.student.train
        ctx.reporter.stage("aux", "start", f"making the auxiliary teacher {arch} ({d.aux_method})")
        torch.manual_seed(cfg.seed * 2 + 7)
        model = create_model(arch, ctx.data.num_classes, *input_norm(ctx, "student"))
        teacher = frozen_teacher(ctx)
        extra: dict = {}
        if d.aux_method == "kd":
            objective = DistillObjective(teacher, [(cfg.kd.alpha, KDLoss(cfg.kd.temperature))],
                                         task_weight=1.0 - cfg.kd.alpha)
        else:
            # A finished baseline's state file makes this a no-op on resume, so an interruption
            # in the PKT part does not retrain the baseline.
            base = train_stage(ctx, "aux_ce", model, tcfg, engine.CrossEntropy(tcfg.label_smoothing), key)
            extra["baseline"] = base.summary()
            objective = DistillObjective(
                teacher, [(d.pkt_weight, PKTLoss(penultimate(model), penultimate(teacher)))],
                label_smoothing=tcfg.label_smoothing)
        result = train_stage(ctx, "aux", model, tcfg, objective, key)
        summary = {"arch": arch, "method": d.aux_method, **extra, **result.summary()}
        save_trained(ctx, "aux", key, model, AUX, arch, summary, training=summary)
        on_main(lambda: (ctx.run / "ckpt" / "aux_ce.state.pt").unlink(missing_ok=True))
        ctx.reporter.stage("aux", "done", f"test top-1 {summary['last_epoch']['test_acc']:.2f} %")


STAGE = AuxTeacherStage()
