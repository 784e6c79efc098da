"""Single stages run on an existing run directory (`edgekd export RUN_DIR`, ...)."""

from __future__ import annotations

from pathlib import Path

from edgekd.config import config_from_dict
from edgekd.errors import RunDirError
from edgekd.pipeline import compress as pipeline
from edgekd.pipeline.rundir import CONFIG, RunDir
from edgekd.train import engine


def open_run(run_dir: str | Path) -> pipeline.Context:
    """Reopen a finished run: its settings and its data set, without changing anything."""
    run = RunDir(run_dir)
    if not (run / CONFIG).exists():
        raise RunDirError(f"{run_dir} is not an edgekd run directory (no {CONFIG}): pass a run's folder")
    cfg = config_from_dict(run.read_config()["settings"])
    ctx = pipeline.Context(cfg, run, engine.resolve_device("cpu"), pipeline._Silent())
    pipeline.stage_data(ctx)
    return ctx


def export_run(run_dir: str | Path, opset: int | None = None) -> dict:
    ctx = open_run(run_dir)
    for name in ("teacher.pt", "student.pt"):
        if not (ctx.run / name).exists():
            raise RunDirError(f"{run_dir} has no {name}: finish the run first (edgekd compress --resume)")
    if opset is not None:
        ctx.cfg.export.opset = opset
    pipeline.stage_export(ctx)
    return ctx.run.stage_info("export")
