"""The `edgekd` command line: parses options, calls the library, prints. Nothing else."""

from __future__ import annotations

import json
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

    def stage(self, name, status, detail=""):
        style = {"start": "cyan", "done": "green", "skip": "yellow"}.get(status, "white")
        self.console.print(f"[{style}]{name:>8} {status:<5}[/] {detail}", highlight=False)

    def on_epoch_start(self, stage, epoch, epochs, steps):
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
        self.console.print(
            f"{stage:>8} epoch {r['epoch']:>3}  loss {r['train_loss']:.3f}  train {r['train_acc']:.1f} %"
            f"  val {r['val_acc']:.1f} %  test {r['test_acc']:.2f} %  {r['images_per_s']:.0f} img/s"
            f"  {r['epoch_time_s']:.1f} s", highlight=False,
        )


def _default_out(cfg) -> Path:
    ds = cfg.data.dataset
    if ds.startswith("imagefolder:"):
        ds = Path(ds.split(":", 1)[1]).name or "imagefolder"
    return Path("runs") / f"{ds}-{cfg.student.arch}-{cfg.method.replace('+', '_')}-s{cfg.seed}"


@cli.command()
@click.option("--dataset", default=None, help="digits (default, embedded) | cifar10 | imagefolder:PATH")
@click.option("--data-dir", default=None, help="Existing copy of the data set (cifar10).")
@click.option("--teacher", default=None, help="Teacher checkpoint (.pt), or 'train' (default).")
@click.option("--teacher-arch", default=None, help="Teacher model name (default mbv2_cifar).")
@click.option("--student", default=None, help="Student model name (see `edgekd models`).")
@click.option("--method", default=None, help="Terms joined by +: student | kd, at, pkt, fitnet, indistill (default kd).")
@click.option("--epochs", type=int, default=None, help="Student epochs.")
@click.option("--teacher-epochs", type=int, default=None, help="Teacher epochs when training one.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Student learning rate.")
@click.option("--kd-alpha", type=float, default=None, help="Weight of the KD term (CE gets 1 - alpha).")
@click.option("--kd-temperature", type=float, default=None)
@click.option("--input-size", type=int, default=None, help="Resize images to this size.")
@click.option("--train-subset", type=float, default=None, help="Stratified fraction of train (quick runs).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory (default runs/<name>).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N")
@click.option("--seed", type=int, default=None)
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="YAML settings (e.g. a run's config.yaml).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any setting by dotted key, e.g. student.train.optimizer=sgd.")
@click.option("--no-bench", is_flag=True, help="Skip the latency measurement.")
@click.option("--resume", is_flag=True, help="Continue an unfinished run in --out.")
@click.option("--force", is_flag=True, help="Overwrite the run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
def compress(dataset, data_dir, teacher, teacher_arch, student, method, epochs, teacher_epochs,
             batch_size, lr, kd_alpha, kd_temperature, input_size, train_subset, out, device, seed,
             config_file, sets, no_bench, resume, force, as_json):
    """Distil a student from a teacher, export it to ONNX and report accuracy, size and latency."""
    from edgekd.pipeline.compress import compress as run_compress

    checkpoint = None if teacher in (None, "train") else teacher
    if checkpoint and not teacher_arch and Path(checkpoint).is_file():
        from edgekd.train.checkpoint import peek_arch

        teacher_arch = peek_arch(checkpoint)  # a checkpoint says what it is
    overrides = {
        "data.data_dir": data_dir, "teacher.checkpoint": checkpoint, "teacher.arch": teacher_arch,
        "student.arch": student, "method": method, "student.train.epochs": epochs,
        "teacher.train.epochs": teacher_epochs, "student.train.batch_size": batch_size,
        "teacher.train.batch_size": batch_size, "student.train.lr": lr, "kd.alpha": kd_alpha,
        "kd.temperature": kd_temperature, "data.input_size": input_size,
        "data.train_subset": train_subset, "device": device, "seed": seed,
    }
    if no_bench:
        overrides["bench.enabled"] = False
    from edgekd.config import build_config

    cfg = build_config(config_file, dataset, overrides, sets)
    if teacher == "train":
        cfg.teacher.checkpoint = None
    out = out or _default_out(cfg)
    err.print(f"run directory: {out}", highlight=False)
    try:
        report = run_compress(cfg, out, resume=resume, force=force, reporter=_RichReporter(err))
    except KeyboardInterrupt:
        err.print(f"interrupted: rerun the same command with --resume (--out {out}) to continue")
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        out_console = Console()
        out_console.print(_summary_table(report))
        out_console.print(f"report: {out / 'report.json'}   student: {out / 'student.onnx'}",
                          highlight=False)


def _summary_table(report: dict) -> Table:
    t, s = report["teacher"], report["student"]
    lat = report.get("latency", {})
    table = Table(title=f"edgekd compress: {report['dataset']['name']}, method {report['method']}")
    table.add_column("")
    table.add_column(f"teacher ({t['arch']})", justify="right")
    table.add_column(f"student ({s['arch']})", justify="right")
    table.add_column("ratio", justify="right")
    table.add_row("test top-1, last epoch", f"{t['accuracy']:.2f} %", f"{s['accuracy']:.2f} %",
                  f"{s['accuracy'] - t['accuracy']:+.2f} pp")
    table.add_row("test top-1, best-val epoch", f"{t['accuracy_best_epoch']:.2f} %",
                  f"{s['accuracy_best_epoch']:.2f} %", "")
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
    if lat:
        table.caption = f"latency: {lat.get('backend')} on {lat.get('cpu')}"
    return table


# ---- export --------------------------------------------------------------------------------
@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the run's).")
@click.option("--json", "as_json", is_flag=True)
def export(run_dir, opset, as_json):
    """Export a run's teacher and student to ONNX (with a parity check against PyTorch)."""
    from edgekd.pipeline.standalone import export_run

    info = export_run(run_dir, opset)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for name, p in info["parity"].items():
            out.print(f"{name}.onnx: max |diff| {p['max_abs_diff']:.2e}, top-1 agreement "
                      f"{p['top1_agreement']:.2f} % on {p['images']} test images", highlight=False)


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
        click.option("--config", "config_file", type=click.Path(path_type=Path), default=None),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE"),
        click.option("--json", "as_json", is_flag=True),
    ]):
        f = opt(f)
    return f


def _experiment_config(dataset, data_dir, teacher, teacher_arch, epochs, teacher_epochs, device,
                       config_file, sets, student=None):
    from edgekd.config import build_config

    overrides = {"data.data_dir": data_dir, "teacher.checkpoint": teacher, "teacher.arch": teacher_arch,
                 "student.train.epochs": epochs, "teacher.train.epochs": teacher_epochs,
                 "device": device, "student.arch": student}
    return build_config(config_file, dataset, overrides, sets)


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
             teacher_epochs, subset, out, jobs, device, config_file, sets, as_json):
    """methods x seeds on one teacher/student pair: mean ± sd, best, Welch p-values, plot."""
    from edgekd.experiment import suites

    cfg = _experiment_config(dataset, data_dir, teacher, teacher_arch, epochs, teacher_epochs,
                             device, config_file, sets, student)
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
               teacher_epochs, subset, out, jobs, device, config_file, sets, as_json):
    """N runs per method, each on its own random stratified fraction of the training set."""
    from edgekd.experiment import suites

    cfg = _experiment_config(dataset, data_dir, teacher, teacher_arch, epochs, teacher_epochs,
                             device, config_file, sets, student)
    doc = suites.montecarlo(cfg, methods.split(","), runs, fraction, out, jobs=jobs,
                            command=_command_line(), reporter=_RichReporter(err))
    _print_md(out, "montecarlo", as_json, doc)


@experiment.command()
@click.option("--students", default=None, help="Comma-separated (default: truncated + width families).")
@click.option("--method", default="kd", show_default=True)
@click.option("--seeds", type=int, default=1, show_default=True)
@_experiment_options
def sweep(students, method, seeds, dataset, data_dir, teacher, teacher_arch, epochs,
          teacher_epochs, subset, out, jobs, device, config_file, sets, as_json):
    """Accuracy vs compression factor and vs measured CPU latency over student families."""
    from edgekd.experiment import suites

    cfg = _experiment_config(dataset, data_dir, teacher, teacher_arch, epochs, teacher_epochs,
                             device, config_file, sets)
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


def main():
    cli(prog_name="edgekd")


if __name__ == "__main__":
    main()
