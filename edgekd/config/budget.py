"""A latency budget: a limit in ms, or a speed-up over the teacher measured on the target, at a
batch size, percentile and precision, and where it is measured. One form, declared once:
`edgekd compress` and `edgekd select` take the same flags from it (docs/latency-budgets.md)."""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.config.settings import check, setting
from edgekd.errors import SelectError

PERCENTILES = ("p50", "p90", "p99")
PRECISIONS = ("auto", "fp32", "fp16", "int8")
# What each backend can run, most accurate first: `auto` searches them all.
BACKEND_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "tensorrt": ("fp32", "fp16", "int8")}
# The lower input sizes searched by default, as fractions of the run's.
SIZE_FACTORS = (0.75,)


def _candidates(value, name):
    from edgekd.models.registry import is_known

    if not is_known(value):
        raise SelectError(f"unknown candidate {value!r} in budget.candidates: see `edgekd models`")


@dataclass
class Budget:
    """Off while both latency_ms and speedup are None."""

    latency_ms: float | None = setting(None, flag="--latency-budget", gt=0, metavar="MS",
                                       help="The limit per batch in ms: the student is chosen to fit it "
                                            "on --target (not with --student).")
    speedup: float | None = setting(None, flag="--speedup", ge=1, metavar="X",
                                    help="Limit = the teacher's latency on --target / X.")
    batch: int = setting(64, flag="--budget-batch", ge=1, help="Batch size of the budget.")
    percentile: str = setting("p50", flag="--budget-percentile", choices=PERCENTILES,
                              help="Percentile held against the budget.")
    precision: str = setting("auto", flag="--budget-precision", choices=PRECISIONS,
                             help="Precision of the student: auto searches every one the backend "
                                  "runs (fp32, int8; fp16 on TensorRT) and keeps the most "
                                  "accurate that fits.")
    input_sizes: list[int] = setting(default_factory=list, flag="--budget-input-sizes",
                                     ge=1, metavar="PX,...",
                                     help="Input sizes the student may compute at, downscaling "
                                          "the run's images (default: the run's and 3/4 of it).")
    # Headroom a candidate must leave under the limit at selection, so that measurement noise
    # in the final check does not flip the verdict.
    margin: float = setting(0.05, flag="--margin", ge=0, lt=1,
                            help="Headroom a candidate must leave under the limit.")
    target: str = setting("local", flag="--target",
                          help="Where the budget is measured: local | ssh://user@host[:port] | an ssh alias.")
    backend: str = setting("onnxruntime", flag="--backend", choices=("onnxruntime", "tensorrt"),
                           help="Runtime the budget is measured with on the target.")
    remote_python: str | None = setting(None, flag="--remote-python",
                                        help="Python on the device (default python3).")
    remote_dir: str | None = setting(None, flag="--remote-dir",
                                     help="Bundles folder on the device (default ~/edgekd-bundles).")
    ssh_config: str | None = setting(None, flag="--ssh-config", help="ssh config file (-F).")
    threads: int | None = setting(None, flag="--threads", ge=1,
                                  help="ONNX Runtime intra-op threads on the target (default: its own).")
    candidates: list[str] = setting(default_factory=list, flag="--candidates", check=_candidates,
                                    help="Comma-separated model names (default: every student family "
                                         "that takes the input size).")
    # The accuracy proxy: the top options by MACs train briefly and the best validation
    # accuracy wins (0: the most MACs wins). benchmarks/select_proxy.py measures how well it
    # ranks (docs/latency-budgets.md).
    select_epochs: int = setting(3, flag="--select-epochs", ge=0,
                                 help="Train the top fitting options this many epochs (cross-"
                                      "entropy) and keep the best val accuracy; 0: most MACs.")
    select_top: int = setting(4, flag="--select-top", ge=1,
                              help="How many options the proxy trains.")
    select_images: int = setting(10000, ge=1)  # a stratified subset of the training split

    @property
    def active(self) -> bool:
        return self.latency_ms is not None or self.speedup is not None

    def check_one_kind(self) -> None:
        """A limit in ms or a speed-up, not both."""
        if self.latency_ms is not None and self.speedup is not None:
            raise SelectError("--latency-budget and --speedup both set a budget: pass one of them")

    def validate(self) -> Budget:
        """The declared checks, and one budget at a time; returns self."""
        self.check_one_kind()
        check(self)
        return self

    def precisions(self) -> tuple[str, ...]:
        """The precisions searched on the budget's backend, most accurate first; a precision
        the backend lacks is a SelectError naming the ones it has."""
        have = BACKEND_PRECISIONS[self.backend]
        if self.precision == "auto":
            return have
        if self.precision not in have:
            raise SelectError(f"--budget-precision {self.precision}: {self.backend} has no "
                              f"{self.precision} path here; use one of {', '.join(have)} or auto"
                              + (", or --backend tensorrt" if self.precision == "fp16" else ""))
        return (self.precision,)

    def sizes(self, input_size: int, fixed: int | None = None) -> list[int]:
        """The input sizes searched, largest first: `fixed` (a --student-input-size) alone, else
        budget.input_sizes, else the run's and SIZE_FACTORS of it. A size above the run's is a
        SelectError (a student never sees enlarged images)."""
        if fixed is not None:
            sizes = [fixed]
        elif self.input_sizes:
            sizes = list(self.input_sizes)
        else:
            sizes = [input_size] + [max(1, round(input_size * f)) for f in SIZE_FACTORS]
        big = [s for s in sizes if s > input_size]
        if big:
            raise SelectError(f"--budget-input-sizes {big[0]} is above the run's input size "
                              f"{input_size}: a student sees the images downscaled, never enlarged")
        return sorted(set(sizes), reverse=True)

    def limit_ms(self, teacher_ms: float | None) -> float | None:
        """The limit in ms (with `speedup`: from the teacher's measured latency)."""
        if self.latency_ms is not None:
            return self.latency_ms
        if self.speedup is not None and teacher_ms is not None:
            return teacher_ms / self.speedup
        return None

    def describe(self) -> str:
        what = (f"{self.latency_ms:g} ms" if self.latency_ms is not None
                else f"teacher / {self.speedup:g}" if self.speedup is not None else "none")
        return f"{what} at batch {self.batch}, {self.percentile}, {self.precision}"
