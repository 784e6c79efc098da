"""edgekd's device side on aarch64: `edgekd deploy` and `edgekd select --speedup 4` against the
emulated ARM64 device of tools/arm64-device.sh, recorded with what the device says it is.

Emulation (qemu-user) runs aarch64 code 10-100x slower than silicon: the latencies prove the
path works on aarch64 (bundle, verify, ORT's aarch64 wheel, the harness, envinfo), not speed.

    sudo tools/arm64-device.sh up
    python benchmarks/arm64_device.py --run runs/demo --out benchmarks/results/arm64_device.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deploy.envinfo import cpu_model

ALIAS = "edgekd-arm64"
CONFIG = Path(os.environ.get("EDGEKD_ARM64_DIR", Path.home() / ".cache/edgekd/arm64")) / "ssh_config"
# What the first aarch64 runs broke, and how each is handled now.
FOUND = [
    "onnxruntime 1.32's aarch64 wheel segfaults at import under qemu-user: the guest reads the "
    "host's x86 /proc/cpuinfo and ORT's cpuinfo library finds no ARM processor in it; the rig "
    "shows an arm64 kernel's cpuinfo (tools/arm64-device.sh, arm_cpuinfo)",
    "arm64 /proc/cpuinfo has no 'model name': probe reported cpu null (the selection cache key's "
    "CPU); probe and envinfo now share one decoder of implementer/part (deploy.probe.cpu_model_from)",
    "an emulated device looked like silicon: envinfo now reports os.kernel_arch and os.emulated "
    "(/proc/sys/kernel/arch, which qemu-user does not rewrite) with a warning, printed by deploy",
    "emulation is 10-100x slower than silicon: a default deploy (batches 1, 8, 64, default "
    "settings) took 27 min, the teacher 93 s per batch of 64; short settings are used here",
]
# Short measurements: an emulated teacher takes seconds per batch.
QUICK = ["--warmup-s", "0.2", "--warmup-iters", "2", "--min-s", "0.5", "--min-iters", "10"]


def ssh(command: str) -> str:
    return subprocess.run(["ssh", "-F", str(CONFIG), ALIAS, command], check=True,
                          capture_output=True, text=True, timeout=300).stdout.strip()


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return round(time.perf_counter() - t0, 1)


def summary(bench: dict) -> dict:
    return {"created": bench["created"], "models": {
        key: {"accuracy": m["accuracy"], "p50_ms": {str(r["batch_size"]): round(r["latency_ms"]["p50"], 2)
                                                     for r in m["results"]}}
        for key, m in bench["models"].items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished edgekd compress run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("runs/arm64-select"))
    ap.add_argument("--full-bench", type=Path, help="an earlier `edgekd deploy` of the run at the "
                    "default batches and settings (its bench JSON), summarised beside")
    args = ap.parse_args()
    if subprocess.run(["ssh", "-F", str(CONFIG), "-o", "BatchMode=yes", ALIAS, "true"],
                      capture_output=True).returncode != 0:
        sys.exit(f"the ARM64 device is not up: sudo tools/arm64-device.sh up (config {CONFIG})")
    device = {
        "uname_m": ssh("uname -m"),
        "python": ssh("python3 -c 'import platform; print(platform.python_version())'"),
        "onnxruntime": ssh("python3 -c 'import onnxruntime; print(onnxruntime.__version__)'"),
        "numpy": ssh("python3 -c 'import numpy; print(numpy.__version__)'"),
        "distro": ssh(". /etc/os-release && echo $PRETTY_NAME"),
        "kernel_arch": ssh("cat /proc/sys/kernel/arch"),
    }
    ssh_args = ["--target", ALIAS, "--ssh-config", str(CONFIG)]
    deploy_cmd = ["edgekd", "deploy", str(args.run), *ssh_args, "--batch", "1", "--batch", "8", *QUICK]
    deploy_s = timed(deploy_cmd)
    bench = json.loads((args.run / f"bench-{ALIAS}.json").read_text())
    earlier = json.loads(args.full_bench.read_text()) if args.full_bench else None
    select_cmd = ["edgekd", "select", *ssh_args, "--speedup", "4", "--budget-batch", "1",
                  "--input-size", "16", "--budget-precision", "fp32", "--budget-input-sizes", "16",
                  "--candidates", "resnet8_cifar_w0.5,resnet8_cifar,mbv2_cifar_d0.25_w0.35", "--out", str(args.work), "--cache-dir", str(args.work / "cache")]
    if (args.work / "cache").exists():  # measured afresh, not read from an earlier run's cache
        shutil.rmtree(args.work / "cache")
    select_s = timed(select_cmd)
    chosen = json.loads((args.work / "select.json").read_text())
    doc = {
        "benchmark": "arm64_device",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "caveat": "qemu-user emulation on an x86_64 host: figures show the path works on aarch64, "
                  "not how fast aarch64 hardware is",
        "found": FOUND,
        "device": device,
        "envinfo": bench["environment"],
        "deploy": dict(summary(bench), command=deploy_cmd, wall_s=deploy_s),
        "deploy_default_settings": summary(earlier) if earlier else None,
        "select": {"command": select_cmd, "wall_s": select_s, "chosen": chosen["chosen"],
                   "limit_ms": chosen["budget"]["limit_ms"],
                   "candidates": {c["arch"]: {"p50_ms": c["latency_ms"]["p50"], "fits": c["fits"]}
                                  for c in chosen["candidates"]}},
        "host": {"cpu": cpu_model(), "machine": platform.machine(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("device", "select")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
