"""`edgekd deploy`: ship a run to a device, check and measure it there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgekd.cli.common import err, harness_settings, measure_options, out
from edgekd.cli.tables import deploy_table


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--target", required=True, help="local | ssh://user@host[:port] | user@host | an ssh config alias.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--remote-python", default=None, help="Python on the device, e.g. a venv's bin/python (default python3).")
@click.option("--remote-dir", default=None, help="Bundles folder on the device (default ~/edgekd-bundles).")
@click.option("--batch", "batches", type=int, multiple=True, help="Batch size, repeatable (default 1, 8, 64).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads on the device (default: its cores).")
@click.option("--provider", "providers", multiple=True, help="ONNX Runtime provider on the device: cpu | cuda | tensorrt | auto.")
@click.option("--precision", type=click.Choice(["fp16", "fp32", "int8"]), default="fp16", show_default=True,
              help="TensorRT precision for FP32 models (int8: calibrated on RUN_DIR/calib); INT8 exports build as INT8.")
@click.option("--model", "models_", multiple=True, help="Only these: teacher, student, teacher.int8, student.int8.")
@click.option("--ssh-config", type=click.Path(path_type=Path), default=None, help="ssh config file for ssh, rsync and scp (-F).")
@click.option("--transfer", type=click.Choice(["auto", "rsync", "scp", "tar"]), default="auto", show_default=True,
              help="auto: rsync when both ends have it, else scp (legacy -O, then a tar stream, when the device has no sftp).")
@click.option("--bwlimit", type=int, default=None, metavar="KIB_S", help="Cap the transfer rate (KiB/s).")
@click.option("--connect-timeout", type=int, default=20, show_default=True, help="Seconds to wait for ssh to connect.")
@measure_options
@click.option("--sustain", "sustain_s", type=float, default=0.0, metavar="SECONDS",
              help="Then run each model this long at the largest batch and report the drift (thermal steady state).")
@click.option("--json", "as_json", is_flag=True, help="Print the results document to stdout.")
def deploy(run_dir, target, backend, remote_python, remote_dir, batches, threads, providers, precision,
           models_, ssh_config, transfer, bwlimit, connect_timeout, warmup_s, warmup_iters, min_s,
           min_iters, max_s, sustain_s, as_json):
    """Ship a run to a device, check accuracy and measure latency there, bring the results back.

    The bundle is verified by checksum on the device before anything in it runs; results go to
    RUN_DIR/bench-<target>.json (schema edgekd.run-bench).
    """
    from deploy.bench import sustained_line
    from edgekd.pipeline.standalone import open_run
    from edgekd.ship import DeployOptions, deploy_run

    opts = DeployOptions(
        target=target, backend=backend, remote_python=remote_python, remote_dir=remote_dir,
        batch_sizes=list(batches) or [1, 8, 64], threads=threads, providers=list(providers) or None,
        precision=precision, models=list(models_) or None,
        ssh_config=str(ssh_config) if ssh_config else None, transfer=transfer, bwlimit_kbps=bwlimit,
        connect_timeout_s=connect_timeout, sustain_s=sustain_s,
        settings=harness_settings(warmup_s, warmup_iters, min_s, min_iters, max_s))

    def progress(step, detail):
        err.print(f"[cyan]{step:>8}[/] {detail}", highlight=False, soft_wrap=True)

    try:
        result = deploy_run(run_dir, opts, progress, open_data=lambda: open_run(run_dir).data)
    except KeyboardInterrupt:
        err.print("interrupted: rerun the same command; the transfer resumes and nothing "
                  "unverified runs on the device")
        sys.exit(130)
    doc = result["document"]
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    out.print(deploy_table(doc))
    models = doc["models"]
    for prec in ("", ".int8"):
        t, s = models.get("teacher" + prec), models.get("student" + prec)
        if t and s:
            for rt, rs in zip(t["results"], s["results"], strict=True):
                out.print(f"teacher/student{prec} at batch {rt['batch_size']}: "
                          f"{rt['latency_ms']['p50'] / rs['latency_ms']['p50']:.2f}x (p50)", highlight=False)
    for key, m in sorted(models.items()):
        line = sustained_line(m.get("sustained"))
        if line:
            out.print(f"{key}: {line}", highlight=False, soft_wrap=True)
    for key, m in sorted(models.items()):
        agreement = m["accuracy"].get("agreement")
        if agreement is not None and agreement < 99.0:
            err.print(f"[yellow]warning:[/] {key} agrees with the workstation on only {agreement:.1f} % of "
                      "the samples", highlight=False)
    for w in next(iter(models.values()))["environment"].get("warnings", []):
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    err.print(f"results: {result['path']}", highlight=False)
