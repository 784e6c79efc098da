"""The experiments of `edgekd experiment`: ablation, Monte Carlo, sweep, retrieval, shift."""

from __future__ import annotations

import copy
import platform
from pathlib import Path

from edgekd.config import METHODS, RunConfig, recipe_record
from edgekd.experiment import report as rp
from edgekd.experiment.runner import RunSpec, run_grid, subset_fraction

# The IG paper's table plus InDistill (docs/methods.md); terms this build lacks are left out.
PAPER_ABLATION = ("student", "kd", "ig", "at", "kd+ig", "kd+at", "ig+at", "kd+ig+at",
                  "indistill+kd", "indistill+kd+ig")
PAPER_SWEEP = tuple(f"mbv2_cifar_trunc{k}" for k in (3, 5, 7, 9, 11, 13, 15, 17)) + tuple(
    f"mbv2_cifar_w{w}" for w in (0.75, 0.5, 0.35, 0.25))


def default_methods() -> list[str]:
    return [m for m in PAPER_ABLATION if all(t in METHODS for t in m.split("+"))]


def _machine() -> str:
    from deploy.envinfo import capture

    cpu = (capture().get("cpu") or {})
    return f"{cpu.get('model')} ({cpu.get('logical_cores')} cores), {platform.platform()}"


def _prepare(base: RunConfig, subset: int | None, no_bench: bool = True) -> RunConfig:
    base = copy.deepcopy(base)
    if subset:
        base.data.train_subset = round(subset_fraction(base, subset), 6)
    if no_bench:  # accuracy only: no ONNX files, no latency
        base.bench.enabled = False
        base.export.enabled = False
    return base


def ablation(base: RunConfig, methods: list[str], seeds: list[int], out: Path, *,
             subset: int | None = None, jobs: int = 1, command: str = "", reporter=None,
             name: str = "ablation", overrides_per_run=None) -> dict:
    """methods x seeds on one teacher/student pair: table, JSON and bar plot in `out`."""
    base = _prepare(base, subset)
    specs = [RunSpec(m, s, {"method": m, **(overrides_per_run(s) if overrides_per_run else {})})
             for m in methods for s in seeds]
    records = run_grid(base, specs, out, jobs=jobs, reporter=reporter)
    table = rp.ablation_table(records)
    title = f"{name}: {base.student.arch} from {base.teacher.arch} on {base.data.dataset}"
    machine = _machine()
    recipe = recipe_record(base)
    doc = {"experiment": name, "command": command, "machine": machine,
           "recipe": recipe,
           "student": base.student.arch, "teacher": base.teacher.arch,
           "dataset": base.data.dataset, "epochs": base.student.train.epochs,
           "train_subset": base.data.train_subset, "seeds": seeds, "table": table,
           "runs": [{k: v for k, v in r.items() if k != "report"} |
                    {"accuracy": r["report"]["student"]["accuracy"],
                     "accuracy_best_epoch": r["report"]["student"]["accuracy_best_epoch"]}
                    for r in records]}
    rp.write_results(out, name, doc, rp.ablation_markdown(table, title, command, machine,
                                                          recipe["summary"]))
    rp.bar_plot(table, out / f"{name}.png", title)
    return doc


def montecarlo(base: RunConfig, methods: list[str], runs: int, fraction: float, out: Path,
               **kw) -> dict:
    """`runs` runs per method, each on its own random stratified `fraction` of the training set."""
    base = copy.deepcopy(base)
    base.data.train_subset = fraction

    def per_run(seed):
        return {"data.subset_seed": seed}

    return ablation(base, methods, list(range(runs)), out, name="montecarlo",
                    overrides_per_run=per_run, **kw)


def sweep(base: RunConfig, students: list[str], method: str, seeds: list[int], out: Path, *,
          subset: int | None = None, jobs: int = 1, command: str = "", reporter=None) -> dict:
    """Accuracy and CPU latency vs compression factor over student families."""
    base = _prepare(base, subset, no_bench=False)
    base.bench.batch_sizes = [1]
    specs = [RunSpec(f"{s}-{method}", seed, {"student.arch": s, "method": method})
             for s in students for seed in seeds]
    records = run_grid(base, specs, out, jobs=jobs, reporter=reporter)
    rows = rp.sweep_rows(records)
    doc = {"experiment": "sweep", "command": command, "machine": _machine(), "method": method,
           "teacher": base.teacher.arch, "dataset": base.data.dataset, "rows": rows,
           "recipe": recipe_record(base)}
    lines = ["| student | seed | CF | MACs | params | accuracy | latency p50 b1 (ms) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['student']} | {r['seed']} | {r['compression_factor']} | "
                     f"{r['macs'] / 1e6:.1f} M | {r['params']:,} | {r['accuracy']:.2f} | "
                     f"{rp._fmt(r['latency_p50_ms_b1'], 3)} |")
    md = (f"# sweep ({method})\n\nCommand: `{command}`\n\nMachine: {doc['machine']}\n\n"
          f"Recipe: {doc['recipe']['summary']}\n\n" + "\n".join(lines) + "\n")
    rp.write_results(out, "sweep", doc, md)
    rp.sweep_plot(rows, out / "sweep.png", f"accuracy vs compression ({method})")
    return doc


def retrieval(run_dir: Path) -> dict:
    """mAP of teacher and student penultimate features: database = train, queries = test."""
    from edgekd.experiment.retrieval import retrieval_map
    from edgekd.pipeline.standalone import open_run
    from edgekd.train import checkpoint

    ctx = open_run(run_dir)
    out = {"run": str(run_dir), "database": len(ctx.data.train), "queries": len(ctx.data.test)}
    for role in ("teacher", "student"):
        model, meta = checkpoint.load_model(Path(run_dir) / f"{role}.pt", what=role)
        out[role] = {"arch": meta["arch"], "map": retrieval_map(model, ctx.data.train, ctx.data.test)}
    return out


def shift(run_dir: Path, folder: Path, mapping: dict[str, str] | None = None) -> dict:
    """Zero-shot accuracy on another image folder (FOLDER/<class>/*) with a class mapping.

    `mapping` sends the folder's class names to the run's; by default equal names match.
    Classes with no counterpart (e.g. no deer in a CIFAR-aligned ImageNet subset) are skipped.
    """
    import torch

    from edgekd.data.imagefolder import _scan, load_folder_split
    from edgekd.errors import DataError
    from edgekd.train import checkpoint, engine

    student, meta = checkpoint.load_model(Path(run_dir) / "student.pt", what="student")
    classes = meta["classes"]
    size = int(meta.get("input_size") or 32)
    files = _scan(Path(folder))
    mapping = mapping or {c: c for c in files if c in classes}
    unknown = sorted(v for v in mapping.values() if v not in classes)
    if unknown:
        raise DataError(f"class mapping targets {unknown} are not classes of the run: use {classes}")
    used = {c: fs for c, fs in files.items() if c in mapping and fs}
    if not used:
        raise DataError(f"no class folder of {folder} maps to the run's classes: pass --map THEIRS=OURS")
    split = load_folder_split(used, list(used), size)
    labels = torch.tensor([classes.index(mapping[list(used)[i]]) for i in split.labels.tolist()])
    split.labels = labels
    result = {"folder": str(folder), "images": len(split),
              "mapping": {k: mapping[k] for k in used}}
    for role in ("teacher", "student"):
        model, _ = checkpoint.load_model(Path(run_dir) / f"{role}.pt", what=role)
        acc, _ = engine.evaluate(model, split, torch.device("cpu"))
        result[role] = {"accuracy": acc}
    return result
