"""How many IG steps the digits default needs: maps at n steps vs the papers' 50 (and vs 256).

Uses the trained teacher of a finished default run (`edgekd compress` first). For each step
count and quadrature, on training images spread over the classes, it measures how far the
maps are from the 50-step Gauss-Legendre maps: relative L1 error, the error in overlay units
(per-map min-max to [0, 1], what the student sees), the Pearson correlation, IG's
completeness error |sum(attr) - (F(x) - F(baseline))| / |F(x) - F(baseline)|, and the time.
Results go to benchmarks/results/ig_convergence.json.

    python benchmarks/ig_convergence.py [--run runs/digits-mbv2_cifar_trunc5-kd_ig-s0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from deploy.envinfo import capture
from edgekd.attribution.ig import IGSettings, MapComputer, baselines
from edgekd.attribution.show import pick_indices
from edgekd.pipeline.standalone import open_run
from edgekd.train import checkpoint

RESULTS = Path(__file__).resolve().parent / "results" / "ig_convergence.json"
STEPS = (2, 4, 6, 8, 12, 16, 24, 32, 50)


def attributions(computer: MapComputer, x, y, steps, method):
    """Raw attributions and completeness deltas, batched as the edgekd stage batches."""
    s = IGSettings(steps=steps, method=method)
    computer.settings = s
    from edgekd.attribution.ig import plan_batches

    b, ibs = plan_batches(computer.rows, steps)
    attrs, deltas = [], []
    t0 = time.perf_counter()
    for i in range(0, len(x), b):
        xb, yb = x[i : i + b], y[i : i + b]
        base = baselines(computer.teacher, xb, "zeros")
        a, d = computer.ig.attribute(xb, baselines=base, target=yb, n_steps=steps, method=method,
                                     internal_batch_size=ibs, return_convergence_delta=True)
        attrs.append(a.detach())
        deltas.append(d.detach())
    return torch.cat(attrs), torch.cat(deltas), time.perf_counter() - t0


def _norm(m):
    lo = m.amin(dim=(1, 2), keepdim=True)
    hi = m.amax(dim=(1, 2), keepdim=True)
    return (m - lo) / (hi - lo).clamp_min(1e-12)


def compare(m, ref) -> dict:
    rel_l1 = (m - ref).abs().flatten(1).sum(1) / ref.flatten(1).sum(1)
    ov = (_norm(m) - _norm(ref)).abs().flatten(1)
    a, b = m.flatten(1), ref.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return {
        "rel_l1_mean": round(float(rel_l1.mean()), 5), "rel_l1_max": round(float(rel_l1.max()), 5),
        "overlay_abs_err_mean": round(float(ov.mean()), 5),
        "overlay_abs_err_p99": round(float(ov.flatten().quantile(0.99)), 5),
        "pearson_mean": round(float(r.mean()), 6), "pearson_min": round(float(r.min()), 6),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/digits-mbv2_cifar_trunc5-kd_ig-s0")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"Results JSON (default {RESULTS}).")
    args = ap.parse_args()
    run = Path(args.run)
    if not (run / "teacher.pt").is_file():
        print(f"{run} has no teacher.pt: run `edgekd compress` first (or pass --run)", file=sys.stderr)
        return 2
    ctx = open_run(run)
    teacher, meta = checkpoint.load_model(run / "teacher.pt")
    idx = pick_indices(ctx.data.train.labels, args.images)
    x = ctx.data.train.images[idx].float() / 255
    y = ctx.data.train.labels[idx]
    computer = MapComputer(teacher, IGSettings(), torch.device("cpu"), input_size=x.shape[-1])
    with torch.no_grad():
        gap = computer.forward(x).gather(1, y[:, None])[:, 0] - computer.forward(
            baselines(computer.teacher, x, "zeros")).gather(1, y[:, None])[:, 0]

    attributions(computer, x[:2], y[:2], 8, "gausslegendre")  # warm-up (oneDNN primitives)
    ref_attr, _, _ = attributions(computer, x, y, 50, "gausslegendre")
    fine_attr, _, _ = attributions(computer, x, y, 256, "gausslegendre")
    ref, fine = ref_attr.abs().sum(1), fine_attr.abs().sum(1)
    rows = []
    for method in ("gausslegendre", "riemann_trapezoid"):
        for n in STEPS:
            attr, delta, sec = attributions(computer, x, y, n, method)
            m = attr.abs().sum(1)
            completeness = (delta.abs() / gap.abs().clamp_min(1e-6)).median()
            rows.append({"method": method, "steps": n, "vs_50_gausslegendre": compare(m, ref),
                         "vs_256_gausslegendre": compare(m, fine),
                         "completeness_rel_err_median": round(float(completeness), 5),
                         "seconds_per_image": round(sec / len(x), 4)})
            c = rows[-1]["vs_50_gausslegendre"]
            print(f"{method:>18} {n:>3} steps: rel L1 {c['rel_l1_mean']:.4f}, overlay err "
                  f"{c['overlay_abs_err_mean']:.4f} (p99 {c['overlay_abs_err_p99']:.4f}), r "
                  f"{c['pearson_mean']:.5f}, completeness {rows[-1]['completeness_rel_err_median']:.4f}, "
                  f"{1 / rows[-1]['seconds_per_image']:.1f} img/s")
    doc = {
        "benchmark": "ig_convergence",
        "command": f"python benchmarks/ig_convergence.py --run {args.run} --out {args.out}",
        "teacher": {"arch": meta["arch"], "run": str(run), "test_acc": meta.get("training", {}).get("last_epoch", {}).get("test_acc")},
        "images": len(idx), "input_size": int(x.shape[-1]), "baseline": "zeros (normalised space)",
        "target": "label", "rows_per_forward": computer.rows,
        "reference": "50-step Gauss-Legendre (the papers' setting); 256-step Gauss-Legendre as ground truth",
        "ref_50_vs_256": compare(ref, fine),
        "results": rows,
        "machine": capture(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
