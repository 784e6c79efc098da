"""Students chosen by a latency budget on this CPU, and what they cost in accuracy.

For budgets of teacher/2, /5 and /10.8 (the papers' claimed speed-up) at batch 64 and at
batch 1 (ONNX Runtime, FP32, all cores), `edgekd select` picks the student from a candidate
list spanning every family; every chosen architecture is then trained once with `edgekd
compress --speedup X --budget-batch B` (the same teacher checkpoint for all of a data set's
runs), whose final check measures the trained student beside the trained teacher on this CPU.
Data sets: digits (the default pipeline, indistill+kd+ig) and a CIFAR-10 subset from the shared
JPEG copy (the first N images per class, method kd, short schedule: see --help).

Writes benchmarks/results/latency_budget.{json,png} with the machine. Resumable: the runs and
the measurement cache live under --work.

    python benchmarks/latency_budget.py [--work /tmp/edgekd-latency-budget] [--datasets digits,cifar10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from deploy.envinfo import capture

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_ablation import ZIP, extract  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DIVISORS = (2.0, 5.0, 10.8)
# One to three per family, small to large, so a selection costs about a minute, not four.
CANDIDATES = ("resnet8_cifar_w0.5,resnet8_cifar_w0.75,resnet8_cifar,resnet14_cifar_w0.5,"
              "resnet14_cifar,resnet20_cifar,resnet8_cifar_w2,mbv2_cifar_d0.25_w0.35,"
              "mbv2_cifar_d0.5_w0.5,mbv2_cifar_w0.5,mbv2_cifar_w0.75,mbv3_small_cifar_w0.5,"
              "mbv3_small_cifar,mbv3_large_cifar_w0.75,shufflenetv2_cifar_x0.5,"
              "shufflenetv2_cifar_x1.0,mbv2_cifar_trunc5,mbv2_cifar_trunc3")


def edgekd(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgekd", *args]
    print("+ edgekd " + " ".join(args), flush=True)
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    return done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekd-latency-budget"))
    ap.add_argument("--datasets", default="digits,cifar10")
    ap.add_argument("--zip", type=Path, default=ZIP)
    ap.add_argument("--cifar-train-per-class", type=int, default=200)
    ap.add_argument("--cifar-test-per-class", type=int, default=100)
    ap.add_argument("--cifar-epochs", type=int, default=10, help="Student epochs on CIFAR-10 (method kd).")
    ap.add_argument("--cifar-teacher-epochs", type=int, default=10)
    ap.add_argument("--batches", default="64,1", help="Budget batch sizes.")
    ap.add_argument("--remeasure", action="store_true",
                    help="Measure again (fresh cache, selections and latency stages), keep the trained models.")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.remeasure:
        remeasure(work, args.datasets.split(","))
    # A cache of our own: the first selection measures, later ones (and reruns) reuse it.
    env = dict(os.environ, EDGEKD_CACHE=str(work / "cache"))
    t0 = time.perf_counter()
    doc: dict = {"benchmark": "latency_budget", "command": "python benchmarks/latency_budget.py "
                 + " ".join(sys.argv[1:]), "divisors": list(DIVISORS), "batches": [int(b) for b in args.batches.split(",")],
                 "candidates": CANDIDATES.split(","), "backend": "onnxruntime CPU, FP32, all cores",
                 "datasets": {}}
    for ds in args.datasets.split(","):
        if ds == "digits":
            ds_args, size = [], 16
            schedule = "edgekd defaults: teacher 10 epochs, student 17 (12 InDistill warm-up + 5), indistill+kd+ig"
        elif ds == "cifar10":
            if not args.zip.is_file():
                print(f"skipping cifar10: {args.zip} is missing", file=sys.stderr)
                continue
            data = extract(args.zip, work / "cifar10", args.cifar_train_per_class, args.cifar_test_per_class)
            ds_args = ["--dataset", f"imagefolder:{data}", "--method", "kd",
                       "--epochs", str(args.cifar_epochs), "--teacher-epochs", str(args.cifar_teacher_epochs)]
            size = 32
            schedule = (f"first {args.cifar_train_per_class} train / {args.cifar_test_per_class} test "
                        f"JPEGs per class (10 % of train held out for val), 32x32, method kd, teacher "
                        f"{args.cifar_teacher_epochs} epochs, students {args.cifar_epochs}, Adam cosine")
        else:
            raise SystemExit(f"unknown data set {ds}: digits or cifar10")
        teacher = None
        trained: dict[str, dict] = {}  # arch -> report of the run that trained it
        rows = []
        for batch in [int(b) for b in args.batches.split(",")]:
            for d in DIVISORS:
                sel_dir = work / "select" / f"{ds}-b{batch}-d{d:g}"
                done = edgekd(["select", "--speedup", str(d), "--budget-batch", str(batch),
                               "--input-size", str(size), "--candidates", CANDIDATES,
                               "--budget-precision", "fp32", "--budget-input-sizes", str(size),
                               "--out", str(sel_dir), "--json"], env, work)
                if done.returncode not in (0, 2):
                    return done.returncode
                sel = json.loads((sel_dir / "select.json").read_text())
                chosen = sel["chosen"]
                row = {"batch": batch, "divisor": d, "limit_ms": sel["budget"]["limit_ms"],
                       "teacher_ms_at_selection": sel["teacher"]["value_ms"], "chosen": chosen,
                       "fitting": sum(1 for r in sel["candidates"] if r.get("fits"))}
                if chosen is None:
                    row["note"] = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no fit"
                    rows.append(row)
                    continue
                if chosen not in trained:
                    run = work / "runs" / f"{ds}-{chosen}"
                    teach = ["--teacher", str(teacher)] if teacher else []
                    done = edgekd(["compress", *ds_args, *teach, "--speedup", str(d), "--budget-batch",
                                   str(batch), "--set", f"budget.candidates={CANDIDATES}",
                                   "--budget-precision", "fp32", "--budget-input-sizes", str(size),
                                   "--select-epochs", "0",
                                   "--set", "ig.cache_dir=" + str(work / "ig" / ds),
                                   "--out", str(run), "--resume"], env, work)
                    if not (run / "report.json").is_file():
                        return done.returncode or 1
                    trained[chosen] = json.loads((run / "report.json").read_text())
                    trained[chosen]["_exit"] = done.returncode
                    teacher = teacher or run / "teacher.pt"
                report = trained[chosen]
                # compress leaves out candidates its method cannot train (an InDistill mapping):
                # its choice is the one trained.
                row["trained"] = report["student"]["arch"]
                lat = report["latency"]
                key = f"batch_{batch}"
                final = report["budget"]["final"]
                row.update({
                    "student_acc": report["student"]["accuracy"], "teacher_acc": report["teacher"]["accuracy"],
                    "acc_drop_pp": round(report["teacher"]["accuracy"] - report["student"]["accuracy"], 2),
                    "student_macs": report["student"]["macs"], "student_params": report["student"]["params"],
                    # The trained models, measured in one run by the bench stage at 1 and 64.
                    "student_p50_ms": lat["student"][key]["p50_ms"], "teacher_p50_ms": lat["teacher"][key]["p50_ms"],
                    "speedup_p50": round(lat["teacher"][key]["p50_ms"] / lat["student"][key]["p50_ms"], 2),
                    "final_check": ({k: final[k] for k in ("batch", "student_ms", "teacher_ms", "limit_ms",
                                                           "speedup", "holds")}
                                    if final["batch"] == batch else None),
                })
                # This run's budget, held against the trained pair measured in the same run.
                row["within_budget"] = row["speedup_p50"] >= d
                rows.append(row)
        doc["datasets"][ds] = {"schedule": schedule, "input_size": size, "rows": rows}
        for r in rows:
            print(f"{ds} batch {r['batch']:>2} /{r['divisor']:<4g} -> {r.get('trained', r['chosen'])}: "
                  + (f"{r['student_p50_ms']:.2f} ms vs teacher {r['teacher_p50_ms']:.2f} ms "
                     f"({r['speedup_p50']:.1f}x), top-1 {r['student_acc']:.2f} vs {r['teacher_acc']:.2f} %"
                     if "student_acc" in r else r.get("note", "")), flush=True)
    # Data sets not run this time keep their earlier figures (with their own machine record).
    previous = RESULTS / "latency_budget.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        for ds, entry in old.get("datasets", {}).items():
            if ds not in doc["datasets"]:
                doc["datasets"][ds] = {**entry, "from_run": old.get("created")}
    doc["wall_time_s"] = round(time.perf_counter() - t0, 1)
    doc["machine"] = capture()
    doc["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency_budget.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, RESULTS / "latency_budget.png")
    print(f"-> {RESULTS / 'latency_budget.json'}")
    return 0


def remeasure(work: Path, datasets: list[str]) -> None:
    """Forget every latency figure of these data sets' runs (the measurement cache, the
    selections, the bench and budget stages), so the next pass measures them again on a quiet
    machine; the trained models stay (a resumed run reuses them when it chooses the same one)."""
    import shutil

    shutil.rmtree(work / "cache", ignore_errors=True)
    for ds in datasets:
        for sel in (work / "select").glob(f"{ds}-*"):
            shutil.rmtree(sel)
        for run in (work / "runs").glob(f"{ds}-*"):
            state = run / "state.json"
            ledger = json.loads(state.read_text())
            for stage in ("select", "bench", "budget"):
                ledger.pop(stage, None)
            state.write_text(json.dumps(ledger, indent=2))


def plot(doc: dict, path: Path) -> None:
    """One panel per data set and batch: each budget's trained student (accuracy against its
    p50), the budget's limit as a dotted line, the teacher as a square."""
    from edgekd.plotting import pyplot, save_png

    plt = pyplot()
    panels = [(ds, entry, b) for ds, entry in doc["datasets"].items()
              for b in sorted({r["batch"] for r in entry["rows"]}, reverse=True)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (ds, entry, batch) in zip(axes[0], panels, strict=True):
        rows = [r for r in entry["rows"] if r["batch"] == batch and "student_acc" in r]
        for r in rows:
            ax.scatter(r["student_p50_ms"], r["student_acc"], color="#2e7d32", zorder=3)
            ax.annotate(f"/{r['divisor']:g} {r.get('trained', r['chosen'])}",
                        (r["student_p50_ms"], r["student_acc"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
            ax.axvline(r["limit_ms"], color="#c62828", linestyle=":", linewidth=0.8)
        if rows:
            ax.scatter(rows[0]["teacher_p50_ms"], rows[0]["teacher_acc"], marker="s", color="#1565c0",
                       label="teacher", zorder=3)
            ax.legend(fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(f"p50 latency (ms), batch {batch}")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{ds}: budgets teacher / {', '.join(f'{d:g}' for d in doc['divisors'])}", fontsize=8)
        ax.grid(True, linewidth=0.3)
    save_png(fig, plt, path)


if __name__ == "__main__":
    sys.exit(main())
