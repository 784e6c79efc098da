"""Data larger than memory: peak RSS and training images/s of image folders of 2,000 and 20,000
images at 128 px, decoded into memory vs read per batch from the on-disk store.

    python benchmarks/data_scale.py [--zip ../shared/data/cifar10-jpeg.zip] [--work DIR]
                                    [--sizes 2000,20000] [--steps 40] [--out JSON]

The folders are made from the CIFAR-10 JPEG copy (upscaled to 128 px, 10 classes, 10 % of
them as test/) and decoded once into edgekd's cache. Each measurement then runs in a fresh
process with a warm cache: load the data set, train resnet8_cifar_w0.5 for --steps steps
of batch 64 through edgekd's training loop (the first 5 steps are not timed), and report
the process's peak RSS (ru_maxrss; its reader processes' beside it). Targets (issue 12): the streamed path's peak RSS grows by
less than 20 % from 2k to 20k images; its throughput is within 10 % of the in-RAM path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIZE = 128


def make_folder(zip_path: Path, dest: Path, n: int) -> Path:
    """n CIFAR-10 training JPEGs upscaled to 128 px, 90 % train/ and 10 % test/ per class."""
    from PIL import Image

    if (dest / "done").is_file():
        return dest
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(m for m in z.namelist() if m.endswith(".jpg") and m.startswith("train/"))
        by_class: dict[str, list[str]] = {}
        for m in names:
            by_class.setdefault(m.split("/")[-2], []).append(m)
        per = n // len(by_class)
        for c, members in sorted(by_class.items()):
            for i, m in enumerate(members[:per]):
                split = "test" if i % 10 == 0 else "train"
                out = dest / split / c
                out.mkdir(parents=True, exist_ok=True)
                with z.open(m) as f:
                    Image.open(f).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC).save(
                        out / Path(m).name, quality=90)
    (dest / "done").write_text("")
    return dest


def measure(folder: str, storage: str, steps: int) -> dict:
    """In this process: load, train `steps` steps, report throughput and peak RSS."""
    import torch

    from edgekd.config import TrainConfig
    from edgekd.data import load_dataset
    from edgekd.data.augment import AugmentSettings
    from edgekd.models.registry import create_model
    from edgekd.train import engine

    t0 = time.perf_counter()
    data = load_dataset(f"imagefolder:{folder}", SIZE, storage=storage)
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = create_model("resnet8_cifar_w0.5", data.num_classes, data.mean, data.std)
    times: list[float] = []

    class Stop(Exception):
        pass

    class Clock:
        def on_epoch_start(self, *a): ...
        def on_epoch_end(self, *a): ...

        def on_step(self, stage, step, loss, acc, ips):
            times.append(time.perf_counter())
            if len(times) >= steps:
                raise Stop

    # as many epochs as the steps need (a small set has few steps per epoch), none evaluated
    cfg = TrainConfig(epochs=10**6, batch_size=64, bn_recalibration=0)
    work = Path(folder) / f".bench-{storage}"
    work.mkdir(exist_ok=True)
    try:
        engine.train(model, data.train, data.val, data.test, cfg, stage="bench", seed=0,
                     device=torch.device("cpu"), objective=engine.CrossEntropy(),
                     transform=engine.StandardAugment(AugmentSettings(SIZE // 8, True)),
                     state_path=work / "state.pt", metrics_path=work / "metrics.jsonl",
                     settings_key="bench", callback=Clock(), evaluate_every_epoch=False)
    except Stop:
        pass
    timed = times[5:]
    ips = 64 * (len(timed) - 1) / (timed[-1] - timed[0])
    return {"storage": data.summary()["storage"], "train_images": len(data.train),
            "images_per_s": round(ips, 1), "load_s": round(load_s, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            # the largest child process: on disk, the DataLoader readers (forked, sharing pages)
            "reader_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekd-data-scale"))
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data_scale.json")
    ap.add_argument("--measure", nargs=2, metavar=("FOLDER", "STORAGE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], args.steps)))
        return
    os.environ.setdefault("EDGEKD_CACHE", str(args.work / "cache"))
    from deploy.envinfo import cpu_model

    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        folder = make_folder(args.zip, args.work / f"folder{n}", n)
        print(f"{n} images: decoding into the cache", flush=True)
        subprocess.run([sys.executable, __file__, "--measure", str(folder), "disk", "--steps", "8"],
                       check=True, capture_output=True)  # decodes once; the runs below are warm
        for storage in ("memory", "disk"):
            out = subprocess.run([sys.executable, __file__, "--measure", str(folder), storage,
                                  "--steps", str(args.steps)], check=True, capture_output=True, text=True)
            row = {"images": n, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{n:>6} {storage:<6} {row['images_per_s']:>7.1f} img/s  peak RSS "
                  f"{row['peak_rss_mib']:>7.1f} MiB  load {row['load_s']:.1f} s", flush=True)
    by = {(r["images"], r["storage"]): r for r in rows}
    sizes = sorted({r["images"] for r in rows})
    small, large = sizes[0], sizes[-1]
    growth = {s: round(by[(large, s)]["peak_rss_mib"] / by[(small, s)]["peak_rss_mib"] - 1, 3)
              for s in ("memory", "disk")}
    ratio = round(by[(large, "disk")]["images_per_s"] / by[(large, "memory")]["images_per_s"], 3)
    doc = {
        "benchmark": "data_scale", "input_size": SIZE, "model": "resnet8_cifar_w0.5",
        "batch": 64, "timed_steps": args.steps - 5, "rows": rows,
        "rss_growth": {f"{s}_{small}_to_{large}": g for s, g in growth.items()},
        "disk_vs_memory_throughput_at_largest": ratio,
        "targets": {"disk_rss_growth_below": 0.20, "disk_throughput_ratio_above": 0.90},
        "meets": {"rss": growth["disk"] < 0.20, "throughput": ratio >= 0.90},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": __import__("torch").__version__},
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"RSS growth {small}->{large}: memory {growth['memory']:+.0%}, disk {growth['disk']:+.0%}; "
          f"disk/memory throughput {ratio:.2f}; {args.out}")


if __name__ == "__main__":
    main()
