"""`edgekd compress`: the whole pipeline into a run directory."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from edgekd.cli.common import RichReporter, err
from edgekd.cli.options import OptionGroup, section_defaults
from edgekd.cli.tables import summary_table
from edgekd.config.sections import RunConfig


def _default_out(cfg) -> Path:
    ds = cfg.data.dataset
    if ds.startswith("imagefolder:"):
        ds = Path(ds.split(":", 1)[1]).name or "imagefolder"
    b = cfg.budget
    student = cfg.student.arch or (f"speedup{b.speedup:g}" if b.speedup is not None else f"budget{b.latency_ms:g}ms")
    return Path("runs") / f"{ds}-{student}-{cfg.method.replace('+', '_')}-s{cfg.seed}"


def _help_defaults():
    """Defaults as --help shows them: the digits demo's, then other data sets' where they differ."""
    from edgekd.config import default_config

    other = default_config("cifar10")
    other.data.dataset = "digits"  # --dataset's own default is the same for all
    return section_defaults(("", default_config("digits")), ("other data sets", other))


# Every setting that has a flag, from its declaration (edgekd.config.sections).
SETTINGS = OptionGroup.of(RunConfig, defaults=_help_defaults())


def _teacher_arch(checkpoint: str) -> str | None:
    """The architecture a named weight set or an edgekd checkpoint says it is."""
    from edgekd.models.pretrained import is_pretrained_spec, pretrained_info

    if is_pretrained_spec(checkpoint):
        return pretrained_info(checkpoint).arch
    if Path(checkpoint).is_file():
        from edgekd.train.checkpoint import peek_arch

        return peek_arch(checkpoint)
    return None


@click.command()
@SETTINGS
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory (default runs/<name>).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="YAML settings (e.g. a run's config.yaml).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any setting by dotted key, e.g. student.train.optimizer=sgd.")
@click.option("--print-config", is_flag=True, help="Print the resolved settings as YAML and stop.")
@click.option("--resume", is_flag=True, help="Continue an unfinished run in --out.")
@click.option("--force", is_flag=True, help="Overwrite the run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
def compress(out, config_file, sets, print_config, resume, force, as_json, **flags):
    """Distil a student from a teacher, export it to ONNX and report accuracy, size and latency."""
    from edgekd.config import build_config
    from edgekd.pipeline.compress import compress as run_compress

    overrides = SETTINGS.given(flags)
    checkpoint = overrides.get("teacher.checkpoint")
    if checkpoint and checkpoint != "train" and "teacher.arch" not in overrides:
        arch = _teacher_arch(checkpoint)  # named weights and checkpoints say what they are
        if arch:
            overrides["teacher.arch"] = arch
    cfg = build_config(config_file, None, overrides, sets)
    if print_config:
        click.echo(cfg.to_yaml(), nl=False)
        return
    out = out or _default_out(cfg)
    # Under `torchrun --nproc-per-node N -m edgekd compress ...` rank 0 alone speaks.
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        from edgekd.config import describe_recipe

        err.print(f"run directory: {out}", highlight=False)
        err.print(f"recipe: {describe_recipe(cfg, limit=4)}", highlight=False)
    try:
        report = run_compress(cfg, out, resume=resume, force=force, reporter=RichReporter(err))
    except KeyboardInterrupt:
        err.print(f"interrupted: rerun the same command with --resume (--out {out}) to continue")
        sys.exit(130)
    if not rank0:
        return
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        out_console = Console()
        out_console.print(summary_table(report))
        out_console.print(f"report: {out / 'report.json'}   student: {out / 'student.onnx'}",
                          highlight=False)
