"""`edgekd export`: a run's models to ONNX for a device, with the parity check."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekd.cli.common import out
from edgekd.config.targets import DEFAULT_TARGET, TARGETS


def target_table(width: int = 78) -> str:
    """The targets with their default/highest opset, IR and runtime, from TARGETS."""
    import textwrap

    from edgekd.config.targets import resolve_opset

    lines = ["\b", "targets (opset default/max, IR version):"]
    for t in TARGETS.values():
        head = f"  {t.name:<11} {t.opset}/{t.max_opset}  IR {resolve_opset(t.name)[1]:<2} "
        body = textwrap.wrap(t.runtime, width - len(head))
        lines += [head + body[0]] + [" " * len(head) + more for more in body[1:]]
    return "\n".join(lines)


@click.command(epilog=target_table())
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(list(TARGETS)), default=None,
              help=f"Device the ONNX must load on; picks opset and IR version (default: the run's, "
                   f"{DEFAULT_TARGET}; table below).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the target's).")
@click.option("--simplify/--no-simplify", default=None, help="Simplify the graph with onnxslim (parity re-checked).")
@click.option("--json", "as_json", is_flag=True)
def export(run_dir, target, opset, simplify, as_json):
    """Export a run's teacher and student to ONNX (with a parity check against PyTorch)."""
    from edgekd.pipeline.standalone import export_run

    info = export_run(run_dir, opset, target, simplify)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        if "target" in info:
            out.print(f"target {info['target']}: opset {info['opset']}, IR {info['ir_version']}",
                      highlight=False)
        for name, p in info["parity"].items():
            out.print(f"{name}.onnx: max |diff| {p['max_abs_diff']:.2e}, top-1 agreement "
                      f"{p['top1_agreement']:.2f} % on {p['images']} test images", highlight=False)
