"""`edgekd models`: the model families with params, MACs and compression factor."""

from __future__ import annotations

import json

import click
from rich.table import Table

from edgekd.cli.common import out


@click.command()
@click.argument("names", nargs=-1)
@click.option("--teacher", default="mbv2_cifar", show_default=True, help="Reference for the compression factor.")
@click.option("--num-classes", default=10, show_default=True, type=int)
@click.option("--input-size", default=None, type=int, help="MACs at this size (default: each model's own).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(names, teacher, num_classes, input_size, as_json):
    """Teacher and student families with params, MACs and compression factor.

    NAMES: models to describe (default: the built-in families). Any torchvision
    classification model name (e.g. resnet18) works too.
    """
    from edgekd.models.registry import describe, list_models

    rows = [describe(n, num_classes, input_size, teacher).to_dict() for n in (names or list_models())]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"edgekd models ({num_classes} classes; CF vs {teacher})")
    for col in ("name", "family", "params", "MACs", "input", "CF", "description"):
        table.add_column(col, justify="right" if col in ("params", "MACs", "input", "CF") else "left")
    for r in rows:
        table.add_row(r["name"], r["family"], f"{r['params']:,}", f"{r['macs'] / 1e6:.1f} M",
                      str(r["input_size"]), f"{r['compression_factor']:.2f}", r["description"])
    out.print(table)
