"""The IG paper's CIFAR-10 ablation at full scale, packed into one short call on one CUDA GPU.

    python benchmarks/paper_reproduction.py [--work DIR] [--budget-s 470]

What it does, resumably (rerun the same command after an interruption: finished work is
kept, a half-trained run continues from its last epoch):
1. all of CIFAR-10 (50,000 + 10,000 JPEGs from ../shared/data/cifar10-jpeg.zip, or --zip)
   as an image folder, decoded once; held on the GPU by the training engine;
2. the teacher `mbv2_cifar`, trained once (reused from an earlier call in the same --work);
3. IG maps of the teacher for all 50,000 training images, timed (images/s and the share of
   the GPU's peak FLOP/s they reach);
4. the 4.1x ablation (`student`, `kd`, `kd+ig`, `indistill+kd`, `indistill+kd+ig`) x 3 seeds,
   the seeds of a method running at once on the one GPU (processes), bf16 autocast and
   channels-last; `--recipe paper` with the short schedule below, every deviation listed;
5. the compression-factor sweep (student and kd+ig, one seed) if time is left.

After each method the side-by-side table (edgekd vs the paper, docs/methods.md: mean +- sd,
best, Welch p vs student and vs kd) is rewritten to --results (default benchmarks/results/) as
paper_reproduction.{json,md}, with the GPU, versions and wall time, so a call cut short still
leaves a partial table. Before starting a method it checks the budget and stops cleanly.

The schedule (why not 100 epochs): the paper trains every model 100 epochs with Adam at a
constant 1e-3 and batch 64, which is some 40 GPU-minutes per run; 15 runs do not fit 8
minutes. Here: the teacher with SGD + Nesterov, one-cycle to lr 0.2, weight decay 5e-4,
batch 512, 30 epochs (a teacher is given in the paper: only its accuracy, 93.91 %, matters);
students with the paper's Adam and KD/AT settings but a one-cycle schedule to 2e-3 at batch
256 for 15 epochs, the InDistill warm-up shortened to one epoch per layer (3 of the 15, as the
warm-up counts inside the budget). These are starting points, not yet tuned on a GPU: the
table says what they reached.

Without CUDA (or with --mini) it runs a miniature on the CPU (30 training and 10 test images
per class at 16x16, 1-2 epochs, 1 seed) so that the script cannot rot between GPU sessions;
the miniature writes to --work only unless --results is given.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import torch
from cifar10_ablation import ZIP, extract  # benchmarks/ is on sys.path when run as a script

from deploy.envinfo import capture
from edgekd.config import build_config, recipe_record
from edgekd.experiment import report as rp
from edgekd.experiment.runner import RunSpec, run_grid, train_shared_teacher
from edgekd.io import write_json, write_text
from edgekd.models.profile import count_macs
from edgekd.pipeline.context import Context
from edgekd.pipeline.rundir import RunDir
from edgekd.pipeline.stages import data as data_stage
from edgekd.pipeline.stages import teacher as teacher_stage
from edgekd.pipeline.stages.data import prepare_data
from edgekd.pipeline.stages.ig import compute_ig
from edgekd.pipeline.stages.teacher import load_teacher_checkpoint
from edgekd.train import engine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("student", "kd", "kd+ig", "indistill+kd", "indistill+kd+ig")
SWEEP = tuple(f"mbv2_cifar_trunc{k}" for k in (3, 7, 9, 11, 13))

# The IG paper (docs/methods.md), CIFAR-10, 4.1x student, 10 runs: (mean, sd, max); InDistill
# reports no figure for this teacher/student pair.
PAPER = {"student": (91.18, 0.31, 91.50), "kd": (91.62, 0.43, 92.29), "ig": (91.35, 0.32, 92.01),
         "at": (91.16, 0.32, 91.58), "kd+ig": (92.02, 0.34, 92.58), "kd+at": (91.75, 0.29, 92.20),
         "ig+at": (91.46, 0.23, 91.84), "kd+ig+at": (91.86, 0.28, 92.42)}
PAPER_TEACHER = 93.91

# Dense peak FLOP/s by GPU name fragment: FP32 (CUDA cores) and TF32 (tensor cores), which
# cuDNN convolutions use by default. NVIDIA's data sheets, SXM parts.
PEAKS = {"H200": (67e12, 495e12), "H100": (67e12, 495e12), "A100": (19.5e12, 156e12)}

GPU_PLAN = [
    "teacher.train.optimizer=sgd", "teacher.train.lr=0.2", "teacher.train.momentum=0.9",
    "teacher.train.weight_decay=5e-4", "teacher.train.schedule=onecycle",
    "teacher.train.batch_size=512", "teacher.train.epochs=30", "teacher.train.amp=true",
    "student.train.lr=2e-3", "student.train.schedule=onecycle", "student.train.batch_size=256",
    "student.train.epochs=15", "student.train.amp=true",
    "distill.indistill_a=1", "distill.indistill_b=0",
    "export.enabled=false", "bench.enabled=false",
]
MINI_PLAN = [
    "data.input_size=16", "teacher.train.epochs=1", "student.train.epochs=2",
    "distill.indistill_a=1", "distill.indistill_b=0", "distill.indistill_max_layers=1",
    "ig.steps=2", "export.enabled=false", "bench.enabled=false", "device=cpu",
]


class _Log:
    """Stage lines and one line per epoch on stdout (the call's log)."""

    def stage(self, name, status, detail=""):
        print(f"[{time.strftime('%H:%M:%S')}] {name} {status} {detail}", flush=True)

    def on_epoch_start(self, stage, epoch, epochs, steps): ...
    def on_step(self, stage, step, loss, acc, ips): ...

    def on_epoch_end(self, stage, r):
        acc = "" if r["test_acc"] is None else f"test {r['test_acc']:.2f} %, "  # warm-up: not evaluated
        print(f"  {stage} epoch {r['epoch']}: {acc}{r['images_per_s']:.0f} img/s, "
              f"{r['epoch_time_s']:.1f} s", flush=True)


def environment() -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "machine": capture()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def ig_throughput(base, exp: Path, teacher: Path, log) -> dict:
    """Compute (or find) the maps the `ig` runs will share, timed on their own."""
    cfg = copy.deepcopy(base)
    cfg.method = "kd+ig"
    cfg.teacher.checkpoint = str(teacher)
    cfg.ig.cache_dir = str((exp / "ig").resolve())  # the folder run_grid gives the runs
    run = RunDir(exp / "ig-timing")
    run.open(cfg, resume=True)
    ctx = Context(cfg, run, engine.resolve_device(cfg.device), log,
                  data=prepare_data(cfg))
    data_stage.STAGE(ctx)
    teacher_stage.STAGE(ctx)
    result = compute_ig(ctx)
    stats = result.manifest.get("stats", {})
    model = load_teacher_checkpoint(cfg.teacher, ctx.data)
    macs = count_macs(model, ctx.data.input_size)
    # Forward plus the backward pass to the input: about 3x the forward's 2 FLOPs per MAC.
    flops = 6.0 * macs * cfg.ig.steps
    ips = stats.get("images_per_s") or 0.0
    out = {"images": stats.get("images", len(ctx.data.train)), "steps": cfg.ig.steps,
           "seconds": stats.get("seconds"), "images_per_s": ips, "teacher_macs": macs,
           "flop_per_image": flops, "achieved_flop_s": ips * flops, "status": result.status}
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    for key, (fp32, tf32) in PEAKS.items():
        if key in name:
            out["share_of_fp32_peak"] = round(ips * flops / fp32, 4)
            out["share_of_tf32_peak"] = round(ips * flops / tf32, 4)
    return out


def markdown(doc: dict) -> str:
    env = doc["environment"]
    t = doc.get("teacher") or {}
    ig = doc.get("ig") or {}
    lines = [
        "# Paper reproduction: CIFAR-10, 4.1x truncated MobileNetV2 student" + (
            " (miniature)" if doc["mini"] else ""), "",
        f"Command: `{doc['command']}`", "",
        f"Machine: {env.get('gpu', 'no GPU')}; torch {env['torch']} (CUDA {env['cuda']}), "
        f"Python {env['python']}; {(env['machine'].get('cpu') or {}).get('model')}. "
        f"Wall time {doc['wall_time_s']:.0f} s{' (cut short: ' + doc['stopped'] + ')' if doc.get('stopped') else ''}.", "",
        f"Recipe: {doc['recipe']['summary']}", "",
        f"Data: {doc['data']}.", "",
    ]
    if t:
        lines += [f"Teacher `mbv2_cifar`: {t['accuracy']:.2f} % test top-1 (paper {PAPER_TEACHER} %, "
                  f"{t['accuracy'] - PAPER_TEACHER:+.2f} pp), {t['epochs']} epochs, {t['seconds']:.0f} s.", ""]
    if ig:
        share = (f", {100 * ig['share_of_fp32_peak']:.1f} % of the FP32 and "
                 f"{100 * ig['share_of_tf32_peak']:.1f} % of the TF32 peak"
                 if "share_of_fp32_peak" in ig else "")
        lines += [f"IG maps: {ig['images']} images x {ig['steps']} steps in {ig['seconds']} s, "
                  f"{ig['images_per_s']:.1f} images/s ({ig['achieved_flop_s'] / 1e12:.2f} TFLOP/s{share}).", ""]
    head = ["method", "n", "epochs", "edgekd mean ± sd", "edgekd best", "p vs student", "p vs kd",
            "paper mean ± sd (max)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in (doc.get("table") or {}).get("rows", []):
        le = r["last_epoch"]
        paper = PAPER.get(r["label"])
        lines.append("| " + " | ".join([
            r["label"], str(le["n"]), rp._epochs_cell(r), f"{rp._fmt(le['mean'])} ± {rp._fmt(le['sd'])}",
            rp._fmt(le["best"]), rp._fmt_p(r.get("p_vs_student")), rp._fmt_p(r.get("p_vs_kd")),
            f"{paper[0]:.2f} ± {paper[1]:.2f} ({paper[2]:.2f})" if paper else "n/a"]) + " |")
    lines += ["", "Accuracy: student test top-1 in %, last epoch (the papers' protocol); the paper's "
              "figures are 10 runs of 100 epochs (docs/methods.md). p: two-sided Welch t-test on "
              "last-epoch accuracies."]
    for e in doc.get("errors", []):
        lines += ["", f"**{e['method']} failed**: {e['error'][:300]}"]
    if doc.get("sweep"):
        lines += ["", "## Compression-factor sweep (1 seed)", "",
                  "| student | method | CF | accuracy |", "|---|---|---|---|"]
        for s in doc["sweep"]:
            lines.append(f"| {s['student']} | {s['method']} | {s['compression_factor']} | {s['accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", type=Path, default=ZIP)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekd-paper-reproduction"))
    ap.add_argument("--results", type=Path, default=None,
                    help="where paper_reproduction.{json,md} go (default: benchmarks/results "
                         "on a GPU, --work for the miniature)")
    ap.add_argument("--budget-s", type=float, default=470.0, help="stop starting work after this")
    ap.add_argument("--seeds", type=int, default=None, help="default 3 (miniature 1)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--mini", action="store_true", help="the CPU miniature even with CUDA")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override the plan (listed as a deviation)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    mini = args.mini or not torch.cuda.is_available()
    if mini and not args.mini:
        print("no CUDA device: running the CPU miniature (tiny subset, 1-2 epochs, 1 seed)", flush=True)
    if not args.zip.is_file():
        print(f"error: {args.zip} is missing: pass --zip PATH to the CIFAR-10 JPEG zip", file=sys.stderr)
        return 2
    results = args.results or (args.work if mini else RESULTS)
    seeds = list(range(args.seeds if args.seeds is not None else (1 if mini else 3)))
    methods = [m for m in args.methods.split(",") if m]
    per_class = (30, 10) if mini else (5000, 1000)
    data = extract(args.zip, args.work / "data", *per_class)
    base = build_config(dataset=f"imagefolder:{data}", recipe="paper",
                        sets=(MINI_PLAN if mini else GPU_PLAN) + args.sets)
    base.student.arch, base.teacher.arch = "mbv2_cifar_trunc5", "mbv2_cifar"
    exp = args.work / "experiment"
    log = _Log()
    doc: dict = {"benchmark": "paper_reproduction", "mini": mini,
                 "command": "python benchmarks/paper_reproduction.py " + " ".join(argv or sys.argv[1:]),
                 "environment": environment(),
                 "recipe": recipe_record(base),
                 "data": f"CIFAR-10 JPEG copy, {per_class[0]} train / {per_class[1]} test images per "
                         "class, no validation hold-out", "seeds": seeds}

    def save(stopped: str | None = None):
        doc["wall_time_s"] = round(time.perf_counter() - t0, 1)
        if stopped:
            doc["stopped"] = stopped
        write_json(results / "paper_reproduction.json", doc)
        write_text(results / "paper_reproduction.md", markdown(doc))

    t = time.perf_counter()
    teacher = train_shared_teacher(base, exp / "teacher", log)
    info = RunDir(exp / "teacher").stage_info("teacher")
    doc["teacher"] = {"accuracy": round(info["last_epoch"]["test_acc"], 2), "epochs": info["epochs"],
                      "seconds": round(time.perf_counter() - t, 1)}
    base.teacher.checkpoint = str(teacher.resolve())
    save()
    records: list[dict] = []
    for method in methods:
        if time.perf_counter() - t0 > args.budget_s:
            save(stopped=f"budget of {args.budget_s:.0f} s reached before {method}")
            return 0
        try:
            if "ig" in method.split("+") and "ig" not in doc:
                # Timed on their own, just before the first method that needs them.
                doc["ig"] = ig_throughput(base, exp, teacher.resolve(), log)
                save()
                if time.perf_counter() - t0 > args.budget_s:
                    save(stopped=f"budget of {args.budget_s:.0f} s reached before {method}")
                    return 0
            specs = [RunSpec(method, s, {"method": method}) for s in seeds]
            records += run_grid(base, specs, exp, jobs=1 if mini else len(seeds), reporter=log)
        except Exception as e:  # one broken method must not cost the others' rows
            doc.setdefault("errors", []).append({"method": method, "error": f"{type(e).__name__}: {e}"})
            print(f"error in {method}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            save()
            continue
        doc["table"] = rp.ablation_table(records)
        doc["runs"] = [{"label": r["label"], "seed": r["seed"], "accuracy": r["report"]["student"]["accuracy"],
                        "wall_time_s": r["report"]["wall_time_s"]} for r in records]
        save()
    if not args.no_sweep and not mini:
        doc["sweep"] = []
        for student in SWEEP:
            if time.perf_counter() - t0 > args.budget_s:
                save(stopped=f"budget of {args.budget_s:.0f} s reached in the sweep")
                return 0
            specs = [RunSpec(f"sweep-{student}-{m}", 0, {"method": m, "student.arch": student})
                     for m in ("student", "kd+ig")]
            try:
                done = run_grid(base, specs, exp, jobs=2, reporter=log)
            except Exception as e:
                doc.setdefault("errors", []).append({"method": f"sweep {student}",
                                                     "error": f"{type(e).__name__}: {e}"})
                save()
                continue
            for spec, rec in zip(specs, done, strict=True):
                rep = rec["report"]
                doc["sweep"].append({"student": student, "method": spec.overrides["method"],
                                     "compression_factor": rep["compression_factor"],
                                     "accuracy": rep["student"]["accuracy"]})
            save()
    save()
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
