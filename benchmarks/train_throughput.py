"""Training throughput on this CPU as images/s and as a share of its measured FP32 peak.

For the teacher `mbv2_cifar` (the papers'), the dense `resnet20_cifar_w2` (the CIFAR-10
benchmark's teacher) and the students `--speedup 10` picks (resnet8_cifar, resnet8_cifar_w0.75),
at 32 px: forward + backward + optimizer step of edgekd's training step, with cross-entropy
and with KD from a live teacher (`mbv2_cifar`) or from cached soft labels, in the variants the
engine can take: contiguous FP32 (before), channels-last, the fused optimizer step, bf16
autocast where the CPU has native bf16, and `torch.compile` (inductor, with --compile). The
last variant this CPU runs is the engine's path (after).

The peak is a 4096 x 4096 FP32 matrix product with torch on the same threads. FLOPs per
image are 3 x 2 x MACs (the backward costs about twice the forward). Variants run in
alternating blocks, each its best of a few timed steps after warm-up steps. Also: the
accuracy of a short digits training in FP32 and in bf16 (3 seeds), since a faster precision
is only worth it when it learns as well. Saves JSON with the CPU's model and flags.

    python benchmarks/train_throughput.py [--out benchmarks/results/train_throughput.json]

"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from deploy.envinfo import capture
from edgekd.distill.losses import DistillObjective, KDLoss
from edgekd.models import create_model
from edgekd.models.profile import count_macs
from edgekd.train.precision import cpu_flags, cpu_native_bf16

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("mbv2_cifar", "resnet20_cifar_w2", "resnet8_cifar", "resnet8_cifar_w0.75")
VARIANTS = {  # name: (channels_last, bf16, fused, compile); the last one this CPU runs is "after"
    "fp32 contiguous (before)": (False, False, False, False),
    "fp32 channels-last": (True, False, False, False),
    "fp32 channels-last fused": (True, False, True, False),
    "bf16 channels-last": (True, True, False, False),
    "bf16 channels-last fused": (True, True, True, False),
}


def gemm_peak(threads: int, n: int = 4096, repeats: int = 5) -> dict:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {}
    # bf16 only where the CPU computes it: emulated, one product takes minutes on one thread
    for dtype in (torch.float32, torch.bfloat16) if cpu_native_bf16() else (torch.float32,):
        x, y = a.to(dtype), b.to(dtype)
        x @ y
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            x @ y
            best = min(best, time.perf_counter() - t0)
        out[str(dtype).removeprefix("torch.")] = round(2 * n**3 / best / 1e9, 1)
    return {"gflops": out, "n": n, "threads": threads}


def step_fn(name: str, variant: tuple, batch: int, loss: str, teacher: torch.nn.Module | None):
    cl, bf16, fused, compiled = variant
    torch.manual_seed(0)
    model = create_model(name, 10)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, fused=fused or None)
    net = torch.compile(model) if compiled else model
    x = torch.rand(batch, 3, 32, 32)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    cached = torch.randn(batch, 10)
    kd = DistillObjective(teacher, [(0.5, KDLoss(4.0))], 0.5) if loss == "kd live" else None
    recorded = DistillObjective(None, [(0.5, KDLoss(4.0))], 0.5, recorded=lambda idx: cached)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if loss == "ce":
                value = F.cross_entropy(net(x), y)
            elif loss == "kd live":
                value, _ = kd(net, x, y, None)
            else:
                value, _ = recorded(net, x, y, None)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return step, count_macs(model, 32)


def measure(steps: dict, warmup: int = 2, timed: int = 4, rounds: int = 2) -> dict:
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):  # alternate the variants in blocks
        for key, (fn, _) in steps.items():
            for _ in range(warmup):
                fn()
            for _ in range(timed):
                t0 = time.perf_counter()
                fn()
                best[key] = min(best[key], time.perf_counter() - t0)
    return best


def digits_accuracy(seeds: int = 3) -> dict:
    """Test top-1 of resnet8_cifar_w0.75 trained 8 epochs on the digits at 32 px, FP32 vs bf16."""
    from edgekd.config import TrainConfig
    from edgekd.data import load_dataset
    from edgekd.data.augment import AugmentSettings
    from edgekd.train import engine

    data = load_dataset("digits", 32)
    out = {}
    for amp in ("off", "bf16"):
        accs = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = create_model("resnet8_cifar_w0.75", 10, data.mean, data.std)
            cfg = TrainConfig(epochs=8, batch_size=64, lr=2e-3, schedule="onecycle", amp=amp)
            tmp = Path(f"/tmp/edgekd-throughput-{amp}-{seed}")
            tmp.mkdir(exist_ok=True)
            r = engine.train(model, data.train, data.val, data.test, cfg, stage="student", seed=seed,
                             device=torch.device("cpu"), objective=engine.CrossEntropy(),
                             transform=engine.StandardAugment(AugmentSettings(4, False)),
                             state_path=tmp / "s.pt", metrics_path=tmp / "m.jsonl", settings_key=amp)
            accs.append(round(r.last["test_acc"], 2))
        out["fp32" if amp == "off" else amp] = accs
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_throughput.json")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile)")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    peak = gemm_peak(threads)
    fp32_peak = peak["gflops"]["float32"]
    print(f"FP32 peak {fp32_peak} GFLOPS, bf16 {peak['gflops'].get('bfloat16', 'not native')} GFLOPS "
          f"({threads} threads)", flush=True)
    variants = dict(VARIANTS)
    if not cpu_native_bf16():
        variants = {k: v for k, v in variants.items() if not v[1]}
    if args.compile:
        variants["bf16 channels-last compiled"] = (True, bool(cpu_native_bf16()), False, True)
    teacher = create_model("mbv2_cifar", 10).eval()
    rows = []
    for name in args.models.split(","):
        losses = ["ce"] if name in ("mbv2_cifar", "resnet20_cifar_w2") else ["ce", "kd live", "kd cached"]
        for loss in losses:
            steps = {}
            for vname, v in variants.items():
                t = copy.deepcopy(teacher).to(memory_format=torch.channels_last) if v[0] else teacher
                try:
                    steps[vname] = step_fn(name, v, args.batch, loss, t)
                except Exception as e:  # noqa: BLE001 - a variant that cannot run is reported
                    print(f"{name} {loss} {vname}: failed ({type(e).__name__}: {e})")
            t0 = time.perf_counter()
            best = measure(steps)
            for vname, seconds in best.items():
                macs = steps[vname][1]
                ips = args.batch / seconds
                gflops = 6 * macs * ips / 1e9
                row = {"model": name, "loss": loss, "variant": vname, "batch": args.batch,
                       "images_per_s": round(ips, 1), "gflops": round(gflops, 1),
                       "pct_fp32_peak": round(100 * gflops / fp32_peak, 1), "macs": macs}
                rows.append(row)
                print(f"{name:20s} {loss:9s} {vname:34s} {ips:8.1f} img/s {row['pct_fp32_peak']:5.1f} % "
                      f"of FP32 peak", flush=True)
            print(f"  ({time.perf_counter() - t0:.0f} s)")
    # Batch size against throughput for the budget student, in the engine's best variant.
    best_variant = list(variants)[-1]
    sweep = {}
    for batch in (32, 64, 128, 256):
        steps = {batch: step_fn("resnet8_cifar", variants[best_variant], batch, "kd cached", None)}
        sweep[batch] = round(batch / measure(steps)[batch], 1)
    print(f"resnet8_cifar kd cached, {best_variant}: images/s by batch {sweep}")
    accuracy = digits_accuracy() if cpu_native_bf16() else None
    cpu = capture().get("cpu") or {}
    doc = {"benchmark": "train_throughput", "command": "python benchmarks/train_throughput.py "
           + " ".join(sys.argv[1:]), "torch": torch.__version__, "peak": peak, "rows": rows,
           "before": list(variants)[0], "after": best_variant,
           "student_batch_sweep": {"model": "resnet8_cifar", "variant": best_variant, "images_per_s": sweep},
           "digits_accuracy_fp32_vs_bf16": accuracy,
           "machine": {"cpu": cpu.get("model"), "cores": cpu.get("usable_cores"),
                       "flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "bf16")))},
           "notes": "best of 4 timed steps after 2 warm-up, 2 alternating rounds; FLOPs = 6 x MACs"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    if accuracy:
        print("digits top-1 fp32 vs bf16:", accuracy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
