"""The papers' latency claim on this machine: "inference time falls from 140 ms to 13 ms"
(10.8x, per batch of 64 CIFAR-10 images) for the MobileNetV2 teacher (mbv2_cifar) against its
4.1x truncated student (mbv2_cifar_trunc5), measured with deploy/'s harness exactly as
`edgekd bench --compare` does: PyTorch eager and ONNX Runtime (CPU), FP32 and static INT8
(QDQ, calibration/ort_int8), batch 64 (the papers' unit) and batch 1, next to the MAC ratio.

The models are freshly initialised (seeded), not trained: dense FP32 and INT8 kernels take
the same time whatever the weight values, and the INT8 models are calibrated on real images
all the same. Inputs are real CIFAR-10 test images from ../shared/data/cifar10-jpeg.zip
(uniform noise when it is absent; the JSON says which). Results go to
benchmarks/results/latency_claim.json with the machine they ran on.

    python benchmarks/latency_claim.py [--threads N] [--min-s 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from calibration import quantize_static_qdq  # noqa: E402
from deploy.bench import write_json_atomic  # noqa: E402
from deploy.harness import MeasureSettings  # noqa: E402
from edgekd.bench.measure import compare_run  # noqa: E402
from edgekd.export.onnx import export_onnx  # noqa: E402
from edgekd.models.registry import create_model  # noqa: E402
from edgekd.runfiles import save_npy  # noqa: E402
from edgekd.train import checkpoint  # noqa: E402

TEACHER, STUDENT = "mbv2_cifar", "mbv2_cifar_trunc5"
CIFAR_ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)  # docs/methods.md: teacher normalisation
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "latency_claim.json"


def cifar_test_images(count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """`count` CIFAR-10 test images (N, 3, 32, 32) float32 in [0, 1], classes in turn, with
    labels; uniform noise when the shared copy is absent."""
    if not CIFAR_ZIP.is_file():
        rng = np.random.default_rng(0)
        return (rng.random((count, 3, 32, 32), dtype=np.float32), np.arange(count) % 10,
                f"uniform noise ({CIFAR_ZIP} is absent)")
    from PIL import Image

    with zipfile.ZipFile(CIFAR_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg") and "/test/" in f"/{n}")
        by_class = {c: [n for n in names if f"test/{c}/" in n] for c in CLASSES}
        images, labels = [], []
        for i in range(count):
            label = i % len(CLASSES)
            with z.open(by_class[CLASSES[label]][i // len(CLASSES)]) as f:
                img = Image.open(io.BytesIO(f.read())).convert("RGB")
            images.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), f"CIFAR-10 test JPEGs ({CIFAR_ZIP.name})"


def build_run(folder: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    """A run directory as `edgekd bench --compare` reads it: checkpoints, ONNX and INT8 ONNX
    of teacher and student, and the sample images with labels."""
    torch.manual_seed(0)
    quantized = {}
    for role, arch in (("teacher", TEACHER), ("student", STUDENT)):
        model = create_model(arch, len(CLASSES), MEAN, STD).eval()
        checkpoint.save_model(model, folder / f"{role}.pt", arch, CLASSES, input_size=32)
        export_onnx(model, folder / f"{role}.onnx", 32)
        quantized[role] = quantize_static_qdq(folder / f"{role}.onnx", folder / f"{role}.int8.onnx", images)
    save_npy(folder / "samples.npy", images)
    save_npy(folder / "samples_labels.npy", labels)
    return {role: {k: q[k] for k in ("method", "per_channel", "calib_images", "quantized_nodes")}
            for role, q in quantized.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: usable cores)")
    p.add_argument("--images", type=int, default=128, help="real test images fed (default: 128)")
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--min-s", type=float, default=3.0)
    p.add_argument("--min-iters", type=int, default=20)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()

    settings = MeasureSettings(warmup_s=args.warmup_s, warmup_iters=5, min_s=args.min_s,
                               min_iters=args.min_iters, max_s=max(60.0, args.min_s))
    images, labels, source = cifar_test_images(args.images)
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="latency-claim-") as tmp:
        run = Path(tmp)
        int8 = build_run(run, images, labels)
        doc = compare_run(run, [64, 1], args.threads, settings, keep_timings=False,
                          progress=lambda line: print("  " + line, file=sys.stderr, flush=True))
    load_after = os.getloadavg()
    for d in doc["documents"].values():
        d.pop("environment")  # the same machine as the top-level environment
        d["model"]["path"] = os.path.basename(d["model"]["path"])
        d["inputs"]["path"] = os.path.basename(d["inputs"]["path"] or "") or None
    result = {
        "benchmark": "latency_claim",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/latency_claim.py " + " ".join(sys.argv[1:]),
        "teacher_arch": TEACHER, "student_arch": STUDENT,
        "weights": "seeded random initialisation (latency does not depend on the values)",
        "inputs": {"source": source, "count": int(images.shape[0]), "shape": list(images.shape[1:])},
        "int8": int8,
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "wall_s": round(time.perf_counter() - started, 1),
        **{k: v for k, v in doc.items() if k not in ("run", "created", "schema", "schema_version")},
        "compare_schema": doc["schema"],
    }
    write_json_atomic(args.out, result)
    claim = doc["claim"]
    print(f"claimed: {claim['teacher_ms']:.0f} ms -> {claim['student_ms']:.0f} ms per batch of 64 = "
          f"{claim['speedup']:.1f}x; MAC ratio {doc['mac_ratio']:.2f}x; params {doc['param_ratio']:.2f}x")
    cpu = (doc["environment"].get("cpu") or {}).get("model")
    print(f"measured on {cpu}, {doc['threads']} threads (p50 per batch):")
    for r in doc["rows"]:
        prec = r["teacher_precision"] if r["teacher_precision"] == r["student_precision"] else \
            f"{r['teacher_precision']}->{r['student_precision']}"
        print(f"  {r['backend']:<12} {prec:<10} batch {r['batch']:>2}: teacher {r['teacher_p50_ms']:8.2f} ms, "
              f"student {r['student_p50_ms']:8.2f} ms, {r['speedup']:.2f}x "
              f"(95 % CI {r['speedup_ci95'][0]:.2f}-{r['speedup_ci95'][1]:.2f})")
    print("wrote " + args.out)


if __name__ == "__main__":
    main()
