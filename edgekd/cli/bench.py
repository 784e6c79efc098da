"""`edgekd bench`: latency of models on this machine, or a run's teacher vs student."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekd.cli.common import err, harness_settings, measure_options, out
from edgekd.cli.tables import compare_lines, compare_table, set_table
from edgekd.errors import EdgeKDError


@click.command()
@click.argument("models_", metavar="MODEL...", nargs=-1, type=click.Path(path_type=Path))
@click.option("--compare", "compare_run", type=click.Path(path_type=Path), default=None,
              help="A run's teacher vs student (torch eager, ONNX Runtime, FP32 and INT8), next to the papers' claim.")
@click.option("--verify", "verify_run", type=click.Path(path_type=Path), default=None,
              help="Measure a run's certified teacher and student again and judge its latency budget "
                   "(exit 1 when it no longer holds).")
@click.option("--target", default=None, help="With --verify: where to measure (default: the certificate's).")
@click.option("--sustain", "sustain_s", type=float, default=0.0, metavar="SECONDS",
              help="With --verify: then run each model this long and report the drift beside the verdict.")
@click.option("--batch", "batches", type=int, multiple=True, help="Batch size, repeatable (default 1; --compare: 64 and 1).")
@click.option("--threads", type=int, default=None, help="Intra-op threads, torch and ONNX Runtime (default: the usable cores).")
@click.option("--inputs", type=click.Path(path_type=Path), default=None, help=".npy of samples (default: samples.npy beside the model, else noise).")
@measure_options
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None, help="Write the JSON document here.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Write a PNG bar chart here.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document to stdout.")
def bench(models_, compare_run, verify_run, target, sustain_s, batches, threads, inputs, warmup_s, warmup_iters, min_s, min_iters,
          max_s, out_path, plot, as_json):
    """Latency of ONNX models (ONNX Runtime) and checkpoints (PyTorch eager) on this machine.

    MODEL: .onnx or .pt files. With --compare RUN_DIR: the run's teacher vs student. With
    --verify RUN_DIR: the run's budget certificate checked again on --target.
    """
    from edgekd.bench.measure import bench_models
    from edgekd.bench.measure import compare_run as compare
    from edgekd.bench.plot import plot_compare, plot_set
    from edgekd.io import write_json

    if verify_run is not None:
        if models_ or compare_run is not None:
            raise EdgeKDError("--verify RUN_DIR takes no MODEL files and no --compare")
        given = [name for name in ("batches", "threads", "inputs", "plot", "warmup_s", "warmup_iters",
                                   "min_s", "min_iters", "max_s")
                 if click.get_current_context().get_parameter_source(name).name != "DEFAULT"]
        if given:
            raise EdgeKDError(f"--verify measures as its certificate says: drop --{given[0].replace('_', '-')}"
                              .replace("--batches", "--batch"))
        return _verify(verify_run, target, sustain_s, out_path, as_json)
    if target is not None or sustain_s:
        raise EdgeKDError("--target and --sustain go with --verify RUN_DIR: edgekd deploy measures a run "
                          "elsewhere, with --sustain too")
    settings = harness_settings(warmup_s, warmup_iters, min_s, min_iters, max_s)

    def progress(detail):
        err.print(f"[cyan]   bench[/] {detail}", highlight=False, soft_wrap=True)

    if compare_run is not None:
        if models_:
            raise EdgeKDError("give MODEL files or --compare RUN_DIR, not both")
        doc = compare(compare_run, list(batches) or [64, 1], threads, settings, progress=progress)
    else:
        doc = bench_models(list(models_), list(batches) or [1], threads, settings,
                           str(inputs) if inputs else None, progress=progress)
    if out_path:
        write_json(out_path, doc)
    if plot:
        (plot_compare if compare_run is not None else plot_set)(doc, plot)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    elif compare_run is not None:
        out.print(compare_table(doc))
        for line in compare_lines(doc):
            out.print(line, highlight=False, soft_wrap=True)
    else:
        out.print(set_table(doc))
    for path, what in ((out_path, "json"), (plot, "plot")):
        if path:
            err.print(f"wrote {what}: {path}", highlight=False)


def _verify(run: Path, target: str | None, sustain_s: float, out_path: Path | None, as_json: bool) -> None:
    """The certificate's verdict measured again: one line, exit 1 when it no longer holds."""
    import sys

    from deploy.bench import sustained_line
    from edgekd.bench.verify import verify_run
    from edgekd.io import write_json

    def progress(step, detail):
        err.print(f"[cyan]{step:>8}[/] {detail}", highlight=False, soft_wrap=True)

    doc = verify_run(run, target, progress, sustain_s)
    if out_path:
        write_json(out_path, doc)
        err.print(f"wrote json: {out_path}", highlight=False)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    for role, sustained in (doc["sustained"] or {}).items():
        err.print(f"{role}: {sustained_line(sustained)}", highlight=False, soft_wrap=True)
    if doc["holds"]:
        # with --json, stdout holds the document alone
        (err if as_json else out).print(f"[green]verified:[/] {doc['summary']}", highlight=False, soft_wrap=True)
        return
    err.print(f"[bold red]FAIL:[/] {doc['summary']}", highlight=False, soft_wrap=True)
    sys.exit(1)
