"""Measurements behind two distillation defaults, on digits with one shared teacher:

1. `distill.teacher_input`: with IG overlays, does the teacher's KD target come better from
   the overlaid image the student sees, or from the clean one (same crop and flip)?
   `kd+ig`, both ways, N seeds each, Welch's t-test between them.
2. `distill.pkt_weight`: `pkt` (CE + w * PKT) at a few weights; edgekd's PKT is batch-size
   times the mean-over-B^2 value of Passalis' / RepDistiller's code (docs/decisions.md).

    python benchmarks/distill_defaults.py [--teacher runs/.../teacher.pt] [--seeds 4]

Writes benchmarks/results/distill_defaults.{json,md} with the machine; resumable (finished
runs are kept under --work).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deploy.envinfo import capture
from edgekd.config import build_config
from edgekd.experiment import report as rp
from edgekd.experiment import suites
from edgekd.experiment.stats import summarize, welch_p
from edgekd.io import write_json, write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _variant(label: str, method: str, sets: list[str], args, work: Path, seeds: int) -> dict:
    # One IG computation for every variant: the maps depend on the teacher only.
    sets = [*sets, f"ig.cache_dir={(work / 'ig').resolve()}"]
    cfg = build_config(dataset="digits", sets=sets, overrides={
        "teacher.checkpoint": str(args.teacher) if args.teacher else None,
        "student.train.epochs": args.epochs, "student.arch": "mbv2_cifar_trunc5"})
    doc = suites.ablation(cfg, [method], list(range(seeds)), work / label, name=label)
    values = doc["table"]["rows"][0]["values"]
    return {"label": label, "method": method, "sets": sets, "values": values,
            "summary": summarize(values)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, default=None,
                    help="a digits teacher.pt at the default 16x16 (default: train one)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekd-distill-defaults"))
    ap.add_argument("--seeds", type=int, default=3, help="seeds per teacher-input variant")
    ap.add_argument("--pkt-seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4, help="student epochs")
    ap.add_argument("--pkt-weights", default="1,10,100")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = [_variant(f"teacher-input-{v}", "kd+ig", [f"distill.teacher_input={v}"], args, args.work,
                     args.seeds) for v in ("overlaid", "clean")]
    p_input = welch_p(rows[0]["values"], rows[1]["values"])
    pkt = [_variant(f"pkt-w{w}", "pkt", [f"distill.pkt_weight={w}"], args, args.work,
                    args.pkt_seeds) for w in args.pkt_weights.split(",")]
    cpu = capture().get("cpu") or {}
    doc = {"benchmark": "distill_defaults",
           "command": "python benchmarks/distill_defaults.py " + " ".join(argv or sys.argv[1:]),
           "machine": {"cpu": cpu.get("model"), "cores": cpu.get("usable_cores")},
           "dataset": "digits (16x16, 1257 train / 360 test)", "student": "mbv2_cifar_trunc5",
           "epochs": args.epochs, "seeds": list(range(args.seeds)),
           "pkt_seeds": list(range(args.pkt_seeds)),
           "teacher_input": {"rows": rows, "welch_p": p_input},
           "pkt_weight": {"rows": pkt}, "wall_time_s": round(time.perf_counter() - t0, 1)}
    lines = ["# Distillation defaults, measured on digits", "",
             f"Command: `{doc['command']}`", "",
             f"Machine: {cpu.get('model')}, {cpu.get('usable_cores')} cores; "
             f"{doc['wall_time_s'] / 60:.0f} min wall. Student mbv2_cifar_trunc5, {args.epochs} "
             f"epochs, seeds {doc['seeds']} (PKT: {doc['pkt_seeds']}), one shared teacher.", "",
             "| variant | method | test top-1 mean ± sd | best |", "|---|---|---|---|"]
    for r in rows + pkt:
        s = r["summary"]
        lines.append(f"| {r['label']} | {r['method']} | {rp._fmt(s['mean'])} ± {rp._fmt(s['sd'])} | "
                     f"{rp._fmt(s['best'])} |")
    lines += ["", f"Teacher input, overlaid vs clean: Welch p = {rp._fmt_p(p_input)}."]
    write_json(args.results / "distill_defaults.json", doc)
    write_text(args.results / "distill_defaults.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
