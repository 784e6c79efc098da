"""The `edgekd` command line: one module per verb; each parses options, calls the library
and prints. Settings flags come from their declarations (edgekd.cli.options)."""

from __future__ import annotations

import click

from edgekd.cli import bench, compress, deploy, experiment, export, ig, models, quantize, select
from edgekd.cli.common import Group
from edgekd.version import __version__


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekd")
def cli():
    """Distil an image classifier into a small student and measure it where it will run."""


for _verb in (models.models, compress.compress, select.select, export.export, quantize.quantize,
              experiment.experiment, ig.ig, bench.bench, deploy.deploy):
    cli.add_command(_verb)


def main():
    cli(prog_name="edgekd")


__all__ = ["cli", "main"]
