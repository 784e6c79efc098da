"""`edgekd select`: student candidates measured on the target, ranked against a budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console

from edgekd.cli.common import err
from edgekd.cli.options import OptionGroup, section_defaults
from edgekd.cli.tables import select_table
from edgekd.config.budget import Budget
from edgekd.config.targets import DEFAULT_TARGET, TARGETS, resolve_opset

# The budget's flags, declared once on edgekd.config.budget.Budget and shared with compress.
BUDGET = OptionGroup.of(Budget, exclude=("select_epochs", "select_top", "select_images"),
                        defaults=section_defaults(("", Budget())))


@click.command()
@BUDGET
@click.option("--teacher-arch", default="mbv2_cifar", show_default=True,
              help="The reference of --speedup, measured in the same round trip.")
@click.option("--input-size", type=int, default=32, show_default=True)
@click.option("--num-classes", type=int, default=10, show_default=True)
@click.option("--export-target", type=click.Choice(list(TARGETS)), default=DEFAULT_TARGET, show_default=True,
              help="Opset and IR version of the candidates' ONNX.")
@click.option("--precision", "trt_precision", type=click.Choice(["fp16", "fp32"]), default="fp16",
              show_default=True,
              help="TensorRT precision of the teacher, the --speedup reference (--backend tensorrt); "
                   "candidates build at the precision each combination names.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Measurement cache (default $EDGEKD_CACHE or ~/.cache/edgekd).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/select"), show_default=True,
              help="Folder for select.json, pareto.png and the candidates' bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print select.json to stdout.")
def select(teacher_arch, input_size, num_classes, export_target, trt_precision, cache_dir, out, as_json,
           **flags):
    """Measure student candidates on the target and pick the one a latency budget allows.

    Every combination of candidate, precision (--budget-precision) and input size
    (--budget-input-sizes) is exported once with random weights (latency does not depend on
    them) and all are measured in one bundle, through the same ship/verify/run path as
    `edgekd deploy`.
    Measurements are cached by the target's environment, so a second selection measures
    nothing. Without a budget every candidate is measured and plotted.
    """
    from edgekd.config.settings import set_value
    from edgekd.pipeline.stages.select import deploy_options_for
    from edgekd.selection.cache import LatencyCache
    from edgekd.selection.measure import Spec
    from edgekd.selection.select import select as run_select

    budget = Budget()
    for key, value in BUDGET.given(flags).items():
        set_value(budget, key, value)
    budget.validate()
    opset, ir = resolve_opset(export_target)
    spec = Spec(input_size, num_classes, budget.batch, opset, ir, for_tensorrt=budget.backend == "tensorrt")
    opts = deploy_options_for(budget, trt_precision)
    names = budget.candidates or None

    def progress(step, detail):
        err.print(f"[cyan]{step:>8}[/] {detail}", highlight=False, soft_wrap=True)

    try:
        doc = run_select(budget, spec, opts, out, names, teacher_arch, LatencyCache(cache_dir),
                         progress=progress)
    except KeyboardInterrupt:
        err.print("interrupted: rerun the same command; what was measured is cached")
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    out_console = Console()
    out_console.print(select_table(doc))
    err.print(f"select: {out / 'select.json'}   plot: {out / 'pareto.png'}", highlight=False)
