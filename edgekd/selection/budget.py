"""A latency budget: a limit in ms, or a speed-up over the teacher measured on the target,
at a batch size, percentile and precision."""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.errors import SelectError

PERCENTILES = ("p50", "p90")
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class Budget:
    latency_ms: float | None = None  # the limit, or None with `speedup`
    speedup: float | None = None  # the teacher's latency on the target divided by this
    batch: int = 64
    percentile: str = "p50"
    precision: str = "fp32"
    # Headroom a candidate must leave under the limit at selection, so that measurement noise
    # in the final check does not flip the verdict (README: Latency budgets).
    margin: float = 0.05

    def __post_init__(self) -> None:
        if self.latency_ms is not None and self.speedup is not None:
            raise SelectError("--latency-budget and --speedup both set a budget: pass one of them")
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise SelectError(f"--latency-budget must be > 0 ms, got {self.latency_ms:g}")
        if self.speedup is not None and not self.speedup >= 1:
            raise SelectError(f"--speedup must be >= 1 (the teacher itself is 1), got {self.speedup:g}")
        if self.batch < 1:
            raise SelectError(f"--budget-batch must be >= 1, got {self.batch}")
        if self.percentile not in PERCENTILES:
            raise SelectError(f"--budget-percentile {self.percentile!r}: use p50 or p90")
        if self.precision not in PRECISIONS:
            raise SelectError(f"--budget-precision {self.precision!r}: use fp32 or int8")
        if not 0 <= self.margin < 1:
            raise SelectError(f"budget.margin must be in [0, 1), got {self.margin:g}")

    @property
    def active(self) -> bool:
        return self.latency_ms is not None or self.speedup is not None

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
