"""A reduced CIFAR-10 ablation that fits a 2-core CPU: methods x seeds with one shared teacher.

Extracts a stratified subset of the shared CIFAR-10 JPEG copy (../shared/data/cifar10-jpeg.zip,
the first N images of each class in file-name order) into an ImageFolder tree, runs
`edgekd experiment ablation` on it (resumable: rerun the same command after an interruption),
and copies the table, JSON and plot to benchmarks/results/cifar10_ablation.{md,json,png} with
the command and the machine. The papers' numbers come from the full data set and 100 epochs;
this is a short schedule on a tenth of it, so compare methods with each other, not with them.

    python benchmarks/cifar10_ablation.py [--work /tmp/edgekd-cifar10-ablation]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from deploy.envinfo import capture

ROOT = Path(__file__).resolve().parent.parent
ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
RESULTS = ROOT / "benchmarks" / "results"
METHODS = "student,kd,kd+ig,indistill+kd,indistill+kd+ig"


def extract(zip_path: Path, dest: Path, n_train: int, n_test: int) -> Path:
    """The first `n_train` / `n_test` JPEGs per class (sorted names) as dest/{train,test}/<class>/."""
    marker = dest / f".complete-{n_train}-{n_test}"
    if marker.exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    with zipfile.ZipFile(zip_path) as z:
        by_dir: dict[str, list[str]] = {}
        for name in sorted(z.namelist()):
            if name.endswith(".jpg"):
                by_dir.setdefault(name.rsplit("/", 1)[0], []).append(name)
        for folder, names in by_dir.items():
            n = n_train if folder.startswith("train/") else n_test
            out = dest / folder
            out.mkdir(parents=True, exist_ok=True)
            for name in names[:n]:
                (out / Path(name).name).write_bytes(z.read(name))
    marker.touch()
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", type=Path, default=ZIP)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekd-cifar10-ablation"))
    ap.add_argument("--train-per-class", type=int, default=200)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6,
                    help="student epochs, the InDistill warm-up's (1 per layer) included")
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--ig-steps", type=int, default=16)
    ap.add_argument("--indistill-a", type=int, default=1, help="warm-up epochs of each layer: a + b*l, l from 1")
    ap.add_argument("--indistill-b", type=int, default=0, help="extra epochs per deeper layer")
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    if not args.zip.is_file():
        print(f"error: {args.zip} is missing: pass --zip PATH to the CIFAR-10 JPEG zip", file=sys.stderr)
        return 2
    data = extract(args.zip, args.work / "data", args.train_per_class, args.test_per_class)
    exp = args.work / "experiment"
    cmd = [sys.executable, "-m", "edgekd", "experiment", "ablation",
           "--dataset", f"imagefolder:{data}", "--methods", args.methods, "--seeds", str(args.seeds),
           "--epochs", str(args.epochs), "--teacher-epochs", str(args.teacher_epochs),
           "--set", f"ig.steps={args.ig_steps}", "--set", f"distill.indistill_a={args.indistill_a}",
           "--set", f"distill.indistill_b={args.indistill_b}", "--jobs", str(args.jobs), "--out", str(exp)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = json.loads((exp / "ablation.json").read_text())
    doc["benchmark"] = "cifar10_ablation"
    doc["command"] = "python benchmarks/cifar10_ablation.py " + " ".join(sys.argv[1:])
    doc["edgekd_command"] = " ".join(cmd[2:]).replace(str(args.work), "$WORK")
    doc["data"] = {"source": "CIFAR-10 JPEG copy (../shared/data/cifar10-jpeg.zip)",
                   "train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
                   "selection": "first images per class in file-name order; 10 % of train held out for val"}
    doc["wall_time_s"] = round(wall, 1)
    doc["machine"] = capture()
    (RESULTS / "cifar10_ablation.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = (exp / "ablation.md").read_text()
    header = (f"# Reduced CIFAR-10 ablation\n\n`{doc['command'].strip()}`\n\n"
              f"Runs `{doc['edgekd_command']}` on {args.train_per_class} training and "
              f"{args.test_per_class} test images per class. Machine: "
              f"{(doc['machine'].get('cpu') or {}).get('model')}, "
              f"{(doc['machine'].get('cpu') or {}).get('usable_cores')} cores; "
              f"{wall / 60:.0f} min wall.\n\n")
    (RESULTS / "cifar10_ablation.md").write_text(header + md)
    if (exp / "ablation.png").exists():
        shutil.copyfile(exp / "ablation.png", RESULTS / "cifar10_ablation.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
