"""The run's settings, one dataclass per section; each field declares its flag, help, choices
and bounds (edgekd.config.settings). Defaults here are the edgekd recipe on CIFAR-scale data;
`edgekd.config.default_config` adjusts them per data set."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import yaml

from edgekd.config.budget import Budget
from edgekd.config.settings import section, setting
from edgekd.config.targets import TARGETS, resolve_opset
from edgekd.errors import EdgeKDError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")
# The method registry: each term of --method and what it adds (docs/methods.md).
METHODS = {
    "student": "the student alone, cross-entropy (no teacher)",
    "kd": "Hinton knowledge distillation from the teacher's logits",
    "ig": "integrated-gradient overlays of the training images",
    "at": "attention transfer at one layer",
    "pkt": "probabilistic knowledge transfer of penultimate features",
    "fitnet": "FitNet hint regression at one layer",
    "indistill": "the InDistill warm-up before distillation",
}
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
INT8_METHODS = ("minmax", "entropy", "percentile")
NORMS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),  # docs/methods.md
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


def parse_methods(method: str) -> tuple[str, ...]:
    """'indistill+kd+ig' -> its terms, checked: known, each once, 'student' alone."""
    terms = tuple(method.split("+"))
    if not terms or any(t not in METHODS for t in terms):
        raise EdgeKDError(f"unknown method {method!r}: combine terms from {', '.join(METHODS)} with '+'")
    dup = sorted({t for t in terms if terms.count(t) > 1})
    if dup:
        raise EdgeKDError(f"method {method!r} repeats {', '.join(dup)}: name each term once")
    if "student" in terms and len(terms) > 1:
        raise EdgeKDError(f"method {method!r}: 'student' (no teacher) cannot combine with other terms")
    return terms


def _dataset(value, name):
    from edgekd.data.dataset import parse_dataset_spec

    parse_dataset_spec(value)


def _model(what: str):
    def check(value, name):
        from edgekd.models.registry import check_name

        check_name(value, what)
    return check


def _norm(value, name):
    parse_norm(value, name)


def _train_or_path(value):
    return None if value == "train" else value


@dataclass
class DataConfig:
    dataset: str = setting("digits", flag="--dataset", check=_dataset,
                           help="digits (embedded) | cifar10 | imagefolder:PATH")
    data_dir: str | None = setting(None, flag="--data-dir", help="An existing copy of the data set (cifar10).")
    input_size: int | None = setting(None, flag="--input-size", ge=1,
                                     help="Resize images to this size (none: the teacher's own).")
    val_fraction: float = setting(0.1, ge=0, lt=1)
    split_seed: int = 0
    train_subset: float | None = setting(None, flag="--train-subset", gt=0, le=1,
                                         help="Stratified fraction of train (quick runs).")
    subset_seed: int | None = None  # which stratified subset (None: split_seed); Monte Carlo varies it
    augment: str = setting("auto", flag="--augment", choices=("auto", "crop_pad", "resized_crop"),
                           help="Training crop: padded (the papers'), RandomResizedCrop, or auto "
                                "(resized from 96 px).")
    crop_padding: int | None = setting(None, ge=0)  # None: input_size // 8 (4 px at 32x32, as the papers)
    hflip: bool | None = None  # None: the data set's default (off for digits)
    storage: str = setting("auto", flag="--data-storage", choices=("auto", "memory", "disk"),
                           help="Decoded images in memory, or read per batch from the on-disk "
                                "cache (auto: disk above 2 GiB).")
    skip_bad_images: bool = setting(False, flag="--skip-bad-images",
                                    help="Leave unreadable images out (listed in data.json).")


AMP_MODES = ("auto", "bf16", "off")


def parse_amp(value) -> str:
    """A config value as an amp mode: booleans (older configs) mean auto / off."""
    text = str(value).strip().lower()
    return {"true": "auto", "yes": "auto", "on": "auto", "1": "auto",
            "false": "off", "no": "off", "0": "off"}.get(text, text)


@dataclass
class TrainConfig:
    epochs: int = setting(10, ge=1)
    batch_size: int = setting(64, ge=1)
    optimizer: str = setting("adam", choices=OPTIMIZERS)
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(0.0, ge=0)
    momentum: float = setting(0.9, ge=0, lt=1)
    schedule: str = setting("cosine", choices=SCHEDULES)
    label_smoothing: float = setting(0.0, ge=0, lt=1)
    # auto: bf16 where the device computes it natively (CUDA; CPUs with AVX512-BF16, AMX or Arm
    # BF16), else FP32 | bf16: refused where missing | off (edgekd.train.precision)
    amp: str = setting("auto", choices=AMP_MODES, parse=parse_amp)
    channels_last: bool = True  # faster on CPU (oneDNN) as well as on CUDA
    # torch.compile (inductor) of the training forward, eager where it fails; off: slower than
    # eager on a 2-core CPU after a minute or more of compiling (docs/decisions.md)
    compile: bool = False
    bn_recalibration: int = setting(512, ge=0)  # training images for exact BN statistics each epoch (0: off)


@dataclass
class TeacherConfig:
    arch: str = setting("mbv2_cifar", flag="--teacher-arch", check=_model("teacher model"),
                        help="Teacher model name (timm:NAME for timm; see `edgekd models`).")
    checkpoint: str | None = setting(
        None, flag="--teacher", parse=_train_or_path,
        help="train (default) | a checkpoint or state_dict (.pt) | weights by name "
             "(torchvision:resnet18.IMAGENET1K_V1, timm:resnet18.a1_in1k).")
    # None: a teacher trained here uses the data's statistics, pretrained weights their own
    # metadata, an edgekd checkpoint what it carries; a bare state_dict is refused without
    # one, since a wrong guess silently costs accuracy (docs/data.md).
    norm: str | None = setting(None, flag="--teacher-norm", check=_norm,
                               help="Input normalisation of a state_dict teacher: imagenet | cifar10 | "
                                    "data | MEAN_R,MEAN_G,MEAN_B,STD_R,STD_G,STD_B.")
    finetune_epochs: int = setting(0, flag="--teacher-finetune-epochs", ge=0,
                                   help="Fine-tune the given teacher on this data first (a new head "
                                        "when the class count differs).")
    finetune_lr: float | None = setting(None, gt=0)  # None: a tenth of teacher.train.lr
    train: TrainConfig = section(TrainConfig, epochs=("--teacher-epochs", "Teacher epochs when training one."),
                                 batch_size=("--batch-size", "Batch size of teacher and student."))


@dataclass
class StudentConfig:
    arch: str | None = setting("mbv2_cifar_trunc5", flag="--student", check=_model("student model"),
                               help="Student model name (see `edgekd models`); none: chosen by a budget.")
    norm: str = setting("data", check=_norm)  # as teacher.norm; the papers' code fed raw pixels (`none`)
    # A lower input size than the teacher's: the student downscales the same images inside
    # the model (None: the run's input size; docs/data.md).
    input_size: int | None = setting(None, flag="--student-input-size", ge=1,
                                     help="The student computes at this lower size: it downscales "
                                          "the teacher's images inside the model.")
    # train.epochs counts every student epoch: with indistill the warm-up's come out of it
    train: TrainConfig = section(TrainConfig, epochs=("--epochs", "Student epochs."),
                                 batch_size=("--batch-size", "Batch size of teacher and student."),
                                 lr=("--lr", "Student learning rate."))


@dataclass
class KDConfig:
    alpha: float = setting(0.5, flag="--kd-alpha", ge=0, le=1,
                           help="Weight of the KD term (cross-entropy gets 1 - alpha).")
    temperature: float = setting(4.0, flag="--kd-temperature", gt=0)


def _share(value):
    return None if value is None or str(value).lower() in ("none", "null", "off") else float(value)


@dataclass
class DistillConfig:
    """Weights and layers of the feature terms, and the InDistill warm-up (docs/methods.md)."""

    at_weight: float = 0.8  # gamma, the IG paper's best
    at_layer: str | None = None  # STUDENT_PATH[:TEACHER_PATH]; None: the papers' rule (docs/methods.md)
    pkt_weight: float = 1.0
    fitnet_weight: float = 1.0
    fitnet_layer: str | None = None
    indistill_a: int = setting(2, ge=0)  # layer l warms up for a + b*l epochs (the InDistill code's 2, 1)
    indistill_b: int = setting(1, ge=0)
    # The warm-up's share of the student's epochs, split between the layers as a + b*l (the
    # papers' 12 of 60 is 0.2); None: a + b*l epochs per layer whatever the budget (--recipe paper).
    indistill_share: float | None = setting(0.2, flag="--warmup-share", gt=0, lt=1, parse=_share,
                                            help="InDistill warm-up as a share of --epochs "
                                                 "(none: a + b*l epochs per layer).")
    indistill_layers: list[str] = field(default_factory=list)  # STUDENT_PATH[:TEACHER_PATH]
    indistill_max_layers: int = setting(3, ge=1)
    indistill_lr: float = setting(1e-3, gt=0)
    # A mid-size model distilled from the teacher first, then pruned for the warm-up in its
    # place: bridges a very large capacity gap.
    aux_teacher: str | None = setting(None, check=_model("auxiliary teacher"))
    # kd: KD from scratch | pkt: the InDistill code's CE baseline, then PKT
    aux_method: str = setting("kd", choices=("kd", "pkt"))
    # both: warm-up and stage 2 (the paper) | warmup: stage 2 from the teacher
    aux_teaches: str = setting("both", choices=("both", "warmup"))
    # The image the teacher's KD/AT targets come from with `ig`: overlaid (the student's own
    # input) | clean (the same crop/flip, no overlay).
    teacher_input: str = setting("overlaid", choices=("overlaid", "clean"))
    # The teacher's logits per augmented view, recorded once and read back (FKD;
    # edgekd.distill.soft_labels): auto = cached where every teacher term is on logits (kd),
    # live otherwise | cached (refused for at, fitnet, pkt) | live (a teacher forward per step)
    soft_labels: str = setting("auto", flag="--soft-labels", choices=("auto", "cached", "live"),
                               help="Teacher logits recorded once per augmented view (cached) or "
                                    "computed every step (live); auto: cached for kd.")
    soft_label_topk: int = setting(10, ge=1)  # logits kept per view (all of them up to 10 classes)
    # None: RUN/soft_labels/; experiments share one folder (one teacher, many runs)
    soft_label_dir: str | None = None


@dataclass
class IGConfig:
    """Integrated-gradient maps of the teacher and the overlay augmentation (method `ig`)."""

    p: float = setting(0.1, flag="--ig-p", ge=0, le=1,
                       help="Probability of overlaying an image with its IG map.")
    blend: float = setting(0.5, flag="--ig-blend", ge=0, le=1, help="Overlay weight: x := (1 - b) x + b map.")
    steps: int = setting(50, flag="--ig-steps", ge=1, help="IG integration steps (digits: 8).")
    method: str = setting("gausslegendre", flag="--ig-method", choices=IG_METHODS, help="Captum's quadrature.")
    target: str = setting("label", flag="--ig-target", choices=("label", "prediction"),
                          help="Attribute to the label or to the teacher's top-1.")
    baseline: str = setting("zeros", flag="--ig-baseline", choices=("zeros", "blur", "noise"),
                            help="zeros (in the teacher's normalised space) | blur | noise.")
    dtype: str = setting("float16", flag="--ig-dtype", choices=("float16", "uint8"),
                         help="How maps are stored (uint8: with a per-map scale).")
    internal_batch_size: int | None = setting(None, flag="--internal-batch-size", ge=1,
                                              help="Rows per teacher forward (default: from free memory).")
    chunk_size: int = setting(256, flag="--chunk-size", ge=1, help="Images per resumable, checksummed chunk.")
    # None: RUN/ig/; else maps shared by runs, in a sub-folder named by what made them
    # (experiments set it: one teacher, many runs, one computation)
    cache_dir: str | None = None


def _opset(value, name):
    if not 13 <= value <= 22:
        raise EdgeKDError(f"opset {value} is not supported by edgekd's exporter: use 13..22")


@dataclass
class ExportConfig:
    enabled: bool = True  # experiments switch it off when only accuracy is wanted
    target: str = setting("cpu", choices=lambda: tuple(TARGETS))
    opset: int | None = setting(None, check=_opset)  # None: the target's default
    simplify: bool = False  # onnxslim, then the parity check (pip install 'edgekd[simplify]')
    parity_atol: float = setting(1e-3, gt=0)  # max |logit difference| ONNX vs PyTorch, scaled by logit range
    min_agreement: float = setting(99.0, ge=0, le=100)  # top-1 agreement (%) over the test split
    # INT8 (ONNX Runtime static QDQ) of the student: off by default, since it adds a
    # calibration pass and two evaluations to every run (docs/int8.md).
    int8: bool = setting(False, flag="--int8", help="Also quantize the student to INT8 (budget "
                                                   "export.int8_max_drop).")
    int8_teacher: bool = False  # the teacher too (for teacher.int8 vs student.int8 latency)
    int8_method: str = setting("minmax", choices=INT8_METHODS)
    int8_calib_size: int = setting(256, ge=1)  # stratified training images, seeded by the run's seed
    int8_max_drop: float = setting(1.0, ge=0)  # accuracy budget in percentage points (test split)
    int8_exclude: list[str] = field(default_factory=list)  # node names / op types kept FP32
    int8_auto_fallback: bool = False  # keep the most sensitive layers FP32 until the drop fits
    int8_reduce_range: bool = False  # 7-bit weights: exact on x86 CPUs without VNNI (docs/int8.md)
    # Quantization-aware distillation before INT8 (edgekd.export.qat); 0: post-training.
    int8_qat_epochs: int = setting(0, flag="--qat-epochs", ge=0,
                                   help="Quantization-aware distillation epochs before INT8; implies --int8.")
    int8_qat_lr: float | None = setting(None, gt=0)  # None: a tenth of the student's learning rate
    # Who teaches it: `teacher` (the run's method and teacher) or `student` (the FP32 student).
    int8_qat_teacher: str = setting("teacher", choices=("teacher", "student"))


@dataclass
class BenchConfig:
    enabled: bool = setting(True, flag="--no-bench", help="Skip the latency measurement.")
    batch_sizes: list[int] = setting(default_factory=lambda: [1, 64], ge=1)
    warmup_s: float = setting(0.3, ge=0)
    min_s: float = setting(1.0, ge=0)
    min_iters: int = setting(10, ge=1)
    threads: int | None = setting(None, ge=1)  # None: all cores


def _device(value, name):
    if not (value in ("auto", "cpu", "cuda") or value.startswith("cuda:")):
        raise EdgeKDError(f"device {value!r}: use auto, cpu, cuda or cuda:N")


def _method(value, name):
    parse_methods(value)


def _recipe_name(value, name):
    from edgekd.recipes import RECIPES

    if value not in RECIPES:
        raise EdgeKDError(f"unknown recipe {value!r}: use one of {', '.join(RECIPES)}")


@dataclass
class RunConfig:
    recipe: str = setting("edgekd", flag="--recipe", check=_recipe_name,
                          help="edgekd (faster schedules) | paper (the IG paper's setup); "
                               "overrides are listed as deviations.")
    seed: int = setting(0, flag="--seed")
    device: str = setting("auto", flag="--device", check=_device, help="auto | cpu | cuda | cuda:N")
    method: str = setting("indistill+kd+ig", flag="--method", check=_method,
                          help=f"Loss terms joined by +, from: {', '.join(METHODS)} ('student' "
                               "alone: no teacher).")
    data: DataConfig = section(DataConfig)
    teacher: TeacherConfig = section(TeacherConfig)
    student: StudentConfig = section(StudentConfig)
    kd: KDConfig = section(KDConfig)
    distill: DistillConfig = section(DistillConfig)
    ig: IGConfig = section(IGConfig)
    export: ExportConfig = section(ExportConfig)
    bench: BenchConfig = section(BenchConfig)
    budget: Budget = section(Budget)

    @property
    def methods(self) -> tuple[str, ...]:
        """The terms of `method`, parsed and checked once here (e.g. ('indistill', 'kd', 'ig'))."""
        return parse_methods(self.method)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


__all__ = ["Budget", "BenchConfig", "DataConfig", "DistillConfig", "ExportConfig", "IGConfig",
           "KDConfig", "RunConfig", "StudentConfig", "TeacherConfig", "TrainConfig", "METHODS",
           "NORMS", "parse_norm", "parse_methods", "resolve_opset"]
