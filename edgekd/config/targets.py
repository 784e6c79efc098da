"""Export targets: the ONNX opset and IR version the runtime on each kind of device parses.

The table, its sources (onnx-tensorrt's operator docs per release, ONNX's version table) and
why `cpu` defaults to opset 17 are in docs/export.md."""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.errors import EdgeKDError


@dataclass(frozen=True)
class Target:
    name: str
    runtime: str
    opset: int  # the default opset for this target
    max_opset: int  # the highest opset its parser reads
    min_opset: int = 13  # below 13 torch's exporters drop ops these models use

    def to_dict(self) -> dict:
        return {"name": self.name, "runtime": self.runtime, "default_opset": self.opset,
                "max_opset": self.max_opset}


TARGETS = {
    t.name: t
    for t in (
        Target("jetson-jp5", "JetPack 5.1.x: TensorRT 8.5.2", 17, 17),
        Target("jetson-jp6", "JetPack 6.0: TensorRT 8.6.2; JetPack 6.1/6.2: TensorRT 10.3", 17, 17),
        Target("jetson-jp7", "JetPack 7.x: TensorRT 10.13 (TensorRT 10.x)", 20, 20),
        # 17 by default: torch's TorchScript exporter writes it in 0.8 s where the dynamo
        # exporter (opset >= 18) takes 21 s for the teacher (2-core AMD EPYC, torch 2.14),
        # which the 6-minute default run cannot afford; --opset 18..21 stays available.
        Target("cpu", "ONNX Runtime >= 1.18", 17, 21),
    )
}
DEFAULT_TARGET = "cpu"

# ONNX releases: (opset, IR version) from onnx.helper.VERSION_TABLE, pinned here so the
# mapping does not move with the installed onnx.
_IR_FOR_OPSET = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10}


def runs_tensorrt(target: str) -> bool:
    """Whether models exported for `target` are built by TensorRT (Q/DQ placed for its
    explicit quantization: symmetric activations, FP32 bias)."""
    return str(target).startswith("jetson")


def get_target(name: str) -> Target:
    """The target named `name`, or a one-line error listing the valid ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise EdgeKDError(
            f"unknown export target {name!r}: use one of {', '.join(TARGETS)}"
        ) from None


def resolve_opset(target: str, opset: int | None = None) -> tuple[int, int]:
    """(opset, IR version) for `target`; an explicit `opset` the target cannot parse is refused."""
    t = get_target(target)
    if opset is None:
        opset = t.opset
    if not t.min_opset <= opset <= t.max_opset:
        raise EdgeKDError(
            f"opset {opset} cannot be parsed on {t.name} ({t.runtime} reads opsets up to "
            f"{t.max_opset}): use --opset {t.min_opset}..{t.max_opset} or leave it out "
            f"(default {t.opset})"
        )
    if opset not in _IR_FOR_OPSET:
        raise EdgeKDError(f"opset {opset} is not supported by edgekd's exporter: use 13..22")
    return opset, _IR_FOR_OPSET[opset]
