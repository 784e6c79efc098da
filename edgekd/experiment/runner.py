"""Run many `compress` runs that share one teacher, resumably, and collect their reports.

Layout under the experiment directory:

    teacher/                 the shared teacher (trained once, or the given checkpoint)
    ig/<id>/                 IG maps shared by the runs whose method has `ig` (one per
                             teacher, training set and IG settings)
    soft_labels/<key>/       the teacher's recorded logits per augmented view, shared by the
                             runs of one seed (edgekd.distill.soft_labels)
    runs/<label>/s<seed>/    one ordinary run directory per (variant, seed)
    results.json, results.md, *.png   written by edgekd.experiment.report

A finished run is never redone: its run directory is reopened and every stage skips.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.config import RunConfig, apply_override, config_from_dict, validate
from edgekd.pipeline.compress import compress
from edgekd.pipeline.context import Context, Silent
from edgekd.pipeline.rundir import RunDir
from edgekd.pipeline.stages import data as data_stage
from edgekd.pipeline.stages import teacher as teacher_stage
from edgekd.pipeline.stages.data import prepare_data
from edgekd.pipeline.stages.warmup import epoch_plan
from edgekd.train import engine


@dataclass
class RunSpec:
    label: str  # the variant (a method, a student...), used to group seeds
    seed: int
    overrides: dict = field(default_factory=dict)  # dotted config keys


def train_shared_teacher(base: RunConfig, out: Path, reporter=None) -> Path:
    """Train (or adopt) the teacher once in `out`; returns the path of its checkpoint."""
    cfg = copy.deepcopy(base)
    cfg.method = "student"
    validate(cfg)
    run = RunDir(out)
    run.open(cfg, resume=True)
    ctx = Context(cfg, run, engine.resolve_device(cfg.device), reporter or Silent(),
                  data=prepare_data(cfg))
    data_stage.STAGE(ctx)
    teacher_stage.STAGE(ctx)
    return run / "teacher.pt"


def subset_fraction(base: RunConfig, count: int) -> float:
    """The stratified fraction of the training split that holds about `count` images."""
    n = len(prepare_data(base).train)
    return min(1.0, count / n)


def _run_one(cfg_dict: dict, run_dir: str, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    cfg = config_from_dict(cfg_dict)
    return compress(cfg, run_dir, resume=True)


def _check_epoch_budgets(base: RunConfig, specs: list[RunSpec]) -> None:
    """An InDistill warm-up that a run's epochs cannot hold is refused before anything trains."""
    data = None
    for spec in specs:
        cfg = copy.deepcopy(base)
        for k, v in spec.overrides.items():
            apply_override(cfg, k, v)
        if "indistill" in cfg.methods:
            data = data or prepare_data(base)
            epoch_plan(cfg, data.num_classes, data.input_size)


def run_grid(base: RunConfig, specs: list[RunSpec], out: Path, *, jobs: int = 1,
             on_done: Callable[[RunSpec, dict], None] | None = None,
             reporter=None) -> list[dict]:
    """Run every spec (skipping finished ones) and return one record per run."""
    out = Path(out)
    _check_epoch_budgets(base, specs)
    teacher = Path(base.teacher.checkpoint) if base.teacher.checkpoint else \
        train_shared_teacher(base, out / "teacher", reporter)
    todo = []
    for spec in specs:
        cfg = copy.deepcopy(base)
        cfg.seed = spec.seed
        cfg.teacher.checkpoint = str(teacher.resolve())
        for k, v in spec.overrides.items():
            apply_override(cfg, k, v)
        if "ig" in cfg.methods and not cfg.ig.cache_dir:
            # One teacher, one data set: the runs share the maps (computed once, locked).
            cfg.ig.cache_dir = str((out / "ig").resolve())
        if not cfg.distill.soft_label_dir:
            # The teacher's soft labels too: the methods of one seed see the same views.
            cfg.distill.soft_label_dir = str((out / "soft_labels").resolve())
        validate(cfg)
        todo.append((spec, cfg, out / "runs" / spec.label.replace("+", "_") / f"s{spec.seed}"))

    records = []

    def record(spec: RunSpec, run_dir: Path, report: dict) -> dict:
        rec = {"label": spec.label, "seed": spec.seed, "run_dir": str(run_dir.relative_to(out)),
               "report": report}
        if on_done:
            on_done(spec, report)
        return rec

    if jobs <= 1:
        for spec, cfg, run_dir in todo:
            # A finished run reopens with every stage skipped; other settings are refused.
            report = compress(cfg, run_dir, resume=True, reporter=reporter)
            records.append(record(spec, run_dir, report))
        return records
    # Independent runs in parallel, each with its share of the cores.
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # Spawned, not forked: a parent that has used CUDA (the shared teacher) cannot fork it.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(spec, run_dir, pool.submit(_run_one, cfg.to_dict(), str(run_dir), threads))
                   for spec, cfg, run_dir in todo]
        for spec, run_dir, fut in futures:
            records.append(record(spec, run_dir, fut.result()))
    return records

