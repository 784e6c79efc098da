"""The InDistill warm-up as a share of a short epoch budget, on a small image folder.

A 7-class, 24 px folder from the CIFAR-10 JPEG copy (the first 7 classes, 500 training and
100 test images each), one teacher, and a 15-epoch student budget, 3 seeds each:
- `kd`: 15 epochs of distillation;
- `indistill+kd+ig` with the default share (0.2 of 15: a 3-epoch warm-up, 12 of distillation);
- `indistill+kd+ig` with the papers' absolute curriculum (3 + 4 + 5 = 12 warm-up epochs, 3 left).
Saves benchmarks/results/warmup_share.{json,md} with the machine; resumable (rerun the command).

    python benchmarks/warmup_share.py [--work /tmp/edgekd-warmup-share]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from cifar10_ablation import ZIP

from deploy.envinfo import capture

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def extract(zip_path: Path, dest: Path, classes: int, n_train: int, n_test: int) -> Path:
    marker = dest / f".complete-{classes}-{n_train}-{n_test}"
    if marker.exists():
        return dest
    with zipfile.ZipFile(zip_path) as z:
        by_dir: dict[str, list[str]] = {}
        for name in sorted(z.namelist()):
            if name.endswith(".jpg"):
                by_dir.setdefault(name.rsplit("/", 1)[0], []).append(name)
        keep = sorted({d.split("/", 1)[1] for d in by_dir})[:classes]
        for folder, names in by_dir.items():
            split, cls = folder.split("/", 1)
            if cls not in keep:
                continue
            out = dest / folder
            out.mkdir(parents=True, exist_ok=True)
            for name in names[: n_train if split == "train" else n_test]:
                (out / Path(name).name).write_bytes(z.read(name))
    marker.touch()
    return dest


def ablation(out: Path, methods: str, *extra: str) -> dict:
    subprocess.run([sys.executable, "-m", "edgekd", "experiment", "ablation", "--methods", methods,
                    "--seeds", "3", "--epochs", "15", "--student", "resnet8_cifar_w0.5",
                    "--set", "ig.steps=8", *extra, "--out", str(out)], check=True)
    return json.loads((out / "ablation.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", type=Path, default=ZIP)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekd-warmup-share"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = extract(args.zip, args.work / "data", 7, 500, 100)
    common = ["--dataset", f"imagefolder:{data}", "--set", "data.input_size=24"]
    share = ablation(args.work / "share", "kd,indistill+kd+ig", *common,
                     "--teacher-arch", "resnet20_cifar", "--teacher-epochs", "15")
    teacher = args.work / "share" / "teacher" / "teacher.pt"
    paper = ablation(args.work / "paper", "indistill+kd+ig", *common, "--teacher", str(teacher),
                     "--teacher-arch", "resnet20_cifar",
                     "--set", "distill.indistill_share=none")
    rows = share["table"]["rows"] + [{**r, "label": r["label"] + " (3 + 4 + 5)"} for r in paper["table"]["rows"]]
    teacher_acc = json.loads((args.work / "share" / "teacher" / "state.json").read_text())["teacher"]["info"]
    doc = {"benchmark": "warmup_share", "command": "python benchmarks/warmup_share.py " + " ".join(sys.argv[1:]),
           "data": "first 7 CIFAR-10 classes, 500 train (450 after the val hold-out) / 100 test each, 24 px",
           "teacher": {"arch": "resnet20_cifar", "epochs": 15,
                       "test_acc": teacher_acc["last_epoch"]["test_acc"]},
           "student": "resnet8_cifar_w0.5", "epochs": 15, "rows": rows,
           "wall_time_s": round(time.perf_counter() - t0, 1), "machine": capture()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "warmup_share.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["# InDistill warm-up as a share of 15 epochs", "", f"`{doc['command'].strip()}`", "",
             f"Data: {doc['data']}. Teacher `resnet20_cifar` at {doc['teacher']['test_acc']:.2f} %; "
             f"student `resnet8_cifar_w0.5`, 15 epochs, 3 seeds. Machine: "
             f"{(doc['machine'].get('cpu') or {}).get('model')}.", "",
             "| method | epochs | test top-1 mean ± sd | p vs kd |", "|---|---|---|---|"]
    kd = next(r for r in rows if r["label"] == "kd")["values"]
    from edgekd.experiment.stats import welch_p

    for r in rows:
        m = r["last_epoch"]
        p = welch_p(r["values"], kd) if r["label"] != "kd" else None
        warm = f" ({r['warmup_epochs']} warm-up)" if r.get("warmup_epochs") else ""
        lines.append(f"| {r['label']} | {r['epochs']}{warm} | {m['mean']:.2f} ± {m['sd']:.2f} | "
                     f"{'—' if p is None else f'{p:.3f}'} |")
    (RESULTS / "warmup_share.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
