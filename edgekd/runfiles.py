"""The files of a run directory that more than one layer reads, and the run's sample inputs.

`samples.npy` holds real test images (float32 [0, 1], NCHW: what latency runs and on-device
checks are fed) and `samples_labels.npy` their classes. compress's bench stage writes both;
runs made before labels existed, or without the bench stage, get them from the run's own
test split (`ensure_samples`).

A bottom-layer module (docs/layers.md): the pipeline, ship and bench share it. Opening a
run's data set is the pipeline's business, so `ensure_samples` takes it as `open_data` from
its caller (the command line, bench, a pipeline stage).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.errors import RunDirError
from edgekd.io import atomic_path

if TYPE_CHECKING:
    import numpy as np

CONFIG, STATE, METRICS, REPORT, BENCH, SAMPLES = (
    "config.yaml", "state.json", "metrics.jsonl", "report.json", "bench.json", "samples.npy",
)
SAMPLE_LABELS = "samples_labels.npy"  # the classes of samples.npy (on-device accuracy checks)
DEFAULT_COUNT = 128  # two batches of 64, the papers' unit

def test_samples(data, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` test images as the models take them, and their labels."""
    import numpy as np

    x = data.test.images[:count].float().div(255.0).numpy()
    y = data.test.labels[:count].numpy().astype(np.int64)
    return x, y


def save_npy(path: Path, array: np.ndarray) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def ensure_samples(run_dir: str | Path, count: int = DEFAULT_COUNT,
                   open_data: Callable | None = None) -> tuple[Path, Path]:
    """Paths of the run's samples.npy and samples_labels.npy, writing what is missing; labels
    for existing samples are taken only when the test split reproduces those very images."""
    import numpy as np

    run = Path(run_dir)
    samples, labels = run / SAMPLES, run / SAMPLE_LABELS
    if samples.is_file() and labels.is_file():
        x = np.load(samples, mmap_mode="r", allow_pickle=False)
        y = np.load(labels, allow_pickle=False)
        if y.shape == (x.shape[0],):
            return samples, labels
    if open_data is None:
        raise RunDirError(f"{run} has no {SAMPLES} with labels: `edgekd deploy` or `edgekd bench "
                          "--compare` on the run writes them from its test split")
    data = open_data()
    if samples.is_file():
        existing = np.load(samples, allow_pickle=False)
        x, y = test_samples(data, existing.shape[0])
        if not np.array_equal(existing, x):
            raise RunDirError(f"{samples} no longer matches the run's test split: delete it and "
                              "rerun (it is rewritten from the test split)")
    else:
        x, y = test_samples(data, count)
        save_npy(samples, x)
    save_npy(labels, y)
    return samples, labels
