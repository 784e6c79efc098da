"""CIFAR-10 on a 2-core CPU: a teacher at 80 %, the student `--speedup 6` picks on this CPU,
and what each method buys it (student, kd, kd+ig, indistill+kd+ig; 3 seeds, Welch p vs kd).

Steps, each resumable (rerun the same command after an interruption; finished steps skip and
their wall time is kept in $WORK/progress.json):
1. extract ../shared/data/cifar10-jpeg.zip (all 50,000 training and 10,000 test JPEGs);
2. train the teacher on the 45,000 training images left after the 10 % validation hold-out;
3. `edgekd select --speedup 6` against the teacher's architecture on this CPU (ONNX Runtime,
   batch 64): the student;
4. `edgekd experiment ablation` on 1,000 training images per class (stratified, 10,000), the
   full 10,000-image test set, one epoch budget for every method (the InDistill warm-up is
   its share of it), the teacher's logits recorded once per seed (cached soft labels);
5. the same `kd` runs with the live teacher (a forward per step): cached vs live accuracy,
   and the KD / CE epoch-time ratio of the student.

Writes benchmarks/results/cifar10_cpu.{json,md,png} with the machine.

    python benchmarks/cifar10_cpu.py [--work /tmp/edgekd-cifar10-cpu]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cifar10_ablation import ZIP, extract

from deploy.envinfo import capture

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
METHODS = "student,kd,kd+ig,indistill+kd+ig"
# A dense ResNet trains fast on a CPU (no depthwise convolutions). resnet20_cifar_w2 (4x the
# MACs) reached 81.3 % in 6 epochs on an AVX512-BF16 host at 177 s an epoch, but takes 440 s an
# epoch in FP32 on an AVX2 one, and its forwards (soft labels, IG maps) dominate the students'
# runs there: the plain resnet20_cifar keeps the whole benchmark inside the hour on both.
TEACHER_ARCH = "resnet20_cifar"
TEACHER = {  # the recipe, recorded in the results
    "teacher.train.optimizer": "sgd",
    "teacher.train.lr": 0.2, "teacher.train.momentum": 0.9, "teacher.train.weight_decay": 5e-4,
    "teacher.train.batch_size": 128, "teacher.train.schedule": "onecycle",
}


class Steps:
    """Wall time of each finished step, kept across interruptions in progress.json."""

    def __init__(self, path: Path):
        self.path = path
        self.done = json.loads(path.read_text()) if path.exists() else {}

    def run(self, name: str, fn):
        if name in self.done:
            print(f"[{name}] done before ({self.done[name]['wall_s']:.0f} s)", flush=True)
            return self.done[name].get("value")
        print(f"[{name}] ...", flush=True)
        t0 = time.perf_counter()
        value = fn()
        self.done[name] = {"wall_s": round(time.perf_counter() - t0, 1), "value": value}
        self.path.write_text(json.dumps(self.done, indent=1) + "\n")
        return value

    def wall(self, *names: str) -> float:
        return sum(self.done[n]["wall_s"] for n in names if n in self.done)


def edgekd(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "edgekd", *args], check=True)


def train_teacher(data: Path, out: Path, arch: str, epochs: int) -> dict:
    from rich.console import Console

    from edgekd.cli.common import RichReporter
    from edgekd.config import build_config
    from edgekd.experiment.runner import train_shared_teacher

    cfg = build_config(dataset=f"imagefolder:{data}",
                       overrides={**TEACHER, "teacher.arch": arch, "teacher.train.epochs": epochs,
                                  "student.arch": "resnet8_cifar"})
    path = train_shared_teacher(cfg, out, RichReporter(Console(stderr=True)))
    summary = json.loads((out / "state.json").read_text())["teacher"]["info"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # every epoch's time, also those of an interrupted attempt that the step's clock missed
    train_s = sum(r["epoch_time_s"] for r in rows if r["stage"] == "teacher")
    return {"checkpoint": str(path), "arch": arch, "epochs": epochs,
            "test_acc": summary["last_epoch"]["test_acc"], "val_acc": summary["last_epoch"]["val_acc"],
            "epoch_times_s_total": round(train_s, 1), "summary": summary}


def select(work: Path, arch: str, speedup: float) -> dict:
    out = work / "select"
    # FP32 at 32 px: the student the ablation then trains (the solver's other axes are
    # measured by benchmarks/budget_solver.py and select_proxy.py)
    edgekd("select", "--teacher-arch", arch, "--speedup", f"{speedup:g}", "--input-size", "32",
           "--budget-precision", "fp32", "--budget-input-sizes", "32", "--out", str(out))
    doc = json.loads((out / "select.json").read_text())
    chosen = next(c for c in doc["candidates"] if c["key"] == doc["choice"]["key"])
    return {"chosen": doc["chosen"], "limit_ms": doc["budget"]["limit_ms"],
            "teacher_ms": doc["teacher"]["value_ms"], "student_ms": chosen["value_ms"],
            "speedup": doc["teacher"]["value_ms"] / chosen["value_ms"], "cpu": doc["teacher"].get("cpu"),
            "asked": speedup}


def ablation(data: Path, out: Path, teacher: str, teacher_arch: str, student: str, methods: str,
             epochs: int, seeds: int, subset: int, ig_steps: int, extra: list[str]) -> dict:
    edgekd("experiment", "ablation", "--dataset", f"imagefolder:{data}", "--teacher", teacher,
           "--teacher-arch", teacher_arch, "--student", student, "--methods", methods, "--seeds", str(seeds),
           "--subset", str(subset), "--epochs", str(epochs), "--set", f"ig.steps={ig_steps}",
           "--set", "distill.teacher_input=clean", *extra, "--out", str(out))
    return json.loads((out / "ablation.json").read_text())


def epoch_times(exp: Path, label: str) -> list[float]:
    """Median train-epoch seconds of the student stage, per seed (first epoch left out)."""
    out = []
    for run in sorted((exp / "runs" / label.replace("+", "_")).glob("s*")):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        secs = [r["epoch_time_s"] for r in rows if r["stage"] == "student"]
        out.append(statistics.median(secs[1:] or secs))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", type=Path, default=ZIP)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekd-cifar10-cpu"))
    ap.add_argument("--teacher-arch", default=TEACHER_ARCH)
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--speedup", type=float, default=6,
                    help="the budget the student is chosen by (not 10: on a 2-core AVX2 host no student "
                         "is 10x faster than resnet20_cifar at batch 64)")
    ap.add_argument("--epochs", type=int, default=12, help="student epochs (the warm-up's included)")
    ap.add_argument("--subset", type=int, default=10000, help="training images of the students")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ig-steps", type=int, default=8)
    ap.add_argument("--no-live", action="store_true", help="skip the live-teacher kd runs")
    args = ap.parse_args()
    if not args.zip.is_file():
        print(f"error: {args.zip} is missing: pass --zip PATH to the CIFAR-10 JPEG zip", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    steps = Steps(args.work / "progress.json")
    data = steps.run("extract", lambda: str(extract(args.zip, args.work / "data", 5000, 1000)))
    data = Path(data)
    teacher = steps.run("teacher", lambda: train_teacher(data, args.work / "teacher", args.teacher_arch,
                                                         args.teacher_epochs))
    chosen = steps.run("select", lambda: select(args.work, teacher["arch"], args.speedup))
    common = dict(data=data, teacher=teacher["checkpoint"], teacher_arch=teacher["arch"],
                  student=chosen["chosen"], epochs=args.epochs,
                  seeds=args.seeds, subset=args.subset, ig_steps=args.ig_steps)
    main_table = steps.run("ablation", lambda: ablation(out=args.work / "ablation", methods=METHODS,
                                                        extra=[], **common))
    live = None
    if not args.no_live:
        live = steps.run("live", lambda: ablation(out=args.work / "live", methods="kd",
                                                  extra=["--set", "distill.soft_labels=live"], **common))

    doc = report(args, steps, teacher, chosen, main_table, live)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cifar10_cpu.json").write_text(json.dumps(doc, indent=1) + "\n")
    (RESULTS / "cifar10_cpu.md").write_text(markdown(doc))
    png = args.work / "ablation" / "ablation.png"
    if png.exists():
        shutil.copyfile(png, RESULTS / "cifar10_cpu.png")
    print(markdown(doc))
    return 0


def report(args, steps: Steps, teacher: dict, chosen: dict, main_table: dict, live: dict | None) -> dict:
    from edgekd.experiment.stats import summarize, welch_p

    ce = epoch_times(args.work / "ablation", "student")
    kd = epoch_times(args.work / "ablation", "kd")
    doc = {
        "benchmark": "cifar10_cpu",
        "command": "python benchmarks/cifar10_cpu.py " + " ".join(sys.argv[1:]),
        "data": {"source": "CIFAR-10 JPEG copy (../shared/data/cifar10-jpeg.zip)", "input_size": 32,
                 "teacher_train": "45,000 (50,000 less the 10 % validation hold-out)",
                 "student_train": f"{args.subset} (stratified from those 45,000)",
                 "test": "10,000 (the full test set)"},
        "teacher": {**{k: v for k, v in teacher.items() if k != "summary"},
                    "recipe": {k.removeprefix("teacher.train."): v for k, v in TEACHER.items()}},
        "student": chosen,
        "settings": {"epochs": args.epochs, "seeds": args.seeds, "ig_steps": args.ig_steps,
                     "teacher_input": "clean", "soft_labels": "cached (auto)"},
        "table": main_table["table"],
        "runs": main_table["runs"],
        "epoch_time_s": {"student_ce": ce, "kd_cached": kd,
                         "kd_over_ce": [round(k / c, 3) for k, c in zip(kd, ce, strict=False)]},
        "wall_time_s": {"main_table": steps.wall("extract", "select", "ablation")
                        + max(steps.wall("teacher"), teacher["epoch_times_s_total"]),
                        **{k: v["wall_s"] for k, v in steps.done.items()}},
        "machine": {**capture(), "cpu_flags": _flags()},
    }
    if live is not None:
        live_acc = [r["accuracy"] for r in live["runs"]]
        cached_acc = [r["accuracy"] for r in main_table["runs"] if r["label"] == "kd"]
        kd_live = epoch_times(args.work / "live", "kd")
        doc["live_vs_cached"] = {"kd_cached": summarize(cached_acc), "kd_live": summarize(live_acc),
                                 "welch_p": welch_p(cached_acc, live_acc),
                                 "epoch_time_s": {"kd_live": kd_live}}
    return doc


def markdown(doc: dict) -> str:
    cpu = doc["machine"].get("cpu") or {}
    t, s = doc["teacher"], doc["student"]
    lines = ["# CIFAR-10 on a 2-core CPU", "", f"`{doc['command'].strip()}`", "",
             f"Machine: {cpu.get('model')}, {cpu.get('usable_cores')} cores, flags "
             f"{', '.join(doc['machine'].get('cpu_flags') or []) or 'n/a'}. Main table "
             f"{doc['wall_time_s']['main_table'] / 60:.1f} min wall.", "",
             f"Teacher: `{t['arch']}`, {t['epochs']} epochs on 45,000 images, test top-1 "
             f"**{t['test_acc']:.2f} %**. Student: `{s['chosen']}`, chosen by `--speedup {s['asked']:g}` on this "
             f"CPU: {s['student_ms']:.2f} ms vs {s['teacher_ms']:.2f} ms at batch 64 "
             f"(**{s['speedup']:.1f}x**), trained on {doc['data']['student_train']} images for "
             f"{doc['settings']['epochs']} epochs per method.", "",
             "| method | n | epochs | test top-1 mean ± sd | best run | p vs kd |", "|---|---|---|---|---|---|"]
    for row in doc["table"]["rows"]:
        m = row["last_epoch"]
        p = row.get("p_vs_kd")
        warm = f" ({row['warmup_epochs']} warm-up)" if row.get("warmup_epochs") else ""
        lines.append(f"| {row['label']} | {m['n']} | {row['epochs']}{warm} | {m['mean']:.2f} ± {m['sd']:.2f} "
                     f"| {m['best']:.2f} | {'—' if p is None else f'{p:.3f}'} |")
    e = doc["epoch_time_s"]
    lines += ["", "Test top-1 of the last epoch in %; p: two-sided Welch t-test against kd.", "",
              f"Epoch time of the student (median, s): cross-entropy {_list(e['student_ce'])}, "
              f"kd with cached soft labels {_list(e['kd_cached'])}: kd / CE = {_list(e['kd_over_ce'])}."]
    lv = doc.get("live_vs_cached")
    if lv:
        lines += ["", f"Cached vs live teacher (kd, same seeds): {lv['kd_cached']['mean']:.2f} ± "
                      f"{lv['kd_cached']['sd']:.2f} vs {lv['kd_live']['mean']:.2f} ± {lv['kd_live']['sd']:.2f} %, "
                      f"Welch p = {lv['welch_p']:.3f}; live epoch {_list(lv['epoch_time_s']['kd_live'])} s."]
    return "\n".join(lines) + "\n"


def _flags() -> list[str]:
    """The CPU's vector and matrix extensions that decide training and inference speed."""
    from edgekd.train.precision import cpu_flags

    return sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))


def _list(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
