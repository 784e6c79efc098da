"""The run's settings: declared once in `sections` (flag, help, choices, bounds per field),
defaults per data set here, then a YAML file, flags and `--set KEY=VALUE` on top, and the
checks a single field cannot make (`RULES`).

`build_config` is the one way a run's settings are made; config.yaml round-trips through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgekd.config.budget import Budget
from edgekd.config.sections import (
    METHODS,
    NORMS,
    BenchConfig,
    DataConfig,
    DistillConfig,
    ExportConfig,
    IGConfig,
    KDConfig,
    RunConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    parse_methods,
    parse_norm,
)
from edgekd.config.settings import check, flatten, from_dict, get_value, set_value
from edgekd.config.targets import resolve_opset
from edgekd.errors import EdgeKDError

DIGITS_IG_STEPS = 8
DIGITS_INPUT_SIZE = 16
DIGITS_CANDIDATES = ("resnet8_cifar_w0.5", "resnet8_cifar_w0.75", "resnet8_cifar", "resnet14_cifar_w0.5",
                     "resnet20_cifar_w0.5", "mbv2_cifar_d0.25_w0.35", "mbv3_small_cifar_w0.5",
                     "shufflenetv2_cifar_x0.5", "mbv2_cifar_w0.5", "mbv2_cifar_trunc5")


def default_config(dataset: str = "digits") -> RunConfig:
    """Defaults per data set. Digits: sized to finish in minutes on a 2-core laptop CPU."""
    cfg = RunConfig()
    cfg.data.dataset = dataset
    if dataset == "digits":
        # The digits are 8x8 scans: 16x16 keeps every pixel (2x upsampling) at a quarter of
        # the MACs of 32x32, which is what fits the whole pipeline in the 6-minute budget on
        # a slow 2-core AVX2 host too (docs/decisions.md; benchmarks/compress_default.py).
        cfg.data.input_size = DIGITS_INPUT_SIZE
        # The teacher gets 10 epochs. The student's 26 include the InDistill warm-up's fifth
        # (1 + 2 + 2), leaving 21 for distillation: the budget's student (a small dense ResNet
        # here) trains in a third of the time per epoch the papers' truncated one did, and
        # needs the epochs (5 gave 87 %, 14 the teacher's accuracy; docs/decisions.md).
        for t, epochs in ((cfg.teacher.train, 10), (cfg.student.train, 26)):
            t.epochs, t.schedule, t.lr = epochs, "onecycle", 2e-3
            t.bn_recalibration = 256  # a fifth of the 1,257 training images
        # 50 IG steps would cost more than the teacher's training here; 8 Gauss-Legendre
        # steps approximate the 50-step maps at 4.5x the speed
        # (benchmarks/results/ig_convergence_digits16.json; docs/decisions.md).
        cfg.ig.steps = DIGITS_IG_STEPS
        # The student is chosen by latency: 10x faster than the teacher at batch 64 on this
        # machine, from a short list spanning the families so that the selection costs
        # seconds, not the minute all of them take (docs/latency-budgets.md).
        cfg.student.arch = None
        cfg.budget.speedup = 10.0
        cfg.budget.candidates = list(DIGITS_CANDIDATES)
    else:
        # CIFAR-scale: the papers' Adam lr 1e-3, batch 64; cosine instead of no schedule.
        cfg.teacher.train.epochs = 30
        cfg.student.train.epochs = 30
    return cfg


def _budget_flag(b: Budget) -> str:
    return f"--latency-budget {b.latency_ms:g}" if b.latency_ms is not None else f"--speedup {b.speedup:g}"


@dataclass(frozen=True)
class Rule:
    """A check across settings: `broken(cfg)` true means `message(cfg)` is the error."""

    broken: Callable[[RunConfig], bool]
    message: Callable[[RunConfig], str]


# Terms whose feature maps must match the teacher's resolution (InDistill pools the teacher's
# map down to a student at a lower input size: edgekd.distill.indistill).
_SPATIAL = frozenset({"at", "fitnet"})
_FEATURE_TERMS = frozenset({"at", "fitnet", "pkt"})
_TEACHER_TERMS = frozenset({"kd"}) | _FEATURE_TERMS
RULES = (
    Rule(lambda c: c.student.arch is not None and c.budget.active,
         lambda c: f"--student {c.student.arch} and {_budget_flag(c.budget)} both choose the student: "
                   "drop one of them"),
    Rule(lambda c: c.student.arch is None and not c.budget.active,
         lambda c: "no student: pass --student NAME (see `edgekd models`), or a --latency-budget / "
                   "--speedup that chooses one"),
    Rule(lambda c: c.budget.active and not c.export.enabled,
         lambda c: "a latency budget is checked on the exported student: keep export.enabled"),
    Rule(lambda c: c.bench.enabled and not c.export.enabled,
         lambda c: "bench.enabled needs export.enabled (latency is measured on the ONNX files)"),
    Rule(lambda c: c.export.int8_qat_epochs > 0 and not c.export.int8,
         lambda c: "--qat-epochs fine-tunes the student for INT8: add --int8"),
    Rule(lambda c: (c.export.int8 or c.export.int8_teacher) and not c.export.enabled,
         lambda c: "export.int8 needs export.enabled (INT8 is made from the ONNX export)"),
    Rule(lambda c: c.distill.aux_teacher is not None and "indistill" not in c.methods,
         lambda c: "distill.aux_teacher is used by the InDistill warm-up: add indistill to the method"),
    Rule(lambda c: c.distill.indistill_a + c.distill.indistill_b < 1,
         lambda c: "layer l (from 1) warms up for distill.indistill_a + distill.indistill_b * l epochs: "
                   "use indistill_a >= 0, indistill_b >= 0 and a + b >= 1"),
    Rule(lambda c: c.student.input_size is not None and bool(_SPATIAL & set(c.methods)),
         lambda c: f"--student-input-size: {', '.join(sorted(_SPATIAL & set(c.methods)))} compare feature "
                   "maps of the teacher's spatial size; use kd, ig, pkt or indistill, or drop --student-input-size"),
    Rule(lambda c: c.distill.soft_labels == "cached" and bool(_FEATURE_TERMS & set(c.methods)),
         lambda c: f"--soft-labels cached records the teacher's logits only; "
                   f"{', '.join(sorted(_FEATURE_TERMS & set(c.methods)))} compare feature maps: "
                   "use --soft-labels live (or auto)"),
    Rule(lambda c: c.distill.soft_labels == "cached" and not any(m in _TEACHER_TERMS for m in c.methods),
         lambda c: f"--soft-labels cached: method {c.method} uses no teacher: drop --soft-labels"),
    Rule(lambda c: c.teacher.finetune_epochs > 0 and not c.teacher.checkpoint,
         lambda c: "--teacher-finetune-epochs fine-tunes a given teacher: pass --teacher FILE or "
                   "pretrained weights (e.g. torchvision:resnet18.IMAGENET1K_V1)"),
)


def validate(cfg: RunConfig) -> None:
    """Every field against its declaration, then the rules across fields: the first problem
    is one EdgeKDError that names the fix."""
    check(cfg)
    cfg.budget.check_one_kind()
    resolve_opset(cfg.export.target, cfg.export.opset)
    for rule in RULES:
        if rule.broken(cfg):
            raise EdgeKDError(rule.message(cfg))


def config_from_dict(data: dict) -> RunConfig:
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def apply_override(cfg: RunConfig, dotted: str, value: Any) -> None:
    """Set `a.b.c` on the config, converting the value to the field's type."""
    set_value(cfg, dotted, value)


def _recipe(name: str) -> dict[str, Any] | None:
    from edgekd.recipes import RECIPES

    if name not in RECIPES:
        raise EdgeKDError(f"unknown recipe {name!r}: use one of {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_values(name: str, dataset: str = "digits") -> dict[str, Any]:
    """The value of every recipe key under recipe `name` (`edgekd`: the data set's defaults)."""
    from edgekd.recipes import RECIPE_KEYS

    values = _recipe(name)
    if values is None:
        base = default_config(dataset)
        return {k: get_value(base, k) for k in RECIPE_KEYS}
    return dict(values)


def recipe_deviations(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Recipe keys whose value in `cfg` differs from the recipe's: {key: {recipe, value}}."""
    out = {}
    for key, want in recipe_values(cfg.recipe, cfg.data.dataset).items():
        have = get_value(cfg, key)
        if have != want:
            out[key] = {"recipe": want, "value": have}
    return out


def describe_recipe(cfg: RunConfig, limit: int | None = None,
                    deviations: dict | None = None) -> str:
    """'paper (deviations: student.train.epochs 100 -> 3, ...)' for headers and logs."""
    dev = recipe_deviations(cfg) if deviations is None else deviations
    if not dev:
        return f"{cfg.recipe} (no deviations)"
    items = [f"{k} {v['recipe']} -> {v['value']}" for k, v in dev.items()]
    if limit is not None and len(items) > limit:
        items = items[:limit] + [f"{len(items) - limit} more"]
    return f"{cfg.recipe} (deviations: {', '.join(items)})"


def recipe_record(cfg: RunConfig) -> dict[str, Any]:
    """The recipe as config.yaml, report.json and experiment documents record it."""
    dev = recipe_deviations(cfg)
    return {"name": cfg.recipe, "deviations": dev, "summary": describe_recipe(cfg, deviations=dev)}


# A flag's value that also switches another setting on (flags only: a file states both).
IMPLIED = (
    ("budget.precision", lambda v: v == "int8", "export.int8", True),
    ("export.int8_qat_epochs", lambda v: bool(v), "export.int8", True),
)
BUDGET_KINDS = ("budget.latency_ms", "budget.speedup")


def build_config(
    config_file: str | Path | None = None,
    dataset: str | None = None,
    overrides: dict[str, Any] | None = None,
    sets: tuple[str, ...] | list[str] = (),
    recipe: str | None = None,
) -> RunConfig:
    """Defaults for the data set < recipe < YAML file (a run's config.yaml works) < options
    (`overrides`: dotted key -> value, None = not given) < KEY=VALUE. The recipe is `recipe`,
    else the file's, else `edgekd`. A budget given as an option replaces the data set's
    default student and the other kind of budget."""
    raw: dict = {}
    if config_file:
        p = Path(config_file)
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise EdgeKDError(f"config file {p} not found: check the --config path") from None
        except yaml.YAMLError as e:
            raise EdgeKDError(f"config file {p} is not valid YAML ({type(e).__name__}): fix its syntax") from None
        if not isinstance(raw, dict):
            raise EdgeKDError(f"config file {p} must hold a mapping of settings")
        raw = raw.get("settings", raw)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    dataset = dataset or given.pop("data.dataset", None)
    recipe = recipe or given.pop("recipe", None)
    file_dataset = (raw.get("data") or {}).get("dataset") if isinstance(raw.get("data"), dict) else None
    name = recipe or raw.get("recipe") or "edgekd"
    cfg = default_config(dataset or file_dataset or "digits")
    cfg.recipe = str(name)
    for dotted, value in recipe_values(cfg.recipe, cfg.data.dataset).items():
        apply_override(cfg, dotted, value)
    for dotted, value in flatten(raw):
        if dotted != "recipe":
            apply_override(cfg, dotted, value)
    if dataset:
        cfg.data.dataset = dataset
    if any(k in given for k in BUDGET_KINDS):
        cfg.budget.latency_ms = cfg.budget.speedup = None
        if "student.arch" not in given:
            cfg.student.arch = None
    for key, when, implied, value in IMPLIED:
        if key in given and when(given[key]):
            given.setdefault(implied, value)
    for dotted, value in given.items():
        apply_override(cfg, dotted, value)
    if "student.arch" in given and any(k in given for k in BUDGET_KINDS):
        raise EdgeKDError(RULES[0].message(cfg))  # both asked for on the command line
    for item in sets:
        if "=" not in item:
            raise EdgeKDError(f"--set {item!r}: use KEY=VALUE, e.g. --set student.train.lr=0.01")
        k, v = item.split("=", 1)
        if k.strip() == "recipe":
            raise EdgeKDError(f"--set {item!r}: a recipe sets many keys; choose it with --recipe {v.strip()}")
        apply_override(cfg, k.strip(), v.strip())
    _named_student_wins(cfg)
    validate(cfg)
    return cfg


def _named_student_wins(cfg: RunConfig) -> None:
    """A student named anywhere (a file, --student, --set) replaces the data set's default
    budget when the budget was left as it is; a student and a budget both asked for stay an
    error (RULES)."""
    base = default_config(cfg.data.dataset).budget
    untouched = (cfg.budget.latency_ms, cfg.budget.speedup) == (base.latency_ms, base.speedup)
    if cfg.student.arch is not None and cfg.budget.active and untouched:
        cfg.budget = Budget()


__all__ = ["Budget", "BenchConfig", "DataConfig", "DistillConfig", "ExportConfig", "IGConfig",
           "KDConfig", "METHODS", "NORMS", "RULES", "RunConfig", "StudentConfig", "TeacherConfig",
           "TrainConfig", "apply_override", "build_config", "config_from_dict", "default_config",
           "describe_recipe", "get_value", "parse_methods", "parse_norm", "recipe_deviations",
           "recipe_record", "recipe_values", "validate"]
