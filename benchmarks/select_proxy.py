"""How well the selection's accuracy proxy ranks students: Spearman correlation of the proxy
(validation top-1 after `--select-epochs` of cross-entropy) against each option's final test
top-1 after the run's full recipe, beside the same correlation for MACs (the ranking without
the proxy), and the regret of each ranking's pick (best final accuracy less the pick's).

Steps, each resumable (rerun the same command; finished runs are skipped, `--resume` picks
up an interrupted one):
1. `edgekd compress` with a budget every option fits (`--latency-budget 1000`, FP32) and the
   proxy scoring the top `--select-top` options: the teacher, the proxy scores, and the final
   student of the proxy's pick;
2. `edgekd compress --student ARCH [--student-input-size PX]` for every other scored option,
   same recipe, the step-1 teacher.

    python benchmarks/select_proxy.py --dataset digits
    python benchmarks/select_proxy.py --dataset cifar10 --data DIR --teacher T.pt --teacher-arch A

`--data` for cifar10 is the image folder benchmarks/cifar10_cpu.py extracts (train/, test/);
the settings follow its student runs (10,000 stratified training images, KD, 12 epochs).
Writes benchmarks/results/select_proxy_<dataset>.json with the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from scipy.stats import spearmanr

from deploy.envinfo import capture

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CIFAR_CANDIDATES = ("resnet8_cifar_w0.5,resnet8_cifar,resnet14_cifar_w0.5,mbv2_cifar_d0.25_w0.35,"
                    "mbv3_small_cifar_w0.5,shufflenetv2_cifar_x0.5")


def edgekd(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "edgekd", *args], check=True)


def recipe(args) -> list[str]:
    """The run's settings, shared by the selecting run and the final ones."""
    if args.dataset == "digits":
        return ["--budget-precision", "fp32"]  # the digits defaults otherwise
    return ["--dataset", f"imagefolder:{args.data}", "--teacher-arch", args.teacher_arch,
            "--method", "kd", "--train-subset", "0.222222", "--epochs", "12",
            "--budget-precision", "fp32", "--budget-input-sizes", "32,24"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=("digits", "cifar10"), default="digits")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--data", type=Path, help="cifar10: the extracted image folder")
    ap.add_argument("--teacher", type=Path, help="cifar10: the trained teacher checkpoint")
    ap.add_argument("--teacher-arch", default="resnet20_cifar")
    ap.add_argument("--select-top", type=int, default=None,
                    help="options the proxy scores (digits 8, cifar10 6)")
    args = ap.parse_args()
    work = args.work or Path(f"/tmp/edgekd-select-proxy-{args.dataset}")
    top = args.select_top or (8 if args.dataset == "digits" else 6)
    if args.dataset == "cifar10" and not (args.data and args.teacher):
        print("error: cifar10 needs --data (the image folder) and --teacher (a checkpoint)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    base = recipe(args)
    sel_run = work / "select-run"
    extra = ([] if args.dataset == "digits" else
             ["--teacher", str(args.teacher), "--set", f"budget.candidates={CIFAR_CANDIDATES}"])
    if not (sel_run / "report.json").is_file():
        edgekd("compress", *base, *extra, "--latency-budget", "1000", "--select-top", str(top),
               "--no-bench", "--out", str(sel_run), *(["--resume"] if sel_run.exists() else []))
    sel = json.loads((sel_run / "select" / "select.json").read_text())
    proxy = sel["proxy"]
    rows = {r["key"]: r for r in sel["candidates"]}
    teacher = str(sel_run / "teacher.pt") if args.dataset == "digits" else str(args.teacher)
    results = []
    for key, score in proxy["scores"].items():
        row = rows[key]
        if key == sel["choice"]["key"]:
            out = sel_run
        else:
            out = work / "final" / key
            if not (out / "report.json").is_file():
                size = [] if row["input_size"] == sel["input_size"] else ["--student-input-size",
                                                                          str(row["input_size"])]
                edgekd("compress", *base, "--teacher", teacher, "--student", row["arch"], *size,
                       "--no-bench", "--out", str(out), *(["--resume"] if out.exists() else []))
        report = json.loads((out / "report.json").read_text())
        results.append({"key": key, "arch": row["arch"], "input_size": row["input_size"],
                        "macs": row["macs"], "latency_ms": row["value_ms"], "proxy": score,
                        "final_test_top1": report["student"]["accuracy"], "run": str(out)})
        print(f"{key:34s} proxy {score:6.2f}  final {results[-1]['final_test_top1']:6.2f}", flush=True)
    final = [r["final_test_top1"] for r in results]
    best = max(final)
    by_proxy = max(results, key=lambda r: (r["proxy"], r["macs"]))
    by_macs = max(results, key=lambda r: r["macs"])
    rho, p = spearmanr([r["proxy"] for r in results], final)
    rho_m, p_m = spearmanr([r["macs"] for r in results], final)
    doc = {
        "benchmark": "select_proxy", "dataset": args.dataset,
        "command": " ".join(["python", "benchmarks/select_proxy.py", *sys.argv[1:]]),
        "proxy": {k: proxy[k] for k in ("epochs", "images", "loss", "metric")},
        "final_recipe": " ".join(base) + " (the run's student stage; digits: the defaults)",
        "teacher": {"file": teacher, "test_top1": json.loads((sel_run / "report.json").read_text())
                    ["teacher"]["accuracy"]},
        "options": results,
        "spearman": {"proxy_vs_final": {"rho": rho, "p": p},
                     "macs_vs_final": {"rho": rho_m, "p": p_m}},
        "pick": {"proxy": {"key": by_proxy["key"], "final": by_proxy["final_test_top1"],
                           "regret_pp": round(best - by_proxy["final_test_top1"], 2)},
                 "macs": {"key": by_macs["key"], "final": by_macs["final_test_top1"],
                          "regret_pp": round(best - by_macs["final_test_top1"], 2)},
                 "best_final": best},
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "machine": capture(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"select_proxy_{args.dataset}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    print(f"spearman proxy vs final {rho:.2f} (p {p:.3f}); MACs vs final {rho_m:.2f} (p {p_m:.3f}); "
          f"regret: proxy {doc['pick']['proxy']['regret_pp']} pp, MACs {doc['pick']['macs']['regret_pp']} pp")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
