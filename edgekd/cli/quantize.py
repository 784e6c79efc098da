"""`edgekd quantize`: INT8 within an accuracy budget, with diagnosis, fallback and QAD."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekd.cli.common import RichReporter, err, out
from edgekd.cli.tables import diagnosis_table


@click.command()
@click.argument("source", metavar="RUN_DIR|MODEL.onnx", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="INT8 model (default: <model>.int8.onnx beside the FP32 one).")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="Activation range calibration.")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Accuracy budget: largest top-1 drop vs FP32 on the test split, in percentage points.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Keep matching nodes in FP32 (fnmatch on node names or op types, e.g. '/head/*', Gemm); repeatable.")
@click.option("--calib-size", type=int, default=256, show_default=True,
              help="Calibration images, stratified over the classes of the training split.")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Use this calibration set folder instead of writing one.")
@click.option("--model", type=click.Choice(["student", "teacher"]), default="student", show_default=True,
              help="Which model of RUN_DIR.")
@click.option("--dataset", default=None, help="For MODEL.onnx: its data set (default: from its metadata).")
@click.option("--data-dir", default=None)
@click.option("--seed", type=int, default=None, help="Calibration image choice (default: the run's seed).")
@click.option("--diagnose", is_flag=True, help="Per-layer FP32-vs-INT8 error (SQNR) on test images: <out>.diagnosis.json and .png.")
@click.option("--auto-fallback", is_flag=True, help="Keep the most sensitive layers in FP32 until the drop fits --max-drop.")
@click.option("--reduce-range", is_flag=True, help="7-bit weights: exact on x86 CPUs without VNNI, whose INT8 kernels saturate.")
@click.option("--qat-epochs", type=int, default=0, show_default=True,
              help="RUN_DIR's student: first fine-tune it this many epochs with fake quantization and the run's distillation loss.")
@click.option("--qat-lr", type=float, default=None, help="Learning rate of --qat-epochs (default: a tenth of the student's).")
@click.option("--qat-teacher", type=click.Choice(["teacher", "student"]), default="teacher", show_default=True,
              help="Who --qat-epochs distils from: the run's teacher and method, or the FP32 student itself.")
@click.option("--device", default=None, help="Where --qat-epochs trains (default: cpu).")
@click.option("--json", "as_json", is_flag=True)
def quantize(source, out_path, method, max_drop, exclude, calib_size, calib, model, dataset, data_dir,
             seed, diagnose, auto_fallback, reduce_range, qat_epochs, qat_lr, qat_teacher, device,
             as_json):
    """INT8 (ONNX Runtime static QDQ) of a run's model or an .onnx file, within an accuracy budget.

    Over the budget nothing is written but the per-layer diagnosis, and the error names the
    worst layers; --auto-fallback keeps them in FP32 one at a time until the drop fits, and
    --qat-epochs trains the student back under fake quantization (quantization-aware
    distillation) before it is quantized.
    """
    from edgekd.pipeline.standalone import quantize_run

    info = quantize_run(source, out_path, method, max_drop, exclude, calib_size, calib, dataset,
                        data_dir, seed, model, auto_fallback=auto_fallback, diagnose=diagnose,
                        qat_epochs=qat_epochs, qat_lr=qat_lr, qat_teacher=qat_teacher,
                        reduce_range=reduce_range, device=device,
                        reporter=None if as_json else RichReporter(err))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    if info.get("diagnosis"):
        out.print(diagnosis_table(info["diagnosis"]))
    fb = info.get("fallback")
    if fb and fb["kept_fp32"]:
        cost = ", ".join(f"{k.replace('_', ' ')} {v:.2f}x" for k, v in (fb.get("latency_cost") or {}).items())
        out.print(f"kept in FP32 ({len(fb['kept_fp32'])}): {', '.join(fb['kept_fp32'])}", highlight=False)
        out.print(f"latency with the fallback vs all INT8 (p50, this CPU): {cost}", highlight=False)
    a = info["accuracy"]
    if info.get("qat"):
        q = info["qat"]
        out.print(f"quantization-aware: {q['epochs']} epochs ({q['loss']}), quantized "
                  f"{Path(info['quantized_from']).name}, drop measured against "
                  f"{Path(info['accuracy_reference']).name}", highlight=False)
    out.print(f"{info['out_path']}: top-1 {a['fp32_top1']:.2f} % FP32 -> {a['int8_top1']:.2f} % INT8 "
              f"({a['drop_pp']:+.2f} pp drop, budget {max_drop} pp; agreement {a['agreement']:.2f} % "
              f"on {a['n']} test images), {info['method']} on {info['calib_images']} images, "
              f"{info['size_fp32_bytes'] / 1e6:.2f} -> {info['size_int8_bytes'] / 1e6:.2f} MB",
              highlight=False)
    if info["host_kernels"].get("note"):
        err.print(f"note: {info['host_kernels']['note']}", highlight=False)
