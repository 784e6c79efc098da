"""`edgekd experiment`: ablations, Monte Carlo, sweeps, retrieval and shift."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgekd.cli.common import RichReporter, err, out
from edgekd.cli.options import OptionGroup
from edgekd.config.sections import RunConfig
from edgekd.errors import EdgeKDError

# The settings an experiment shares over its runs, from their declarations.
_SHARED = ("data.dataset", "data.data_dir", "teacher.checkpoint", "teacher.arch", "student.train.epochs",
           "teacher.train.epochs", "device", "recipe")
SETTINGS = OptionGroup.of(RunConfig, keys=_SHARED)
WITH_STUDENT = OptionGroup.of(RunConfig, keys=_SHARED + ("student.arch",))


def _experiment_options(settings: OptionGroup):
    def add(f):
        f = settings(f)
        for opt in reversed([
            click.option("--subset", type=int, default=None, help="About this many training images (stratified)."),
            click.option("--out", type=click.Path(path_type=Path), required=True, help="Experiment directory."),
            click.option("--jobs", type=int, default=1, show_default=True, help="Runs in parallel."),
            click.option("--config", "config_file", type=click.Path(path_type=Path), default=None),
            click.option("--set", "sets", multiple=True, metavar="KEY=VALUE"),
            click.option("--json", "as_json", is_flag=True),
        ]):
            f = opt(f)
        return f
    return add


def _experiment_config(settings: OptionGroup, flags: dict, config_file, sets):
    from edgekd.config import Budget, build_config

    cfg = build_config(config_file, None, settings.given(flags), sets)
    if cfg.student.arch is None:
        # Experiments compare methods on one fixed pair: without a named student, the papers'
        # (a latency budget chooses the student of `compress`, not of an ablation).
        cfg.student.arch = "mbv2_cifar_trunc5"
        cfg.budget = Budget()
    return cfg


def _command_line() -> str:
    return "edgekd " + " ".join(sys.argv[1:])


def _print_md(out_dir: Path, name: str, as_json: bool, doc: dict) -> None:
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo((out_dir / f"{name}.md").read_text())
        out.print(f"written: {out_dir / (name + '.md')}, {name}.json, {name}.png", highlight=False)


@click.group()
def experiment():
    """Ablations over methods and seeds, compression sweeps, Monte Carlo, retrieval, shift."""


@experiment.command()
@click.option("--methods", default=None, help="Comma-separated methods (default: the papers' ablation).")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds 0..N-1 per method.")
@_experiment_options(WITH_STUDENT)
def ablation(methods, seeds, subset, out, jobs, config_file, sets, as_json, **flags):
    """methods x seeds on one teacher/student pair: mean ± sd, best, Welch p-values, plot."""
    from edgekd.experiment import suites

    cfg = _experiment_config(WITH_STUDENT, flags, config_file, sets)
    method_list = methods.split(",") if methods else suites.default_methods()
    doc = suites.ablation(cfg, method_list, list(range(seeds)), out, subset=subset, jobs=jobs,
                          command=_command_line(), reporter=RichReporter(err))
    _print_md(out, "ablation", as_json, doc)


@experiment.command()
@click.option("--methods", default="student,kd", show_default=True)
@click.option("--runs", type=int, default=10, show_default=True)
@click.option("--fraction", type=float, default=0.8, show_default=True, help="Stratified share of train per run.")
@_experiment_options(WITH_STUDENT)
def montecarlo(methods, runs, fraction, subset, out, jobs, config_file, sets, as_json, **flags):
    """N runs per method, each on its own random stratified fraction of the training set."""
    from edgekd.experiment import suites

    cfg = _experiment_config(WITH_STUDENT, flags, config_file, sets)
    doc = suites.montecarlo(cfg, methods.split(","), runs, fraction, out, jobs=jobs,
                            command=_command_line(), reporter=RichReporter(err))
    _print_md(out, "montecarlo", as_json, doc)


@experiment.command()
@click.option("--students", default=None, help="Comma-separated (default: truncated + width families).")
@click.option("--method", default="kd", show_default=True)
@click.option("--seeds", type=int, default=1, show_default=True)
@_experiment_options(SETTINGS)
def sweep(students, method, seeds, subset, out, jobs, config_file, sets, as_json, **flags):
    """Accuracy vs compression factor and vs measured CPU latency over student families."""
    from edgekd.experiment import suites

    cfg = _experiment_config(SETTINGS, flags, config_file, sets)
    names = students.split(",") if students else list(suites.PAPER_SWEEP)
    doc = suites.sweep(cfg, names, method, list(range(seeds)), out, subset=subset, jobs=jobs,
                       command=_command_line(), reporter=RichReporter(err))
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
