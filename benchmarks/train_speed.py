"""Training speed of the workstation path on one device: `edgekd compress` on digits, then the
images per second of each training stage from the run's metrics.jsonl (median over epochs,
the first left out: it includes compilation and allocator warm-up). Saves JSON with the
machine it ran on.

    python benchmarks/train_speed.py --device cuda --out benchmarks/results/train_speed_cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine()}
    try:
        from deploy.envinfo import cpu_model

        info["cpu"] = cpu_model() or info["cpu"]
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def stage_speeds(metrics: Path) -> dict:
    by_stage: dict[str, list[float]] = {}
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if "images_per_s" in row:
            by_stage.setdefault(row["stage"], []).append(float(row["images_per_s"]))
    return {stage: {"epochs": len(v), "images_per_s_median": round(statistics.median(v[1:] or v), 1),
                    "images_per_s_first_epoch": round(v[0], 1)} for stage, v in by_stage.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="more edgekd compress arguments (after --extra)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "edgekd.cli", "compress", "--device", args.device,
               "--out", str(run), *args.extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        doc = {"benchmark": "train_speed", "device": args.device, "command": cmd[2:],
               "wall_s": round(wall, 1), "stages": stage_speeds(run / "metrics.jsonl"),
               "machine": machine(args.device)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["stages"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
