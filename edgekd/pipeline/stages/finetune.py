"""Stage `finetune`: a given teacher (pretrained weights, or a file of another class count)
fine-tuned on the run's data with a new classifier head, as RUN/teacher.finetuned.pt;
resumable per epoch like every training stage. Stage `teacher` then takes it as given."""

from __future__ import annotations

import dataclasses

from edgekd.pipeline.context import Context, augment_settings, save_trained, train_stage
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage
from edgekd.pipeline.stages.teacher import FINETUNED, finetunes, load_given_teacher, source_key
from edgekd.train import engine


def finetune_settings(ctx: Context):
    t = ctx.cfg.teacher
    return dataclasses.replace(t.train, epochs=t.finetune_epochs,
                               lr=t.finetune_lr if t.finetune_lr is not None else t.train.lr / 10)


class FinetuneStage(Stage):
    name = "finetune"
    outputs = (FINETUNED,)

    def applies(self, ctx: Context) -> bool:
        return finetunes(ctx)

    def check(self, ctx: Context) -> None:
        load_given_teacher(ctx.cfg.teacher, ctx.data, new_head=True)

    def key(self, ctx: Context) -> str:
        t = ctx.cfg.teacher
        return stage_key("finetune", t.arch, source_key(t), t.norm, finetune_settings(ctx).__dict__,
                         ctx.data.fingerprint(), ctx.cfg.seed, ctx.device.type,
                         augment_settings(ctx).__dict__)

    def run(self, ctx: Context, key: str) -> None:
        t = ctx.cfg.teacher
        ctx.reporter.stage("finetune", "start", f"fine-tuning {t.checkpoint} for {t.finetune_epochs} epochs")
        model, given = load_given_teacher(t, ctx.data, new_head=True)
        result = train_stage(ctx, "finetune", model, finetune_settings(ctx),
                             engine.CrossEntropy(t.train.label_smoothing), key)
        summary = {**given, **result.summary()}
        save_trained(ctx, "finetune", key, model, FINETUNED, t.arch, summary, training=summary)
        ctx.reporter.stage("finetune", "done", f"test top-1 {summary['last_epoch']['test_acc']:.2f} %")


STAGE = FinetuneStage()
