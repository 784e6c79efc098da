"""The PyTorch-eager baseline with deploy/'s runner call shape (`run(batch) -> logits`), so
the same harness times a checkpoint and its ONNX export alike. Lives in edgekd/ because it
needs torch, which deploy/ never imports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekd.errors import BenchError
from edgekd.models.registry import default_input_size
from edgekd.train import checkpoint


class TorchRunner:
    """An edgekd checkpoint in eval mode under `torch.inference_mode`, with the intra-op thread
    count set explicitly (torch's setting is per process: the last runner made wins)."""

    name = "torch"
    input_name = "input"
    input_dtype = np.dtype(np.float32)

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "cpu",
                 channels_last: bool = False):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise BenchError(f"checkpoint not found: {self.path}")
        model, meta = checkpoint.load_model(self.path)  # torch.load(weights_only=True) inside
        self.threads = threads or len(os.sched_getaffinity(0))
        torch.set_num_threads(self.threads)
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)
        self.arch = meta.get("arch")
        size = meta.get("input_size") or default_input_size(meta["arch"])
        self.input_shape = [None, 3, int(size), int(size)]
        self.name = f"torch:{os.path.basename(self.path)}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        # torch reads the array in place; .cpu() waits for a GPU, so the timing includes it.
        x = torch.from_numpy(batch).to(self.device, memory_format=self.memory_format)
        with torch.inference_mode():
            return self.model(x).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "torch",
            "version": str(torch.__version__),
            "mode": "eager, inference_mode",
            "device": str(self.device),
            "intra_op_threads": torch.get_num_threads(),
            "inter_op_threads": torch.get_num_interop_threads(),
            "memory_format": "channels_last" if self.memory_format is torch.channels_last else "contiguous",
            "arch": self.arch,
            "input": {"name": self.input_name, "shape": self.input_shape, "dtype": "float32"},
            "output": "logits",
        }

    def close(self) -> None:
        self.model = None
