"""Stage `teacher`: the given checkpoint checked against the run, or a teacher trained here,
as RUN/teacher.pt."""

from __future__ import annotations

from pathlib import Path

from edgekd.config import TeacherConfig
from edgekd.data import Dataset
from edgekd.errors import ModelError
from edgekd.io import sha256_file
from edgekd.models.registry import Classifier
from edgekd.pipeline.context import Context, augment_settings, new_model, save_trained, train_stage
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage
from edgekd.train import checkpoint, engine

TEACHER = "teacher.pt"


def load_teacher_checkpoint(tcfg: TeacherConfig, data: Dataset) -> Classifier:
    """The given teacher, refused (ModelError) unless it fits the run: architecture, classes
    and the input size it was trained at."""
    model, meta = checkpoint.load_model(tcfg.checkpoint, tcfg.arch, data.num_classes, "teacher checkpoint")
    if meta.get("classes") and meta["classes"] != data.classes:
        raise ModelError(
            f"teacher checkpoint {tcfg.checkpoint} was trained on classes {meta['classes'][:5]}..., "
            f"not this data set's {data.classes[:5]}...: use a teacher of this data set"
        )
    if meta.get("input_size") and meta["input_size"] != data.input_size:
        raise ModelError(
            f"teacher checkpoint {tcfg.checkpoint} was trained at {meta['input_size']}x"
            f"{meta['input_size']}, this run is at {data.input_size}x{data.input_size}: "
            f"pass --input-size {meta['input_size']}"
        )
    return model


class TeacherStage(Stage):
    name = "teacher"
    outputs = (TEACHER,)

    def check(self, ctx: Context) -> None:
        if ctx.cfg.teacher.checkpoint:
            load_teacher_checkpoint(ctx.cfg.teacher, ctx.data)

    def key(self, ctx: Context) -> str:
        tcfg = ctx.cfg.teacher
        source = (
            {"checkpoint_sha256": sha256_file(tcfg.checkpoint)}
            if tcfg.checkpoint and Path(tcfg.checkpoint).is_file()
            else {"train": tcfg.train.__dict__}
        )
        return stage_key("teacher", tcfg.arch, source, ctx.data.fingerprint(), ctx.cfg.seed,
                         ctx.device.type, augment_settings(ctx).__dict__,
                         *([tcfg.norm] if tcfg.norm != "data" and not tcfg.checkpoint else []))

    def run(self, ctx: Context, key: str) -> None:
        tcfg, data = ctx.cfg.teacher, ctx.data
        if tcfg.checkpoint:
            ctx.reporter.stage("teacher", "start", f"loading {tcfg.checkpoint}")
            model = load_teacher_checkpoint(tcfg, data).to(ctx.device)
            acc, _ = engine.evaluate(model, data.test, ctx.device)
            val_acc, _ = engine.evaluate(model, data.val, ctx.device)
            summary = {"source": str(tcfg.checkpoint), "last_epoch": {"test_acc": acc, "val_acc": val_acc},
                       "best_epoch": {"test_acc": acc, "val_acc": val_acc, "selected_on": "given"}}
        else:
            ctx.reporter.stage("teacher", "start", f"training {tcfg.arch}")
            model = new_model(ctx, "teacher")
            result = train_stage(ctx, "teacher", model, tcfg.train,
                                 engine.CrossEntropy(tcfg.train.label_smoothing), key)
            summary = {"source": "trained", **result.summary()}
        save_trained(ctx, "teacher", key, model, TEACHER, tcfg.arch, summary, training=summary)
        ctx.reporter.stage("teacher", "done", f"test top-1 {summary['last_epoch']['test_acc']:.2f} %")


STAGE = TeacherStage()
