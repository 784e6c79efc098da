"""`edgekd ig compute | show`: integrated-gradient maps of a run's teacher."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from edgekd.cli.common import RichReporter, err, out
from edgekd.cli.options import OptionGroup
from edgekd.config.sections import RunConfig


@click.group()
def ig():
    """Integrated-gradient maps of a run's teacher: compute (torchrun-able) and show."""


class IGBar:
    """The IG computation's plan and a progress bar (stderr, rank 0 only)."""

    def __init__(self, console: Console):
        self.reporter = RichReporter(console)

    def on_plan(self, info):
        for note in info["notes"]:
            self.reporter.stage("ig", "note", note)
        ranks = f" x {info['world_size']} ranks" if info["world_size"] > 1 else ""
        self.reporter.stage("ig", "start", f"{info['todo_images']} of {info['images']} maps on "
                            f"{info['device']}{ranks}, {info['rows_per_forward']} rows per forward")

    def on_chunk(self, done, total, ips):
        self.reporter.on_progress("ig", done, total, f"{ips:.1f} img/s")

    def close(self):
        if self.reporter.bar is not None:
            self.reporter.bar.stop()


# The map settings a computation may change (not the overlay's p and blend), and the device.
IG_SETTINGS = OptionGroup.of(RunConfig, keys=("device", "ig.steps", "ig.method", "ig.target", "ig.baseline",
                                              "ig.dtype", "ig.internal_batch_size", "ig.chunk_size"))


@ig.command("compute")
@click.argument("run_dir", type=click.Path(path_type=Path))
@IG_SETTINGS
@click.option("--force", is_flag=True, help="Recompute maps made by another teacher, data set or settings.")
@click.option("--json", "as_json", is_flag=True)
def ig_compute(run_dir, force, as_json, **flags):
    """Compute (or resume, or check) the IG maps of RUN_DIR's teacher into RUN_DIR/ig/.

    Under `torchrun --nproc-per-node N -m edgekd ig compute RUN_DIR` the images are sharded
    over the ranks (gloo on CPU, NCCL on GPU). Settings not given are the run's.
    """
    from edgekd.pipeline.standalone import ig_compute_run

    rank0 = int(os.environ.get("RANK", "0")) == 0
    overrides = IG_SETTINGS.given(flags)
    device = overrides.pop("device", None)
    bar = IGBar(err) if rank0 else None
    try:
        info = ig_compute_run(run_dir, overrides, device, force, bar)
    except KeyboardInterrupt:
        err.print(f"interrupted: rerun `edgekd ig compute {run_dir}` to resume at the first incomplete chunk")
        sys.exit(130)
    finally:
        if bar is not None:
            bar.close()
    if not rank0:
        return
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    verb = {"valid": "already complete", "computed": "computed", "resumed": "resumed and completed",
            "repaired": "repaired"}[info["status"]]
    speed = f" ({info['images_per_s']:.1f} img/s, {info['world_size']} rank(s))" if info["computed_images"] else ""
    out.print(f"{info['cache']}: {info['maps']} maps {verb}{speed}", highlight=False)


@ig.command("show")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-n", "--samples", type=int, default=10, show_default=True, help="Rows in the grid.")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None, help="PNG path (default RUN_DIR/ig_grid.png).")
@click.option("--json", "as_json", is_flag=True)
def ig_show(run_dir, samples, out_path, as_json):
    """Write a PNG grid of image | IG map | overlaid image for SAMPLES training images."""
    from edgekd.pipeline.standalone import ig_show_run

    info = ig_show_run(run_dir, samples, out_path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        out.print(f"{info['png']}: {len(info['indices'])} rows (image | map | overlay)", highlight=False)
