"""The `edgekd` command line: parses options, calls the library, prints. Nothing else."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgekd import __version__
from edgekd.errors import EdgeKDError

err = Console(stderr=True)
out = Console()
_TARGETS = ["jetson-jp5", "jetson-jp6", "jetson-jp7", "cpu"]


class _Group(click.Group):
    """Turns user errors into one-line messages (no traceback) with exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeKDError as e:
            err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekd")
def cli():
    """Distil an image classifier into a small student and measure it where it will run."""


# ---- models --------------------------------------------------------------------------------
@cli.command()
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


# ---- compress ------------------------------------------------------------------------------
class _RichReporter:
    """Stage lines and a per-epoch progress bar with loss, accuracy and images/s (on stderr)."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.bar: Progress | None = None  # for on_progress
        self.bar_task = None

    def stage(self, name, status, detail=""):
        style = {"start": "cyan", "done": "green", "skip": "yellow", "note": "magenta"}.get(status, "white")
        if self.bar is not None and status != "note":
            self.bar.stop()
            self.bar = None
        self.console.print(f"[{style}]{name:>8} {status:<5}[/] {detail}", highlight=False)

    def on_progress(self, stage, done, total, detail=""):
        """A bar for work that is not epochs (IG maps: images done of total)."""
        if self.bar is None:
            self.bar = Progress(
                TextColumn(f"{stage:>8}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=self.console,
                transient=True,
            )
            self.bar.start()
            self.bar_task = self.bar.add_task(stage, total=total, stats="")
        self.bar.update(self.bar_task, completed=done, total=total, stats=detail)

    def on_epoch_start(self, stage, epoch, epochs, steps):
        if self.bar is not None:  # one live display at a time
            self.bar.stop()
            self.bar = None
        self.progress = Progress(
            TextColumn(f"{stage:>8} epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(stage, total=steps, stats="")

    def on_step(self, stage, step, loss, acc, ips):
        self.progress.update(self.task, completed=step,
                             stats=f"loss {loss:.3f}  acc {acc:.1f} %  {ips:.0f} img/s")

    def on_epoch_end(self, stage, r):
        self.progress.stop()
        # One line that fits 80 columns; a warm-up epoch that was not evaluated shows no accuracy.
        acc = "" if r["test_acc"] is None else (
            (f" val {r['val_acc']:.1f}" if r["val_acc"] == r["val_acc"] else "")
            + f" test {r['test_acc']:.2f} %")
        self.console.print(
            f"{stage:>8} ep {r['epoch']:>3} loss {r['train_loss']:.3f} train {r['train_acc']:.1f}"
            f"{acc} {r['images_per_s']:.0f} img/s {r['epoch_time_s']:.1f} s", highlight=False,
        )


def _default_out(cfg) -> Path:
    ds = cfg.data.dataset
    if ds.startswith("imagefolder:"):
        ds = Path(ds.split(":", 1)[1]).name or "imagefolder"
    b = cfg.budget
    student = cfg.student.arch or (f"speedup{b.speedup:g}" if b.speedup is not None else f"budget{b.latency_ms:g}ms")
    return Path("runs") / f"{ds}-{student}-{cfg.method.replace('+', '_')}-s{cfg.seed}"


@cli.command()
@click.option("--dataset", default=None, help="digits (default, embedded) | cifar10 | imagefolder:PATH")
@click.option("--data-dir", default=None, help="Existing copy of the data set (cifar10).")
@click.option("--teacher", default=None, help="Teacher: 'train' (default), a checkpoint or state_dict (.pt), or weights by name (torchvision:resnet18.IMAGENET1K_V1, timm:resnet18.a1_in1k).")
@click.option("--teacher-arch", default=None, help="Teacher model name (default mbv2_cifar; timm:NAME for timm).")
@click.option("--teacher-norm", default=None, help="Input normalisation of a state_dict teacher: imagenet | cifar10 | data | MEAN_R,MEAN_G,MEAN_B,STD_R,STD_G,STD_B.")
@click.option("--teacher-finetune-epochs", type=int, default=None, help="Fine-tune the given teacher on this data first (a new head when the class count differs).")
@click.option("--student", default=None, help="Student model name (see `edgekd models`).")
@click.option("--method", default=None, help="Terms joined by +: student | kd, ig, at, pkt, fitnet, indistill (default indistill+kd+ig).")
@click.option("--epochs", type=int, default=None, help="Student epochs.")
@click.option("--teacher-epochs", type=int, default=None, help="Teacher epochs when training one.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Student learning rate.")
@click.option("--kd-alpha", type=float, default=None, help="Weight of the KD term (CE gets 1 - alpha).")
@click.option("--kd-temperature", type=float, default=None)
@click.option("--ig-p", type=float, default=None, help="Probability of overlaying an image with its IG map (default 0.1).")
@click.option("--ig-blend", type=float, default=None, help="Overlay weight: x := (1 - b) x + b map (default 0.5).")
@click.option("--ig-steps", type=int, default=None, help="IG integration steps (default 50; digits 8).")
@click.option("--ig-method", default=None, help="gausslegendre (default) | riemann_trapezoid | riemann_left | ...")
@click.option("--ig-target", default=None, help="label (default) | prediction (the teacher's top-1).")
@click.option("--ig-baseline", default=None, help="zeros in the teacher's normalised space (default) | blur | noise.")
@click.option("--input-size", type=int, default=None, help="Resize images to this size.")
@click.option("--student-input-size", type=int, default=None, help="The student computes at this lower size: it downscales the teacher's images inside the model.")
@click.option("--train-subset", type=float, default=None, help="Stratified fraction of train (quick runs).")
@click.option("--augment", type=click.Choice(["auto", "crop_pad", "resized_crop"]), default=None, help="Training crop: padded (the papers'), RandomResizedCrop, or auto (resized from 96 px).")
@click.option("--data-storage", type=click.Choice(["auto", "memory", "disk"]), default=None, help="Decoded images in memory, or read per batch from the on-disk cache (auto: disk above 2 GiB).")
@click.option("--skip-bad-images", is_flag=True, help="Leave unreadable images out (listed in data.json) instead of stopping.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory (default runs/<name>).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N")
@click.option("--seed", type=int, default=None)
@click.option("--recipe", default=None, help="edgekd (default: faster schedules) | paper (the IG paper's setup); overrides are listed as deviations.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="YAML settings (e.g. a run's config.yaml).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any setting by dotted key, e.g. student.train.optimizer=sgd.")
@click.option("--latency-budget", type=float, default=None, metavar="MS", help="Choose the student that fits MS on --target (edgekd select); not with --student.")
@click.option("--speedup", type=float, default=None, metavar="X", help="Budget = the teacher's latency on --target / X (digits default: 10).")
@click.option("--budget-batch", type=int, default=None, help="Batch size of the budget (default 64).")
@click.option("--budget-percentile", type=click.Choice(["p50", "p90"]), default=None, help="Percentile held against the budget (default p50).")
@click.option("--budget-precision", type=click.Choice(["fp32", "int8"]), default=None, help="Precision measured for the budget; int8 implies --int8.")
@click.option("--target", default=None, help="Where the budget is measured: local (default), ssh://user@host[:port] or an ssh alias.")
@click.option("--select-epochs", type=int, default=None, help="Train the top fitting candidates this many epochs and keep the best val accuracy.")
@click.option("--no-bench", is_flag=True, help="Skip the latency measurement.")
@click.option("--int8", is_flag=True, help="Also quantize the student to INT8 (export.int8; budget export.int8_max_drop).")
@click.option("--qat-epochs", type=int, default=None, help="Quantization-aware distillation epochs before INT8; implies --int8.")
@click.option("--resume", is_flag=True, help="Continue an unfinished run in --out.")
@click.option("--force", is_flag=True, help="Overwrite the run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
def compress(dataset, data_dir, teacher, teacher_arch, teacher_norm, teacher_finetune_epochs, student, method, epochs, teacher_epochs,
             batch_size, lr, kd_alpha, kd_temperature, ig_p, ig_blend, ig_steps, ig_method,
             ig_target, ig_baseline, input_size, student_input_size, train_subset, augment, data_storage, skip_bad_images, out,
             device, seed,
             recipe, config_file, sets, latency_budget, speedup, budget_batch, budget_percentile,
             budget_precision, target, select_epochs, no_bench, int8, qat_epochs, resume, force,
             as_json):
    """Distil a student from a teacher, export it to ONNX and report accuracy, size and latency."""
    from edgekd.pipeline.compress import compress as run_compress

    checkpoint = None if teacher in (None, "train") else teacher
    if checkpoint and not teacher_arch:
        from edgekd.models.pretrained import is_pretrained_spec, pretrained_info

        if is_pretrained_spec(checkpoint):  # named weights say what they are
            teacher_arch = pretrained_info(checkpoint).arch
        elif Path(checkpoint).is_file():
            from edgekd.train.checkpoint import peek_arch

            teacher_arch = peek_arch(checkpoint)  # a checkpoint says what it is
    overrides = {
        "teacher.norm": teacher_norm, "teacher.finetune_epochs": teacher_finetune_epochs,
        "data.data_dir": data_dir, "teacher.checkpoint": checkpoint, "teacher.arch": teacher_arch,
        "student.arch": student, "method": method, "student.train.epochs": epochs,
        "teacher.train.epochs": teacher_epochs, "student.train.batch_size": batch_size,
        "teacher.train.batch_size": batch_size, "student.train.lr": lr, "kd.alpha": kd_alpha,
        "kd.temperature": kd_temperature, "data.input_size": input_size,
        "student.input_size": student_input_size,
        "data.train_subset": train_subset, "data.storage": data_storage, "data.augment": augment, "device": device, "seed": seed,
        "ig.p": ig_p, "ig.blend": ig_blend, "ig.steps": ig_steps, "ig.method": ig_method,
        "ig.target": ig_target, "ig.baseline": ig_baseline,
    }
    if no_bench:
        overrides["bench.enabled"] = False
    if skip_bad_images:
        overrides["data.skip_bad_images"] = True
    if int8 or budget_precision == "int8" or qat_epochs:
        overrides["export.int8"] = True
    overrides["export.int8_qat_epochs"] = qat_epochs
    sets = list(sets)
    if latency_budget is not None or speedup is not None:
        if student:
            flag = f"--latency-budget {latency_budget:g}" if latency_budget is not None else f"--speedup {speedup:g}"
            raise EdgeKDError(f"--student {student} and {flag} both choose the student: drop one of them")
        # The budget replaces the data set's default student, and the other kind of budget.
        sets[:0] = ["student.arch=none", f"budget.latency_ms={latency_budget}", f"budget.speedup={speedup}"]
    overrides.update({"budget.batch": budget_batch, "budget.percentile": budget_percentile,
                      "budget.precision": budget_precision, "budget.target": target,
                      "budget.select_epochs": select_epochs})
    from edgekd.config import build_config

    cfg = build_config(config_file, dataset, overrides, sets, recipe=recipe)
    if teacher == "train":
        cfg.teacher.checkpoint = None
    out = out or _default_out(cfg)
    # Under `torchrun --nproc-per-node N -m edgekd compress ...` rank 0 alone speaks.
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        from edgekd.config import describe_recipe

        err.print(f"run directory: {out}", highlight=False)
        err.print(f"recipe: {describe_recipe(cfg, limit=4)}", highlight=False)
    try:
        report = run_compress(cfg, out, resume=resume, force=force, reporter=_RichReporter(err))
    except KeyboardInterrupt:
        err.print(f"interrupted: rerun the same command with --resume (--out {out}) to continue")
        sys.exit(130)
    if not rank0:
        return
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        out_console = Console()
        out_console.print(_summary_table(report))
        out_console.print(f"report: {out / 'report.json'}   student: {out / 'student.onnx'}",
                          highlight=False)


def _summary_table(report: dict) -> Table:
    from rich import box

    t, s = report["teacher"], report["student"]
    lat = report.get("latency", {})
    table = Table(title=f"edgekd compress: {report['dataset']['name']}, {report['method']}",
                  box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("", no_wrap=True)
    table.add_column(f"teacher\n{t['arch']}", justify="right", min_width=len(t["arch"]))
    table.add_column(f"student\n{s['arch']}", justify="right", min_width=len(s["arch"]))
    table.add_column("ratio", justify="right", no_wrap=True)
    table.add_row("test top-1, last epoch", f"{t['accuracy']:.2f} %", f"{s['accuracy']:.2f} %",
                  f"{s['accuracy'] - t['accuracy']:+.2f} pp")

    def best(entry):
        value = entry.get("accuracy_best_epoch")
        return "n/a (no val)" if value is None else f"{value:.2f} %"

    table.add_row("test top-1, best-val ep.", best(t), best(s), "")

    def epochs(entry):
        plan = entry.get("epochs") or {}
        if plan.get("total") is None:
            return "given"  # a checkpoint trained elsewhere
        warm = plan.get("warmup")
        return f"{plan['total']}" + (f" ({warm} warm-up)" if warm else "")

    table.add_row("epochs", epochs(t), epochs(s), "")
    table.add_row("params", f"{t['params']:,}", f"{s['params']:,}",
                  f"{report['compression_factor']:.2f}x (CF)")
    table.add_row("MACs / image", f"{t['macs'] / 1e6:.1f} M", f"{s['macs'] / 1e6:.1f} M",
                  f"{report['mac_reduction']:.2f}x")
    for key in sorted({k for role in ("teacher", "student") for k in lat.get(role, {})},
                      key=lambda k: int(k.split("_")[1])):
        tl, sl = lat["teacher"].get(key), lat["student"].get(key)
        if tl and sl:
            table.add_row(f"latency p50, {key.replace('_', ' ')}", f"{tl['p50_ms']:.2f} ms",
                          f"{sl['p50_ms']:.2f} ms", f"{tl['p50_ms'] / sl['p50_ms']:.2f}x faster")
    budget = report.get("budget")
    final = (budget or {}).get("final")
    if final:
        asked = (f"teacher/{budget['speedup']:g}" if budget.get("speedup") is not None
                 else f"{budget['latency_ms']:g} ms")
        verdict = "holds" if final["holds"] else "OVER"
        table.add_row(f"budget {asked}, batch {final['batch']}", f"{final['teacher_ms']:.2f} ms",
                      f"{final['student_ms']:.2f} ms", f"{final['speedup']:.1f}x faster")
        table.add_row(f"  limit ({final['percentile']}, {final['precision']})", "",
                      f"{final['limit_ms']:.2f} ms", f"{verdict} {final['margin_pct']:+.1f} %")
    if lat:
        table.caption = f"latency: {lat.get('backend')} on {lat.get('cpu')}"
        if final:
            table.caption += (f"; budget on {final['target']}, student chosen from "
                              f"{budget['selection']['candidates']} candidates (select/pareto.png)")
    return table


# ---- select ------------------------------------------------------------------------------
@cli.command()
@click.option("--target", default="local", show_default=True, help="local | ssh://user@host[:port] | user@host | an ssh config alias.")
@click.option("--latency-budget", type=float, default=None, metavar="MS", help="The limit per batch, in ms.")
@click.option("--speedup", type=float, default=None, metavar="X", help="Limit = the teacher's latency on the target / X.")
@click.option("--budget-batch", type=int, default=64, show_default=True)
@click.option("--budget-percentile", type=click.Choice(["p50", "p90"]), default="p50", show_default=True)
@click.option("--budget-precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="int8: each candidate quantized (ONNX Runtime static QDQ) before it is measured.")
@click.option("--margin", type=float, default=0.05, show_default=True, help="Headroom a candidate must leave under the limit.")
@click.option("--teacher-arch", default="mbv2_cifar", show_default=True, help="The reference of --speedup, measured in the same round trip.")
@click.option("--candidates", default=None, help="Comma-separated model names (default: every student family that takes --input-size).")
@click.option("--input-size", type=int, default=32, show_default=True)
@click.option("--num-classes", type=int, default=10, show_default=True)
@click.option("--export-target", type=click.Choice(_TARGETS), default="cpu", show_default=True, help="Opset and IR version of the candidates' ONNX.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--precision", "trt_precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="TensorRT precision of FP32 models (--backend tensorrt); INT8 candidates build as INT8.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads on the target.")
@click.option("--remote-python", default=None, help="Python on the device (default python3).")
@click.option("--remote-dir", default=None, help="Bundles folder on the device (default ~/edgekd-bundles).")
@click.option("--ssh-config", type=click.Path(path_type=Path), default=None, help="ssh config file (-F).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Measurement cache (default $EDGEKD_CACHE or ~/.cache/edgekd).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/select"), show_default=True,
              help="Folder for select.json, pareto.png and the candidates' bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print select.json to stdout.")
def select(target, latency_budget, speedup, budget_batch, budget_percentile, budget_precision, margin,
           teacher_arch, candidates, input_size, num_classes, export_target, backend, trt_precision,
           threads, remote_python, remote_dir, ssh_config, cache_dir, out, as_json):
    """Measure student candidates on the target and pick the one a latency budget allows.

    Every candidate is exported once with random weights (latency does not depend on them) and
    all are measured in one bundle, through the same ship/verify/run path as `edgekd deploy`.
    Measurements are cached by the target's environment, so a second selection measures
    nothing. Without a budget every candidate is measured and plotted.
    """
    from edgekd.export.targets import resolve_opset
    from edgekd.selection.budget import Budget
    from edgekd.selection.cache import LatencyCache
    from edgekd.selection.measure import Spec
    from edgekd.selection.select import select as run_select
    from edgekd.ship import DeployOptions

    budget = Budget(latency_budget, speedup, budget_batch, budget_percentile, budget_precision, margin)
    opset, ir = resolve_opset(export_target)
    spec = Spec(input_size, num_classes, budget_batch, opset, ir, for_tensorrt=backend == "tensorrt")
    opts = DeployOptions(target=target, backend=backend, remote_python=remote_python,
                         remote_dir=remote_dir, threads=threads,
                         precision=trt_precision,
                         ssh_config=str(ssh_config) if ssh_config else None)
    names = [c.strip() for c in candidates.split(",") if c.strip()] if candidates else None

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
    out_console.print(_select_table(doc))
    err.print(f"select: {out / 'select.json'}   plot: {out / 'pareto.png'}", highlight=False)


def _select_table(doc: dict) -> Table:
    from rich import box

    b = doc["budget"]
    limit = b.get("limit_ms")
    title = (f"candidates on {doc['target']['spec']}, batch {b['batch']}, {b['precision']}"
             + (f": limit {limit:.3g} ms" if limit else ""))
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("model", "MACs", "params", "p50 ms", "CI hi", "p90 ms", "fits"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    rows = list(doc["candidates"])
    if doc.get("teacher"):
        rows.append({**doc["teacher"], "teacher": True})
    for r in rows:
        lat = r["latency_ms"]
        mark = "teacher" if r.get("teacher") else (
            "chosen" if r["arch"] == doc.get("chosen") else ("yes" if r.get("fits") else
                                                             ("no" if limit else "")))
        table.add_row(r["arch"] + (" *" if r.get("cached") else ""), f"{r['macs'] / 1e6:.1f}M",
                      f"{r['params'] / 1e3:.0f}k", f"{lat['p50']:.2f}", f"{lat['median_ci95'][1]:.2f}",
                      f"{lat['p90']:.2f}", mark)
    table.caption = (f"{doc['target'].get('cpu') or ''} {doc['target']['backend']}; CI hi: upper end "
                     f"of the median's 95 % CI; * = cached ({doc['cached']} cached, "
                     f"{doc['measured']} measured); ranking: {doc['ranking']}")
    return table


# ---- export ----------------------------------------------------------------------------


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(_TARGETS), default=None,
              help="Device the ONNX must load on; picks opset and IR version (default: the run's, cpu).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the target's).")
@click.option("--simplify/--no-simplify", default=None, help="Simplify the graph with onnxslim (parity re-checked).")
@click.option("--json", "as_json", is_flag=True)
def export(run_dir, target, opset, simplify, as_json):
    """Export a run's teacher and student to ONNX (with a parity check against PyTorch).

    \b
    target      runtime on the device                          opset  IR
    jetson-jp5  JetPack 5.1.x: TensorRT 8.5                     17     8
    jetson-jp6  JetPack 6.0: TensorRT 8.6; 6.1/6.2: TRT 10.3    17     8
    jetson-jp7  JetPack 7.x: TensorRT 10.x                      20     9
    cpu         ONNX Runtime >= 1.18                            18     8
    """
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


@cli.command()
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
                        reporter=None if as_json else _RichReporter(err))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    if info.get("diagnosis"):
        out.print(_diagnosis_table(info["diagnosis"]))
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


def _diagnosis_table(diag: dict) -> Table:
    from rich import box

    table = Table(title="INT8 per-layer diagnosis, worst first", box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("module", "op", "SQNR dB", "vs FP32 dB"):
        table.add_column(col, justify="left" if col in ("module", "op") else "right")
    for r in diag["worst"]:
        table.add_row(r["module"] or r["tensor"], r["producer_op"],
                      "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}",
                      "-" if r["sqnr_vs_fp32_db"] is None else f"{r['sqnr_vs_fp32_db']:.1f}")
    table.caption = f"{diag['json']} / {diag['png']}"
    return table


# ---- experiment ----------------------------------------------------------------------------
def _experiment_options(f):
    for opt in reversed([
        click.option("--dataset", default=None, help="digits | cifar10 | imagefolder:PATH"),
        click.option("--data-dir", default=None),
        click.option("--teacher", default=None, help="Teacher checkpoint shared by all runs (default: train one)."),
        click.option("--teacher-arch", default=None),
        click.option("--epochs", type=int, default=None, help="Student epochs per run."),
        click.option("--teacher-epochs", type=int, default=None),
        click.option("--subset", type=int, default=None, help="About this many training images (stratified)."),
        click.option("--out", type=click.Path(path_type=Path), required=True, help="Experiment directory."),
        click.option("--jobs", type=int, default=1, show_default=True, help="Runs in parallel."),
        click.option("--device", default=None),
        click.option("--recipe", default=None, help="edgekd (default) | paper; overrides are listed as deviations."),
        click.option("--config", "config_file", type=click.Path(path_type=Path), default=None),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE"),
        click.option("--json", "as_json", is_flag=True),
    ]):
        f = opt(f)
    return f


def _experiment_config(dataset, data_dir, teacher, teacher_arch, epochs, teacher_epochs, device,
                       recipe, config_file, sets, student=None):
    from edgekd.config import build_config

    overrides = {"data.data_dir": data_dir, "teacher.checkpoint": teacher, "teacher.arch": teacher_arch,
                 "student.train.epochs": epochs, "teacher.train.epochs": teacher_epochs,
                 "device": device, "student.arch": student}
    cfg = build_config(config_file, dataset, overrides, sets, recipe=recipe)
    if cfg.student.arch is None:
        # Experiments compare methods on one fixed pair: without a named student, the papers'
        # (a latency budget chooses the student of `compress`, not of an ablation).
        from edgekd.config import BudgetConfig

        cfg.student.arch = "mbv2_cifar_trunc5"
        cfg.budget = BudgetConfig()
    return cfg


def _command_line() -> str:
    return "edgekd " + " ".join(sys.argv[1:])


def _print_md(out_dir: Path, name: str, as_json: bool, doc: dict) -> None:
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo((out_dir / f"{name}.md").read_text())
        out.print(f"written: {out_dir / (name + '.md')}, {name}.json, {name}.png", highlight=False)


@cli.group()
def experiment():
    """Ablations over methods and seeds, compression sweeps, Monte Carlo, retrieval, shift."""


@experiment.command()
@click.option("--student", default=None)
@click.option("--methods", default=None, help="Comma-separated methods (default: the papers' ablation).")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds 0..N-1 per method.")
@_experiment_options
def ablation(student, methods, seeds, dataset, data_dir, teacher, teacher_arch, epochs,
             teacher_epochs, subset, out, jobs, device, recipe, config_file, sets, as_json):
    """methods x seeds on one teacher/student pair: mean ± sd, best, Welch p-values, plot."""
    from edgekd.experiment import suites

    cfg = _experiment_config(dataset, data_dir, teacher, teacher_arch, epochs, teacher_epochs,
                             device, recipe, config_file, sets, student)
    method_list = methods.split(",") if methods else suites.default_methods()
    doc = suites.ablation(cfg, method_list, list(range(seeds)), out, subset=subset, jobs=jobs,
                          command=_command_line(), reporter=_RichReporter(err))
    _print_md(out, "ablation", as_json, doc)


@experiment.command()
@click.option("--student", default=None)
@click.option("--methods", default="student,kd", show_default=True)
@click.option("--runs", type=int, default=10, show_default=True)
@click.option("--fraction", type=float, default=0.8, show_default=True, help="Stratified share of train per run.")
@_experiment_options
def montecarlo(student, methods, runs, fraction, dataset, data_dir, teacher, teacher_arch, epochs,
               teacher_epochs, subset, out, jobs, device, recipe, config_file, sets, as_json):
    """N runs per method, each on its own random stratified fraction of the training set."""
    from edgekd.experiment import suites

    cfg = _experiment_config(dataset, data_dir, teacher, teacher_arch, epochs, teacher_epochs,
                             device, recipe, config_file, sets, student)
    doc = suites.montecarlo(cfg, methods.split(","), runs, fraction, out, jobs=jobs,
                            command=_command_line(), reporter=_RichReporter(err))
    _print_md(out, "montecarlo", as_json, doc)


@experiment.command()
@click.option("--students", default=None, help="Comma-separated (default: truncated + width families).")
@click.option("--method", default="kd", show_default=True)
@click.option("--seeds", type=int, default=1, show_default=True)
@_experiment_options
def sweep(students, method, seeds, dataset, data_dir, teacher, teacher_arch, epochs,
          teacher_epochs, subset, out, jobs, device, recipe, config_file, sets, as_json):
    """Accuracy vs compression factor and vs measured CPU latency over student families."""
    from edgekd.experiment import suites

    cfg = _experiment_config(dataset, data_dir, teacher, teacher_arch, epochs, teacher_epochs,
                             device, recipe, config_file, sets)
    names = students.split(",") if students else list(suites.PAPER_SWEEP)
    doc = suites.sweep(cfg, names, method, list(range(seeds)), out, subset=subset, jobs=jobs,
                       command=_command_line(), reporter=_RichReporter(err))
    _print_md(out, "sweep", as_json, doc)


@experiment.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def retrieval(run_dirs, as_json):
    """Retrieval mAP of penultimate features (database = train, queries = test), as InDistill."""
    from edgekd.experiment import suites

    rows = [suites.retrieval(d) for d in run_dirs]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        out.print(f"{r['run']}: teacher {r['teacher']['arch']} mAP {r['teacher']['map']:.2f} %, "
                  f"student {r['student']['arch']} mAP {r['student']['map']:.2f} % "
                  f"({r['queries']} queries, {r['database']} database images)", highlight=False)


@experiment.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--folder", required=True, type=click.Path(path_type=Path), help="FOLDER/<class>/* images.")
@click.option("--map", "maps", multiple=True, metavar="THEIRS=OURS", help="Class mapping (default: same names).")
@click.option("--json", "as_json", is_flag=True)
def shift(run_dir, folder, maps, as_json):
    """Zero-shot accuracy of a run's teacher and student on another image folder."""
    from edgekd.experiment import suites

    mapping = None
    if maps:
        bad = [m for m in maps if "=" not in m]
        if bad:
            raise EdgeKDError(f"--map {bad[0]!r}: use THEIRS=OURS, e.g. --map automobile=car")
        mapping = dict(m.split("=", 1) for m in maps)
    r = suites.shift(run_dir, folder, mapping)
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        out.print(f"{r['images']} images from {r['folder']}: teacher {r['teacher']['accuracy']:.2f} %, "
                  f"student {r['student']['accuracy']:.2f} %", highlight=False)


# ---- ig ------------------------------------------------------------------------------------
@cli.group()
def ig():
    """Integrated-gradient maps of a run's teacher: compute (torchrun-able) and show."""


class _IGBar:
    """The IG computation's plan and a progress bar (stderr, rank 0 only)."""

    def __init__(self, console: Console):
        self.reporter = _RichReporter(console)

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


@ig.command("compute")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--ig-steps", type=int, default=None, help="Integration steps (default: the run's).")
@click.option("--ig-method", default=None, help="gausslegendre | riemann_trapezoid | ... (default: the run's).")
@click.option("--ig-target", default=None, help="label | prediction (default: the run's).")
@click.option("--ig-baseline", default=None, help="zeros | blur | noise (default: the run's).")
@click.option("--ig-dtype", default=None, help="float16 | uint8 (default: the run's).")
@click.option("--internal-batch-size", type=int, default=None, help="Rows per teacher forward (default: from free memory).")
@click.option("--chunk-size", type=int, default=None, help="Images per resumable chunk (default: the run's).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the run's).")
@click.option("--force", is_flag=True, help="Recompute maps made by another teacher, data set or settings.")
@click.option("--json", "as_json", is_flag=True)
def ig_compute(run_dir, ig_steps, ig_method, ig_target, ig_baseline, ig_dtype, internal_batch_size,
               chunk_size, device, force, as_json):
    """Compute (or resume, or check) the IG maps of RUN_DIR's teacher into RUN_DIR/ig/.

    Under `torchrun --nproc-per-node N -m edgekd ig compute RUN_DIR` the images are sharded
    over the ranks (gloo on CPU, NCCL on GPU).
    """

    from edgekd.pipeline.standalone import ig_compute_run

    rank0 = int(os.environ.get("RANK", "0")) == 0
    overrides = {"ig.steps": ig_steps, "ig.method": ig_method, "ig.target": ig_target,
                 "ig.baseline": ig_baseline, "ig.dtype": ig_dtype,
                 "ig.internal_batch_size": internal_batch_size, "ig.chunk_size": chunk_size}
    bar = _IGBar(err) if rank0 else None
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


# ---- bench and deploy ----------------------------------------------------------------------
def _measure_options(f):
    """Harness settings shared by bench and deploy (deploy.harness.MeasureSettings)."""
    for opt in reversed([
        click.option("--warmup-s", type=float, default=1.0, show_default=True, help="Warm up at least this many seconds..."),
        click.option("--warmup-iters", type=int, default=10, show_default=True, help="...and this many runs."),
        click.option("--min-s", type=float, default=2.0, show_default=True, help="Measure at least this many seconds..."),
        click.option("--min-iters", type=int, default=50, show_default=True, help="...and this many runs."),
        click.option("--max-s", type=float, default=60.0, show_default=True, help="Stop measuring after this many seconds."),
    ]):
        f = opt(f)
    return f


def _settings(warmup_s, warmup_iters, min_s, min_iters, max_s):
    from deploy.errors import DeployError
    from deploy.harness import MeasureSettings

    try:
        return MeasureSettings(warmup_s=warmup_s, warmup_iters=warmup_iters, min_s=min_s,
                               min_iters=min_iters, max_s=max(max_s, min_s),
                               max_iters=max(100000, min_iters))
    except DeployError as e:
        raise EdgeKDError(str(e)) from None


def _compare_table(doc: dict) -> Table:
    t, s = doc["teacher"], doc["student"]
    table = Table(title=f"teacher {t['arch']} ({t['macs'] / 1e6:.1f} M MACs/image) vs student "
                        f"{s['arch']} ({s['macs'] / 1e6:.1f} M)")
    for col in ("backend", "precision", "batch", "teacher p50", "student p50", "speed-up", "95 % CI"):
        table.add_column(col, justify="left" if col in ("backend", "precision") else "right")
    for r in doc["rows"]:
        prec = (r["teacher_precision"] if r["teacher_precision"] == r["student_precision"]
                else f"T {r['teacher_precision']}, S {r['student_precision']}")
        table.add_row("torch eager" if r["backend"] == "torch" else "ONNX Runtime", prec, str(r["batch"]),
                      f"{r['teacher_p50_ms']:.2f} ms", f"{r['student_p50_ms']:.2f} ms",
                      f"{r['speedup']:.2f}x", f"{r['speedup_ci95'][0]:.2f}-{r['speedup_ci95'][1]:.2f}")
    table.caption = (f"{(doc['environment'].get('cpu') or {}).get('model')}, {doc['threads']} threads; "
                     "p50 per batch; CI from the medians' bootstrap intervals")
    return table


def _compare_lines(doc: dict) -> list[str]:
    """The measured speed-ups next to the claimed one, one line per batch size."""
    claim = doc["claim"]
    lines = [f"claimed: {claim['teacher_ms']:.0f} ms -> {claim['student_ms']:.0f} ms per batch of "
             f"{claim['batch']} = {claim['speedup']:.1f}x;  MAC ratio teacher/student = "
             f"{doc['mac_ratio']:.2f}x;  params {doc['param_ratio']:.2f}x"]
    for b in sorted({r["batch"] for r in doc["rows"]}, reverse=True):
        parts = [f"{'torch eager' if r['backend'] == 'torch' else 'ONNX Runtime'}"
                 f"{'' if r['teacher_precision'] == r['student_precision'] == 'fp32' else ' ' + r['student_precision']}"
                 f" {r['speedup']:.2f}x" for r in doc["rows"] if r["batch"] == b]
        lines.append(f"measured at batch {b}: " + ", ".join(parts))
    return lines


def _set_table(doc: dict) -> Table:
    table = Table(title=f"edgekd bench ({doc['threads']} threads)")
    for col in ("model", "backend", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s"):
        table.add_column(col, justify="left" if col in ("model", "backend") else "right")
    for e in doc["entries"]:
        for i, r in enumerate(e["document"]["results"]):
            lat = r["latency_ms"]
            head = [Path(e["path"]).name, f"{e['backend']} {e['precision']}"] if i == 0 else ["", ""]
            table.add_row(*head, str(r["batch_size"]), f"{lat['p50']:.3f}", f"{lat['p90']:.3f}",
                          f"{lat['p99']:.3f}", f"{r['throughput_ips']:.1f}")
    return table


@cli.command()
@click.argument("models_", metavar="MODEL...", nargs=-1, type=click.Path(path_type=Path))
@click.option("--compare", "compare_run", type=click.Path(path_type=Path), default=None,
              help="A run's teacher vs student (torch eager, ONNX Runtime, FP32 and INT8), next to the papers' claim.")
@click.option("--batch", "batches", type=int, multiple=True, help="Batch size, repeatable (default 1; --compare: 64 and 1).")
@click.option("--threads", type=int, default=None, help="Intra-op threads, torch and ONNX Runtime (default: the usable cores).")
@click.option("--inputs", type=click.Path(path_type=Path), default=None, help=".npy of samples (default: samples.npy beside the model, else noise).")
@_measure_options
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None, help="Write the JSON document here.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Write a PNG bar chart here.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document to stdout.")
def bench(models_, compare_run, batches, threads, inputs, warmup_s, warmup_iters, min_s, min_iters,
          max_s, out_path, plot, as_json):
    """Latency of ONNX models (ONNX Runtime) and checkpoints (PyTorch eager) on this machine.

    MODEL: .onnx or .pt files. With --compare RUN_DIR: the run's teacher vs student.
    """
    from edgekd.bench.measure import bench_models
    from edgekd.bench.measure import compare_run as compare
    from edgekd.bench.plot import plot_compare, plot_set
    from edgekd.io import write_json

    settings = _settings(warmup_s, warmup_iters, min_s, min_iters, max_s)

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
        out.print(_compare_table(doc))
        for line in _compare_lines(doc):
            out.print(line, highlight=False, soft_wrap=True)
    else:
        out.print(_set_table(doc))
    for path, what in ((out_path, "json"), (plot, "plot")):
        if path:
            err.print(f"wrote {what}: {path}", highlight=False)


def _deploy_table(doc: dict) -> Table:
    table = Table(title=f"{doc['where']}: {doc['backend']}, bundle {doc['bundle']['id'][:12]}")
    for col in ("model", "top-1 %", "agree %", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for key, m in sorted(doc["models"].items()):
        acc = m["accuracy"]
        agree = f"{acc['agreement']:.1f}" if acc.get("agreement") is not None else "-"
        for i, r in enumerate(m["results"]):
            lat = r["latency_ms"]
            head = [f"{key} ({m.get('precision', '?')})", f"{acc['top1']:.2f}", agree] if i == 0 else ["", "", ""]
            table.add_row(*head, str(r["batch_size"]), f"{lat['p50']:.3f}", f"{lat['p90']:.3f}",
                          f"{lat['p99']:.3f}", f"{r['throughput_ips']:.1f}")
    first = next(iter(doc["models"].values()))
    table.caption = (f"{first['environment'].get('hostname')}, {(first['environment'].get('cpu') or {}).get('model')}; "
                     f"top-1 on {first['accuracy']['samples']} labelled test images; agree = same top-1 "
                     "as ONNX Runtime on the workstation")
    return table


@cli.command()
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
@_measure_options
@click.option("--json", "as_json", is_flag=True, help="Print the results document to stdout.")
def deploy(run_dir, target, backend, remote_python, remote_dir, batches, threads, providers, precision,
           models_, ssh_config, transfer, bwlimit, connect_timeout, warmup_s, warmup_iters, min_s,
           min_iters, max_s, as_json):
    """Ship a run to a device, check accuracy and measure latency there, bring the results back.

    The bundle is verified by checksum on the device before anything in it runs; results go to
    RUN_DIR/bench-<target>.json (schema edgekd.run-bench).
    """
    from edgekd.ship import DeployOptions, deploy_run

    opts = DeployOptions(
        target=target, backend=backend, remote_python=remote_python, remote_dir=remote_dir,
        batch_sizes=list(batches) or [1, 8, 64], threads=threads, providers=list(providers) or None,
        precision=precision, models=list(models_) or None,
        ssh_config=str(ssh_config) if ssh_config else None, transfer=transfer, bwlimit_kbps=bwlimit,
        connect_timeout_s=connect_timeout,
        settings=_settings(warmup_s, warmup_iters, min_s, min_iters, max_s))

    def progress(step, detail):
        err.print(f"[cyan]{step:>8}[/] {detail}", highlight=False, soft_wrap=True)

    try:
        result = deploy_run(run_dir, opts, progress)
    except KeyboardInterrupt:
        err.print("interrupted: rerun the same command; the transfer resumes and nothing "
                  "unverified runs on the device")
        sys.exit(130)
    doc = result["document"]
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    out.print(_deploy_table(doc))
    models = doc["models"]
    for prec in ("", ".int8"):
        t, s = models.get("teacher" + prec), models.get("student" + prec)
        if t and s:
            for rt, rs in zip(t["results"], s["results"], strict=True):
                out.print(f"teacher/student{prec} at batch {rt['batch_size']}: "
                          f"{rt['latency_ms']['p50'] / rs['latency_ms']['p50']:.2f}x (p50)", highlight=False)
    for key, m in sorted(models.items()):
        agreement = m["accuracy"].get("agreement")
        if agreement is not None and agreement < 99.0:
            err.print(f"[yellow]warning:[/] {key} agrees with the workstation on only {agreement:.1f} % of "
                      "the samples", highlight=False)
    for w in next(iter(models.values()))["environment"].get("warnings", []):
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    err.print(f"results: {result['path']}", highlight=False)


def main():
    cli(prog_name="edgekd")


if __name__ == "__main__":
    main()
