"""Training recipes: named sets of settings applied over a data set's defaults.

- `edgekd`: the data set's own defaults (`edgekd.config.default_config`): faster schedules
  (one-cycle or cosine), exact BatchNorm statistics, bf16 on CUDA, a validation hold-out.
- `paper`: the IG paper's final setup (docs/methods.md) for teacher and student alike:
  Adam lr 1e-3, no schedule, no weight decay, batch 64, 100 epochs, KD alpha 0.01 at T 2.5, AT
  gamma 0.8, FP32, every training image (no validation hold-out; the last epoch is reported),
  the teacher normalised with the CIFAR-10 statistics and the student fed raw pixels as in
  their code, 50 Gauss-Legendre IG steps, the InDistill warm-up 3 + 4 + 5 epochs whatever the
  budget; the InDistill auxiliary teacher made as in the
  InDistill code (cross-entropy baseline, then PKT) and teaching both stages.

A recipe sets only the keys below; anything set on top of it (`--epochs`, `--set`, a config
file) is allowed and listed as a deviation in config.yaml, report.json and experiment tables.
Pure data: `edgekd.config` applies it.
"""

from __future__ import annotations

_PAPER_TRAIN = {"optimizer": "adam", "lr": 1e-3, "schedule": "constant", "weight_decay": 0.0,
                "batch_size": 64, "epochs": 100, "label_smoothing": 0.0, "amp": "off",
                "bn_recalibration": 0}

PAPER: dict[str, object] = {
    **{f"{role}.train.{k}": v for role in ("teacher", "student") for k, v in _PAPER_TRAIN.items()},
    "teacher.norm": "cifar10",
    "student.norm": "none",
    "kd.alpha": 0.01,
    "kd.temperature": 2.5,
    "distill.at_weight": 0.8,
    "distill.indistill_a": 2,
    "distill.indistill_b": 1,
    "distill.indistill_share": None,
    "distill.aux_method": "pkt",
    "distill.aux_teaches": "both",
    "distill.teacher_input": "clean",
    "data.val_fraction": 0.0,
    "data.train_subset": None,
    "ig.steps": 50,
    "ig.method": "gausslegendre",
    "ig.p": 0.1,
    "ig.blend": 0.5,
    "ig.baseline": "zeros",
    "ig.target": "label",
}

# The keys a recipe speaks for; `edgekd` takes the data set's defaults for each of them.
RECIPE_KEYS: tuple[str, ...] = tuple(PAPER)
RECIPES: dict[str, dict[str, object] | None] = {"edgekd": None, "paper": PAPER}
