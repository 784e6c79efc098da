"""Stage `teacher`: the given teacher (an edgekd checkpoint, a bare state_dict with its
architecture and normalisation, or pretrained weights by name; fine-tuned first by stage
`finetune` when asked) checked against the run, or a teacher trained here, as RUN/teacher.pt."""

from __future__ import annotations

from pathlib import Path

import torch

from edgekd.config import TeacherConfig, parse_norm
from edgekd.data import Dataset
from edgekd.errors import ModelError
from edgekd.io import sha256_file
from edgekd.models.pretrained import (
    is_pretrained_spec,
    load_pretrained,
    pretrained_info,
    weights_id,
)
from edgekd.models.registry import Classifier
from edgekd.pipeline.context import Context, augment_settings, new_model, save_trained, train_stage
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage
from edgekd.train import checkpoint, engine

TEACHER = "teacher.pt"
FINETUNED = "teacher.finetuned.pt"


def teacher_source(tcfg: TeacherConfig) -> str:
    """What --teacher is: trained (here) | pretrained (weights by name) | file."""
    if not tcfg.checkpoint:
        return "trained"
    return "pretrained" if is_pretrained_spec(tcfg.checkpoint) else "file"


def load_given_teacher(tcfg: TeacherConfig, data: Dataset, new_head: bool = False) -> tuple[Classifier, dict]:
    """The given teacher as a model and what it is, refused (ModelError) unless it fits the
    run: architecture, classes (or `new_head` for fine-tuning) and input size."""
    norm = parse_norm(tcfg.norm)
    norm = (data.mean, data.std) if norm == "data" else norm
    spec = tcfg.checkpoint
    if teacher_source(tcfg) == "pretrained":
        arch = pretrained_info(spec).arch
        if tcfg.arch != arch:
            raise ModelError(f"teacher {spec} is a {arch}, not a {tcfg.arch}: drop --teacher-arch "
                             f"(or set teacher.arch to {arch})")
        model, info = load_pretrained(spec, data.num_classes if new_head else None)
        if info.num_classes != data.num_classes and not new_head:
            raise ModelError(
                f"teacher {spec} has {info.num_classes} classes, the data set {data.num_classes}: "
                "add --teacher-finetune-epochs N to fine-tune a new head on this data")
        if norm is not None:  # the user's preprocessing wins over the weights' metadata
            model = Classifier(model.body, *norm)
        return model, {"source": spec, "pretrained": info.to_dict()}
    model, meta = checkpoint.load_model(spec, tcfg.arch, data.num_classes, "teacher",
                                        norm=norm, new_head=new_head)
    if meta.get("format") == checkpoint.FORMAT and norm is not None and not (
            torch.allclose(model.mean.flatten(), torch.tensor(norm[0], dtype=torch.float32), atol=1e-4)
            and torch.allclose(model.std.flatten(), torch.tensor(norm[1], dtype=torch.float32), atol=1e-4)):
        raise ModelError(f"teacher checkpoint {spec} carries another normalisation (mean "
                         f"{[round(v, 4) for v in model.mean.flatten().tolist()]}) than teacher.norm "
                         f"{tcfg.norm!r}: drop --teacher-norm (the checkpoint's own is used)")
    if meta.get("classes") and meta["classes"] != data.classes and not new_head:
        raise ModelError(
            f"teacher checkpoint {spec} was trained on classes {meta['classes'][:5]}..., "
            f"not this data set's {data.classes[:5]}...: use a teacher of this data set"
        )
    if meta.get("input_size") and meta["input_size"] != data.input_size and not new_head:
        raise ModelError(
            f"teacher checkpoint {spec} was trained at {meta['input_size']}x"
            f"{meta['input_size']}, this run is at {data.input_size}x{data.input_size}: "
            f"pass --input-size {meta['input_size']}"
        )
    return model, {"source": str(spec)}


def load_teacher_checkpoint(tcfg: TeacherConfig, data: Dataset) -> Classifier:
    return load_given_teacher(tcfg, data)[0]


def source_key(tcfg: TeacherConfig) -> dict:
    if teacher_source(tcfg) == "pretrained":
        return {"pretrained": tcfg.checkpoint, "weights": weights_id(tcfg.checkpoint)}
    return {"checkpoint_sha256": sha256_file(tcfg.checkpoint)} if Path(tcfg.checkpoint).is_file() else {}


def finetunes(ctx: Context) -> bool:
    return teacher_source(ctx.cfg.teacher) != "trained" and ctx.cfg.teacher.finetune_epochs > 0


class TeacherStage(Stage):
    name = "teacher"
    outputs = (TEACHER,)

    def check(self, ctx: Context) -> None:
        if ctx.cfg.teacher.checkpoint and not finetunes(ctx):
            load_given_teacher(ctx.cfg.teacher, ctx.data)

    def key(self, ctx: Context) -> str:
        tcfg = ctx.cfg.teacher
        if finetunes(ctx):
            source = {"finetuned": ctx.run.output_hash(FINETUNED)}
        elif tcfg.checkpoint:
            source = {**source_key(tcfg), **({"norm": tcfg.norm} if tcfg.norm else {})}
        else:
            source = {"train": tcfg.train.__dict__}
        return stage_key("teacher", tcfg.arch, source, ctx.data.fingerprint(), ctx.cfg.seed,
                         ctx.device.type, augment_settings(ctx).__dict__,
                         *([tcfg.norm] if tcfg.norm not in (None, "data") and not tcfg.checkpoint else []))

    def run(self, ctx: Context, key: str) -> None:
        tcfg, data = ctx.cfg.teacher, ctx.data
        if tcfg.checkpoint:
            ctx.reporter.stage("teacher", "start", f"loading {tcfg.checkpoint}")
            if finetunes(ctx):
                model, meta = checkpoint.load_model(ctx.run / FINETUNED, tcfg.arch, data.num_classes, "teacher")
                given = {"source": tcfg.checkpoint, "finetuned": meta.get("training")}
            else:
                model, given = load_given_teacher(tcfg, data)
            model = model.to(ctx.device)
            acc, _ = engine.evaluate(model, data.test, ctx.device)
            val_acc, _ = engine.evaluate(model, data.val, ctx.device)
            summary = {**given, "normalization": {"mean": model.mean.flatten().tolist(),
                                                  "std": model.std.flatten().tolist()},
                       "last_epoch": {"test_acc": acc, "val_acc": val_acc},
                       "best_epoch": {"test_acc": acc, "val_acc": val_acc, "selected_on": "given"}}
        else:
            ctx.reporter.stage("teacher", "start", f"training {tcfg.arch}")
            model = new_model(ctx, "teacher")
            result = train_stage(ctx, "teacher", model, tcfg.train,
                                 engine.CrossEntropy(tcfg.train.label_smoothing), key)
            summary = {"source": "trained", "normalization": {"mean": model.mean.flatten().tolist(),
                                                              "std": model.std.flatten().tolist()},
                       **result.summary()}
        save_trained(ctx, "teacher", key, model, TEACHER, tcfg.arch, summary, training=summary)
        ctx.reporter.stage("teacher", "done", f"test top-1 {summary['last_epoch']['test_acc']:.2f} %")


STAGE = TeacherStage()
