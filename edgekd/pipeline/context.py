"""What every stage shares: the run's Context (settings, run directory, device, data, the
reporter), the reporter's protocol, and the helpers that load, build and train models in a
run. Stages (edgekd.pipeline.stages) import this module; it imports none of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from edgekd import distributed
from edgekd.config import RunConfig, parse_norm
from edgekd.data import Dataset
from edgekd.data.augment import RESIZED_CROP_FROM, AugmentSettings, ResizedCropSettings
from edgekd.errors import EdgeKDError
from edgekd.models.registry import Classifier, create_model
from edgekd.pipeline.rundir import RunDir
from edgekd.runfiles import METRICS
from edgekd.train import checkpoint, engine

# Files of the run directory that more than one stage reads.
WARMUP = "student.warmup.pt"
AUX = "aux_teacher.pt"
IG_DIR = "ig"


class Reporter(engine.Callback, Protocol):
    def stage(self, name: str, status: str, detail: str = "") -> None: ...


class Silent:
    """A reporter that shows nothing (library calls, ranks other than 0)."""

    def stage(self, name, status, detail=""): ...
    def on_epoch_start(self, stage, epoch, epochs, steps): ...
    def on_step(self, stage, step, loss, acc, ips): ...
    def on_epoch_end(self, stage, record): ...


@dataclass
class Context:
    """One run in progress: what the stages read (cfg, data) and where they write (run), and
    the values one stage hands to later ones, each set by the stage named beside it."""

    cfg: RunConfig
    run: RunDir
    device: torch.device
    reporter: Reporter = field(default_factory=Silent)
    data: Dataset | None = None
    opened: str | None = None  # compress: how the run directory was opened (RunDir.open)
    data_summary: dict | None = None  # data: what data.json records
    epoch_plan: dict | None = None  # warmup.plan_epochs: the student's epochs, split
    ig_id: str | None = None  # ig: content id of the maps the student trains with
    ig_folder: Path | None = None  # ig: where those maps are
    select_candidates: list[str] | None = None  # select: the candidates the method can train
    select_left_out: dict[str, str] | None = None  # select: the others, with why
    select_skipped: dict[str, str] | None = None  # select: sizes an architecture cannot take
    select_doc: dict | None = None  # select: a measurement not yet written
    selection: dict | None = None  # select: the choice, as the ledger records it
    budget_final: dict | None = None  # budget: a final check that failed (not in the ledger)


def on_main(fn):
    """Run `fn` on rank 0 only and hand its result (or its error) to every rank; just `fn()`
    in a single process. Ranks never wait on a rank that has failed."""
    if not distributed.active():
        return fn()
    outcome: tuple = ("ok", None)
    if distributed.is_main():
        try:
            outcome = ("ok", fn())
        except Exception as e:  # re-raised below, on every rank
            outcome = ("error", e)
    kind, value = distributed.broadcast_object(outcome)
    if kind == "error":
        if distributed.is_main():
            raise value
        raise EdgeKDError(f"rank 0 failed: {value}")
    return value


def augment_settings(ctx: Context) -> AugmentSettings:
    """The run's augmentation: data.augment auto picks RandomResizedCrop from 96 px, the
    papers' padded crop below (recorded in data.json)."""
    d = ctx.cfg.data
    hflip = ctx.data.hflip if d.hflip is None else d.hflip
    kind = d.augment if d.augment != "auto" else (
        "resized_crop" if ctx.data.input_size >= RESIZED_CROP_FROM else "crop_pad")
    if kind == "resized_crop":
        return ResizedCropSettings(hflip=hflip)
    pad = d.crop_padding if d.crop_padding is not None else ctx.data.input_size // 8
    return AugmentSettings(crop_padding=pad, hflip=hflip)


def input_norm(ctx: Context, role: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a new model of `role` normalises its raw [0, 1] input with."""
    norm = parse_norm(getattr(ctx.cfg, role).norm)
    return (ctx.data.mean, ctx.data.std) if norm in (None, "data") else norm


def new_model(ctx: Context, role: str) -> Classifier:
    # Seeded per role so the student's init does not depend on whether the teacher was trained.
    torch.manual_seed(ctx.cfg.seed * 2 + (role == "student"))
    arch = getattr(ctx.cfg, role).arch
    return create_model(arch, ctx.data.num_classes, *input_norm(ctx, role), student_resize(ctx, role))


def student_resize(ctx: Context, role: str = "student") -> int | None:
    """The lower input size a student downscales the run's images to (None: the run's)."""
    s = ctx.cfg.student.input_size if role == "student" else None
    return s if s is not None and s != ctx.data.input_size else None


def load_run_model(ctx: Context, name: str) -> Classifier:
    """RUN/<name>.pt (teacher, student, aux_teacher, student.warmup) as a model on the CPU."""
    model, _ = checkpoint.load_model(ctx.run / f"{name}.pt", what=name)
    return model


def frozen_teacher(ctx: Context, name: str = "teacher") -> Classifier:
    teacher = load_run_model(ctx, name).to(ctx.device).eval()
    if ctx.cfg.student.train.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher


def train_stage(ctx: Context, stage: str, model, train_cfg, objective, key: str,
                transform: engine.BatchTransform | None = None, evaluate_every_epoch: bool = True,
                train=None):
    """engine.train for one training stage of the run, resuming from RUN/ckpt/<stage>.state.pt
    (on `train`, a subset of the training split, when given)."""
    ckpt_dir = ctx.run / "ckpt"
    ckpt_dir.mkdir(exist_ok=True)
    return engine.train(
        model, ctx.data.train if train is None else train, ctx.data.val, ctx.data.test, train_cfg,
        stage=stage, seed=ctx.cfg.seed, device=ctx.device, objective=objective,
        transform=transform or engine.StandardAugment(augment_settings(ctx)),
        state_path=ckpt_dir / f"{stage}.state.pt", metrics_path=ctx.run / METRICS,
        settings_key=key, resume=True, tb_dir=ctx.run / "tb", callback=ctx.reporter,
        evaluate_every_epoch=evaluate_every_epoch,
    )


def save_trained(ctx: Context, stage: str, key: str, model, file: str, arch: str, summary: dict,
                 **meta) -> None:
    """Rank 0 saves a trained stage's model as RUN/<file>, records the stage as done and drops
    its resume state."""
    def save():
        checkpoint.save_model(model.cpu(), ctx.run / file, arch, ctx.data.classes,
                              input_size=ctx.data.input_size, dataset=ctx.data.name, **meta)
        ctx.run.mark_done(stage, key, [file], summary)
        (ctx.run / "ckpt" / f"{stage}.state.pt").unlink(missing_ok=True)

    on_main(save)
