"""A latency budget: a limit in ms, or a speed-up over the teacher measured on the target, at a
batch size, percentile and precision, and where it is measured. One form, declared once:
`edgekd compress` and `edgekd select` take the same flags from it (docs/latency-budgets.md)."""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.config.settings import check, setting
from edgekd.errors import SelectError

PERCENTILES = ("p50", "p90", "p99")
PRECISIONS = ("fp32", "int8")


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
    precision: str = setting("fp32", flag="--budget-precision", choices=PRECISIONS,
                             help="Precision measured for the budget; int8 implies --int8.")
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
    select_epochs: int = setting(0, flag="--select-epochs", ge=0,
                                 help="Train the top fitting candidates this many epochs and keep "
                                      "the best val accuracy.")
    select_top: int = setting(3, ge=1)

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
