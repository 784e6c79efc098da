"""Run configuration: dataclasses that round-trip to YAML, validated once at the edge.

`default_config(dataset)` gives the defaults for a data set; a YAML file (`--config`) and CLI
options override them field by field (dotted keys, e.g. `student.train.epochs`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgekd.errors import EdgeKDError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass
class DataConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    input_size: int | None = None  # None: the teacher's native input size
    val_fraction: float = 0.1
    split_seed: int = 0
    train_subset: float | None = None  # stratified fraction of train, for quick runs
    subset_seed: int | None = None  # which stratified subset (None: split_seed); Monte Carlo runs vary it
    augment: str = "auto"  # crop_pad (the papers') | resized_crop | auto: resized_crop from 96 px
    crop_padding: int | None = None  # None: input_size // 8 (4 px at 32x32, as the papers)
    hflip: bool | None = None  # None: the data set's default (off for digits)
    storage: str = "auto"  # auto | memory | disk: decoded pixels in RAM, or read per batch
    # from an on-disk cache (auto: disk above 2 GiB of pixels; README: Your own data)
    skip_bad_images: bool = False  # leave unreadable images out (listed in data.json)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    amp: bool = True  # CUDA only: bf16/fp16 autocast; ignored on CPU
    channels_last: bool = True  # faster on CPU (oneDNN) as well as on CUDA
    bn_recalibration: int = 512  # training images for exact BN statistics each epoch (0: off)


@dataclass
class TeacherConfig:
    arch: str = "mbv2_cifar"
    checkpoint: str | None = None  # None: train the teacher in this run
    # Input normalisation: data | cifar10 | imagenet | none | six numbers MEAN_RGB,STD_RGB.
    # None: a teacher trained here uses the data's statistics, pretrained weights their own
    # metadata, an edgekd checkpoint what it carries; a bare state_dict is refused without
    # one, since a wrong guess silently costs accuracy (README: Your own teacher).
    norm: str | None = None
    finetune_epochs: int = 0  # fine-tune a given teacher on the run's data first (new head)
    finetune_lr: float | None = None  # None: a tenth of teacher.train.lr
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class StudentConfig:
    arch: str | None = "mbv2_cifar_trunc5"  # None: chosen by the latency budget (`budget`)
    norm: str = "data"  # as teacher.norm; the papers' code fed the student raw pixels (`none`)
    # A lower input size than the teacher's: the student downscales the same images inside
    # the model (None: the run's input size; README: Your own teacher and your own data).
    input_size: int | None = None
    # train.epochs counts every student epoch: with indistill the warm-up's come out of it
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class KDConfig:
    alpha: float = 0.5  # weight of the KD term; (1 - alpha) on cross-entropy
    temperature: float = 4.0


@dataclass
class DistillConfig:
    """Weights and layers of the feature terms, and the InDistill warm-up (README: Decisions)."""

    at_weight: float = 0.8  # gamma, the IG paper's best
    at_layer: str | None = None  # STUDENT_PATH[:TEACHER_PATH]; None: PAPERS.md's rule
    pkt_weight: float = 1.0
    fitnet_weight: float = 1.0
    fitnet_layer: str | None = None
    indistill_a: int = 2  # layer l warms up for a + b*l epochs (the InDistill code's 2, 1)
    indistill_b: int = 1
    indistill_layers: list[str] = field(default_factory=list)  # STUDENT_PATH[:TEACHER_PATH]
    indistill_max_layers: int = 3
    indistill_lr: float = 1e-3
    aux_teacher: str | None = None  # a mid-size model distilled from the teacher first,
    # then pruned for the warm-up in its place: bridges a very large capacity gap
    aux_method: str = "kd"  # kd: KD from scratch | pkt: the InDistill code's CE baseline, then PKT
    aux_teaches: str = "both"  # both: warm-up and stage 2 (the paper) | warmup: stage 2 from the teacher
    teacher_input: str = "overlaid"  # the image the teacher's KD/AT targets come from with `ig`:
    # overlaid (the student's own input) | clean (the same crop/flip, no overlay)


@dataclass
class IGConfig:
    """Integrated-gradient maps of the teacher and the overlay augmentation (method `ig`)."""

    p: float = 0.1  # probability of overlaying a training image with its map (the paper's best)
    blend: float = 0.5  # x := (1 - blend) * x + blend * map
    steps: int = 50  # the papers' Captum setting; digits: fewer (README: Decisions)
    method: str = "gausslegendre"  # Captum's quadrature
    target: str = "label"  # label | prediction (the teacher's top-1)
    baseline: str = "zeros"  # zeros in the teacher's normalised space | blur | noise
    dtype: str = "float16"  # float16 | uint8 (with a per-map scale)
    internal_batch_size: int | None = None  # rows per teacher forward; None: from free memory
    chunk_size: int = 256  # images per resumable, checksummed chunk
    cache_dir: str | None = None  # None: RUN/ig/; else maps shared by runs, in a sub-folder
    # named by what made them (experiments set it: one teacher, many runs, one computation)


@dataclass
class ExportConfig:
    enabled: bool = True  # experiments switch it off when only accuracy is wanted
    target: str = "cpu"  # jetson-jp5 | jetson-jp6 | jetson-jp7 | cpu (edgekd.export.targets)
    opset: int | None = None  # None: the target's default; one it cannot parse is refused
    simplify: bool = False  # onnxslim, then the parity check (pip install 'edgekd[simplify]')
    parity_atol: float = 1e-3  # max |logit difference| ONNX vs PyTorch, scaled by logit range
    min_agreement: float = 99.0  # top-1 agreement (%) over the test split
    # INT8 (ONNX Runtime static QDQ) of the student: off by default, since it adds a
    # calibration pass and two evaluations to every run (README: INT8).
    int8: bool = False
    int8_teacher: bool = False  # the teacher too (for teacher.int8 vs student.int8 latency)
    int8_method: str = "minmax"  # minmax | entropy | percentile
    int8_calib_size: int = 256  # stratified training images, seeded by the run's seed
    int8_max_drop: float = 1.0  # accuracy budget in percentage points (test split)
    int8_exclude: list[str] = field(default_factory=list)  # node names / op types kept FP32
    int8_auto_fallback: bool = False  # keep the most sensitive layers FP32 until the drop fits
    int8_reduce_range: bool = False  # 7-bit weights: exact on x86 CPUs without VNNI (README: INT8)
    # Quantization-aware distillation before INT8 (edgekd.export.qat): epochs of fine-tuning
    # with fake quantization and the run's distillation loss; 0: post-training quantization.
    int8_qat_epochs: int = 0
    int8_qat_lr: float | None = None  # None: a tenth of the student's learning rate
    # Who teaches it: `teacher` (the run's method and teacher) or `student` (the FP32 student
    # itself: the INT8 model learns to agree with the model it replaces).
    int8_qat_teacher: str = "teacher"


@dataclass
class BenchConfig:
    enabled: bool = True
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    warmup_s: float = 0.3
    min_s: float = 1.0
    min_iters: int = 10
    threads: int | None = None  # None: all cores


@dataclass
class BudgetConfig:
    """A latency budget on the target that chooses the student (edgekd.selection; README:
    Latency budgets). Off while both latency_ms and speedup are None."""

    latency_ms: float | None = None  # --latency-budget
    speedup: float | None = None  # --speedup: the teacher's measured latency / speedup
    batch: int = 64
    percentile: str = "p50"  # p50 | p90
    precision: str = "fp32"  # fp32 | int8 (needs export.int8)
    margin: float = 0.05  # headroom kept at selection for the final check's noise
    target: str = "local"  # as `edgekd deploy --target`
    backend: str = "onnxruntime"  # onnxruntime | tensorrt
    remote_python: str | None = None
    remote_dir: str | None = None
    ssh_config: str | None = None
    threads: int | None = None  # ONNX Runtime threads on the target (None: its default)
    candidates: list[str] = field(default_factory=list)  # empty: every student family
    select_epochs: int = 0  # > 0: train the top `select_top` fitting candidates this long
    select_top: int = 3

    @property
    def active(self) -> bool:
        return self.latency_ms is not None or self.speedup is not None


@dataclass
class RunConfig:
    recipe: str = "edgekd"  # edgekd (faster defaults) | paper (edgekd.recipes); deviations recorded
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    method: str = "indistill+kd+ig"  # the design card's main job
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    ig: IGConfig = field(default_factory=IGConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


NORMS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),  # PAPERS.md
         "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
         "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}


def parse_norm(value: str | None, what: str = "--teacher-norm"):
    """None | 'data' | (mean, std) from a norm setting; one line naming the fix otherwise."""
    if value is None or value == "data":
        return value
    if value in NORMS:
        return NORMS[value]
    try:
        nums = [float(v) for v in str(value).split(",")]
    except ValueError:
        nums = []
    if len(nums) != 6 or any(v <= 0 for v in nums[3:]) or any(v != v for v in nums):
        raise EdgeKDError(
            f"{what} {value!r}: use data, {', '.join(NORMS)} or six numbers MEAN_R,MEAN_G,MEAN_B,"
            "STD_R,STD_G,STD_B in [0, 1] units with positive stds (imagenet is "
            "0.485,0.456,0.406,0.229,0.224,0.225)")
    return tuple(nums[:3]), tuple(nums[3:])


AUX_METHODS = ("kd", "pkt")
AUX_TEACHES = ("both", "warmup")
TEACHER_INPUTS = ("overlaid", "clean")
METHODS = ("student", "kd", "ig", "at", "pkt", "fitnet", "indistill")
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
IG_TARGETS = ("label", "prediction")
IG_BASELINES = ("zeros", "blur", "noise")
IG_DTYPES = ("float16", "uint8")
INT8_METHODS = ("minmax", "entropy", "percentile")
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
        # a slow 2-core AVX2 host too (README: Decisions, benchmarks/compress_default.py).
        cfg.data.input_size = DIGITS_INPUT_SIZE
        # The teacher gets 10 epochs. The student's 26 include the InDistill warm-up's
        # 3 + 4 + 5, leaving 14 for distillation: the budget's student (a small dense ResNet
        # here) trains in a third of the time per epoch the papers' truncated one did, and
        # needs the epochs (5 gave 87 %, 14 give the teacher's accuracy; README: Defaults).
        for t, epochs in ((cfg.teacher.train, 10), (cfg.student.train, 26)):
            t.epochs, t.schedule, t.lr = epochs, "onecycle", 2e-3
            t.bn_recalibration = 256  # a fifth of the 1,257 training images
        # 50 IG steps would cost more than the teacher's training here; 8 Gauss-Legendre
        # steps approximate the 50-step maps (benchmarks/results/ig_convergence.json) at a
        # sixth of the cost (README: Decisions).
        cfg.ig.steps = DIGITS_IG_STEPS
        # The student is chosen by latency: 10x faster than the teacher at batch 64 on this
        # machine, from a short list spanning the families so that the selection costs
        # seconds, not the minute all of them take (README: Latency budgets).
        cfg.student.arch = None
        cfg.budget.speedup = 10.0
        cfg.budget.candidates = list(DIGITS_CANDIDATES)
    else:
        # CIFAR-scale: the papers' Adam lr 1e-3, batch 64; cosine instead of no schedule.
        cfg.teacher.train.epochs = 30
        cfg.student.train.epochs = 30
    return cfg


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check/convert a YAML or CLI value to the dataclass field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _convert(args[0], value, key)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise EdgeKDError(f"config {key}: expected a list, got {value!r}")
        return [_convert(inner, v, key) for v in value]
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise EdgeKDError(f"config {key}: {value!r} is not a valid {tp.__name__}") from None
    return value


def _from_dict(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise EdgeKDError(f"config {prefix or 'file'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise EdgeKDError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}: valid keys under "
            f"{prefix.rstrip('.') or 'the top level'} are {', '.join(sorted(names))}"
        )
    obj = cls()
    for k, v in data.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            setattr(obj, k, _from_dict(tp, v, f"{prefix}{k}."))
        else:
            setattr(obj, k, _convert(tp, v, prefix + k))
    return obj


def config_from_dict(data: dict) -> RunConfig:
    cfg = _from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def apply_override(cfg: RunConfig, dotted: str, value: Any) -> None:
    """Set `a.b.c` on the config, converting the value to the field's type."""
    parts = dotted.split(".")
    obj = cfg
    for part in parts[:-1]:
        if not hasattr(obj, part):
            raise EdgeKDError(f"unknown config key {dotted}")
        obj = getattr(obj, part)
    name = parts[-1]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        raise EdgeKDError(f"unknown config key {dotted}")
    setattr(obj, name, _convert(typing.get_type_hints(type(obj))[name], value, dotted))


def validate(cfg: RunConfig) -> None:
    """Reject impossible settings with a message naming the fix."""
    from edgekd.data.dataset import parse_dataset_spec
    from edgekd.models.registry import check_name

    parse_dataset_spec(cfg.data.dataset)
    _validate_budget(cfg)
    for role in ("teacher", "student"):
        arch = getattr(cfg, role).arch
        if arch is None and role == "student" and cfg.budget.active:
            continue
        if arch is None and role == "student":
            raise EdgeKDError("no student: pass --student NAME (see `edgekd models`), or a "
                              "--latency-budget / --speedup that chooses one")
        if arch is None:
            raise EdgeKDError("no teacher architecture: pass --teacher-arch NAME (see `edgekd models`)")
        check_name(arch, f"{role} model")
    methods = cfg.method.split("+")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise EdgeKDError(
            f"unknown method {cfg.method!r}: combine terms from {', '.join(METHODS)} with '+'"
        )
    dup = sorted({m for m in methods if methods.count(m) > 1})
    if dup:
        raise EdgeKDError(f"method {cfg.method!r} repeats {', '.join(dup)}: name each term once")
    if "student" in methods and len(methods) > 1:
        raise EdgeKDError(f"method {cfg.method!r}: 'student' (no teacher) cannot combine with other terms")
    if cfg.bench.enabled and not cfg.export.enabled:
        raise EdgeKDError("bench.enabled needs export.enabled (latency is measured on the ONNX files)")
    _validate_export(cfg.export)
    d = cfg.distill
    if d.aux_teacher is not None:
        check_name(d.aux_teacher, "auxiliary teacher")
    if d.aux_teacher is not None and "indistill" not in methods:
        raise EdgeKDError("distill.aux_teacher is used by the InDistill warm-up: add indistill to the method")
    if d.indistill_a < 0 or d.indistill_b < 0 or d.indistill_a + d.indistill_b < 1:
        raise EdgeKDError("layer l (from 1) warms up for distill.indistill_a + distill.indistill_b * l "
                          "epochs: use indistill_a >= 0, indistill_b >= 0 and a + b >= 1")
    for key, value, allowed in (("aux_method", d.aux_method, AUX_METHODS),
                                ("aux_teaches", d.aux_teaches, AUX_TEACHES),
                                ("teacher_input", d.teacher_input, TEACHER_INPUTS)):
        if value not in allowed:
            raise EdgeKDError(f"distill.{key} {value!r}: use one of {', '.join(allowed)}")
    for role in ("teacher", "student"):
        parse_norm(getattr(cfg, role).norm, f"{role}.norm")
    if cfg.student.input_size is not None:
        spatial = sorted({"at", "fitnet", "indistill"} & set(methods))
        if spatial:
            raise EdgeKDError(f"--student-input-size: {', '.join(spatial)} compare feature maps of the "
                              "teacher's spatial size; use kd, ig or pkt, or drop --student-input-size")
        if cfg.budget.active:
            raise EdgeKDError("--student-input-size with a latency budget is not supported yet: "
                              "name the student (--student)")
        if cfg.student.input_size < 1:
            raise EdgeKDError("--student-input-size must be a positive number of pixels")
    if cfg.teacher.finetune_epochs < 0 or (cfg.teacher.finetune_lr is not None and cfg.teacher.finetune_lr <= 0):
        raise EdgeKDError("teacher.finetune_epochs must be >= 0 and teacher.finetune_lr > 0")
    if cfg.teacher.finetune_epochs and not cfg.teacher.checkpoint:
        raise EdgeKDError("--teacher-finetune-epochs fine-tunes a given teacher: pass --teacher "
                          "FILE or pretrained weights (e.g. torchvision:resnet18.IMAGENET1K_V1)")
    _recipe(cfg.recipe)
    if d.indistill_max_layers < 1 or d.indistill_lr <= 0:
        raise EdgeKDError("distill.indistill_max_layers must be >= 1 and distill.indistill_lr > 0")
    for role in ("teacher", "student"):
        t = getattr(cfg, role).train
        if t.optimizer not in OPTIMIZERS:
            raise EdgeKDError(f"{role} optimizer {t.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if t.schedule not in SCHEDULES:
            raise EdgeKDError(f"{role} schedule {t.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if t.epochs < 1 or t.batch_size < 1 or t.lr <= 0:
            raise EdgeKDError(f"{role}: epochs, batch size and lr must be positive")
        if not 0 <= t.label_smoothing < 1:
            raise EdgeKDError(f"{role} label smoothing must be in [0, 1)")
    _validate_ig(cfg.ig)
    if not 0 <= cfg.kd.alpha <= 1 or cfg.kd.temperature <= 0:
        raise EdgeKDError("kd.alpha must be in [0, 1] and kd.temperature > 0")
    if cfg.data.augment not in ("auto", "crop_pad", "resized_crop"):
        raise EdgeKDError(f"data.augment {cfg.data.augment!r}: use auto, crop_pad or resized_crop")
    if cfg.data.storage not in ("auto", "memory", "disk"):
        raise EdgeKDError(f"data.storage {cfg.data.storage!r}: use auto, memory or disk")
    if cfg.data.train_subset is not None and not 0 < cfg.data.train_subset <= 1:
        raise EdgeKDError("data.train_subset must be in (0, 1]")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise EdgeKDError(f"device {cfg.device!r}: use auto, cpu, cuda or cuda:N")


def _validate_budget(cfg: RunConfig) -> None:
    from edgekd.models.registry import is_known
    from edgekd.selection.budget import Budget

    b = cfg.budget
    if not b.active:
        return
    Budget(b.latency_ms, b.speedup, b.batch, b.percentile, b.precision, b.margin)  # checks
    if cfg.student.arch is not None:
        flag = f"--latency-budget {b.latency_ms:g}" if b.latency_ms is not None else f"--speedup {b.speedup:g}"
        raise EdgeKDError(f"--student {cfg.student.arch} and {flag} both choose the student: "
                          "drop one of them")
    if b.backend not in ("onnxruntime", "tensorrt"):
        raise EdgeKDError(f"budget.backend {b.backend!r}: use onnxruntime or tensorrt")
    if b.precision == "int8" and not cfg.export.int8:
        raise EdgeKDError("--budget-precision int8 measures the INT8 student: add --int8")
    if not cfg.export.enabled:
        raise EdgeKDError("a latency budget is checked on the exported student: keep export.enabled")
    unknown = [c for c in b.candidates if not is_known(c)]
    if unknown:
        raise EdgeKDError(f"unknown candidate {unknown[0]!r} in budget.candidates: see `edgekd models`")
    if b.select_epochs < 0 or b.select_top < 1:
        raise EdgeKDError("budget.select_epochs must be >= 0 and budget.select_top >= 1")


def _validate_export(e: ExportConfig) -> None:
    from edgekd.export.targets import resolve_opset

    resolve_opset(e.target, e.opset)
    if e.int8_method not in INT8_METHODS:
        raise EdgeKDError(f"export.int8_method {e.int8_method!r}: use one of {', '.join(INT8_METHODS)}")
    if e.int8_calib_size < 1 or e.int8_max_drop < 0:
        raise EdgeKDError("export.int8_calib_size must be >= 1 and export.int8_max_drop >= 0")
    if e.int8_qat_epochs < 0 or (e.int8_qat_lr is not None and e.int8_qat_lr <= 0):
        raise EdgeKDError("export.int8_qat_epochs must be >= 0 and export.int8_qat_lr > 0")
    if e.int8_qat_teacher not in ("teacher", "student"):
        raise EdgeKDError(f"export.int8_qat_teacher {e.int8_qat_teacher!r}: use teacher or student")
    if e.int8_qat_epochs and not e.int8:
        raise EdgeKDError("--qat-epochs fine-tunes the student for INT8: add --int8")
    if (e.int8 or e.int8_teacher) and not e.enabled:
        raise EdgeKDError("export.int8 needs export.enabled (INT8 is made from the ONNX export)")


def _validate_ig(g: IGConfig) -> None:
    if not 0 <= g.p <= 1:
        raise EdgeKDError(f"ig.p (--ig-p) must be in [0, 1], got {g.p}: it is a probability")
    if not 0 <= g.blend <= 1:
        raise EdgeKDError(f"ig.blend (--ig-blend) must be in [0, 1], got {g.blend}")
    if g.steps < 1:
        raise EdgeKDError(f"ig.steps (--ig-steps) must be >= 1, got {g.steps}")
    for key, value, allowed in (("method", g.method, IG_METHODS), ("target", g.target, IG_TARGETS),
                                ("baseline", g.baseline, IG_BASELINES), ("dtype", g.dtype, IG_DTYPES)):
        if value not in allowed:
            raise EdgeKDError(f"ig.{key} {value!r}: use one of {', '.join(allowed)}")
    if g.internal_batch_size is not None and g.internal_batch_size < 1:
        raise EdgeKDError("ig.internal_batch_size must be >= 1 (or none for automatic)")
    if g.chunk_size < 1:
        raise EdgeKDError("ig.chunk_size must be >= 1")


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def get_value(cfg: RunConfig, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


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


def build_config(
    config_file: str | Path | None = None,
    dataset: str | None = None,
    overrides: dict[str, Any] | None = None,
    sets: tuple[str, ...] | list[str] = (),
    recipe: str | None = None,
) -> RunConfig:
    """Defaults for the data set < recipe < YAML file (a run's config.yaml works) < options <
    KEY=VALUE. The recipe is `recipe`, else the file's, else `edgekd`."""
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
    file_dataset = (raw.get("data") or {}).get("dataset") if isinstance(raw.get("data"), dict) else None
    name = recipe or raw.get("recipe") or "edgekd"
    cfg = default_config(dataset or file_dataset or "digits")
    cfg.recipe = str(name)
    for dotted, value in recipe_values(cfg.recipe, cfg.data.dataset).items():
        apply_override(cfg, dotted, value)
    for dotted, value in _flatten(raw):
        if dotted != "recipe":
            apply_override(cfg, dotted, value)
    if dataset:
        cfg.data.dataset = dataset
    for dotted, value in (overrides or {}).items():
        if value is not None:
            apply_override(cfg, dotted, value)
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
    error (validate, and the CLI for its flags)."""
    base = default_config(cfg.data.dataset).budget
    untouched = (cfg.budget.latency_ms, cfg.budget.speedup) == (base.latency_ms, base.speedup)
    if cfg.student.arch is not None and cfg.budget.active and untouched:
        cfg.budget = BudgetConfig()
