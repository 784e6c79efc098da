"""Shared fixtures: tiny real data sets and small, fast pipeline settings."""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import pytest

CIFAR_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.zip"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep decoded-data caches out of the user's home during tests."""
    old = os.environ.get("EDGEKD_CACHE")
    os.environ["EDGEKD_CACHE"] = str(tmp_path_factory.mktemp("edgekd-cache"))
    yield
    if old is None:
        os.environ.pop("EDGEKD_CACHE", None)
    else:
        os.environ["EDGEKD_CACHE"] = old


def extract_cifar_subset(dest: Path, classes: list[str], n_train: int, n_test: int, size=None) -> Path:
    """Copy a few real CIFAR-10 JPEGs per class into an ImageFolder tree (optionally resized)."""
    if not CIFAR_ZIP.exists():
        pytest.skip(f"{CIFAR_ZIP} is absent (the shared CIFAR-10 JPEG copy)")
    from PIL import Image

    with zipfile.ZipFile(CIFAR_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
        for split, n in (("train", n_train), ("test", n_test)):
            for c in classes:
                members = [m for m in names if f"{split}/{c}/" in m][:n]
                out = dest / split / c
                out.mkdir(parents=True, exist_ok=True)
                for m in members:
                    target = out / Path(m).name
                    with z.open(m) as src:
                        if size is None:
                            target.write_bytes(src.read())
                        else:
                            Image.open(src).convert("RGB").resize(size, Image.BICUBIC).save(target)
    return dest


# Small settings for end-to-end runs: tiny models at 16x16, few images, one or two epochs,
# plain KD (the default method's IG and warm-up stages have their own tests), and latency
# measurements ended by counts (3 warm-up runs, then 3 timed ones), not by seconds.
TINY = [
    "--method", "kd",
    "--teacher-arch", "mbv2_cifar_w0.25", "--student", "mbv2_cifar_trunc13",
    "--input-size", "16", "--train-subset", "0.25", "--teacher-epochs", "1", "--epochs", "2",
    "--set", "bench.min_s=0", "--set", "bench.warmup_s=0", "--set", "bench.min_iters=3",
    "--set", "bench.batch_sizes=1,8",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished TINY digits run (ONNX exports, samples.npy + samples_labels.npy, bench.json),
    shared by the bench and deploy tests; treat it as read-only (copy it to change it)."""
    from click.testing import CliRunner

    from edgekd.cli import cli

    out = tmp_path_factory.mktemp("tiny-run") / "digits"
    # KD only and the TorchScript exporter (opset 17): the fastest real run.
    result = CliRunner().invoke(cli, ["compress", *TINY, "--method", "kd", "--epochs", "1",
                                      "--set", "export.opset=17", "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A digits run whose student is trained far enough (about 93 % top-1) for an INT8 budget
    to mean something: a 1-epoch student sits near chance, where its close logits flip under
    any quantisation and the drop measures the noise, not the quantiser (about 30 s)."""
    from click.testing import CliRunner

    from edgekd.cli import cli

    out = tmp_path_factory.mktemp("trained-run") / "digits"
    r = CliRunner().invoke(cli, [
        "compress", "--method", "student", "--teacher-arch", "mbv2_cifar_w0.25",
        "--student", "mbv2_cifar_trunc13", "--input-size", "16", "--teacher-epochs", "1",
        "--epochs", "6", "--no-bench", "--set", "export.opset=17", "--out", str(out),
        # FP32 on every host: `auto` picks bf16 where it measures faster, and the INT8 tests
        # below hold this model's drop against a budget
        "--set", "teacher.train.amp=off", "--set", "student.train.amp=off",
    ], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Some code under test sets torch's thread count (bench runners, experiment workers);
    give the next test the count it would have had alone."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


HIDDEN = ("tensorrt", "pycuda")


@pytest.fixture
def without_tensorrt(tmp_path, monkeypatch):
    """A machine without TensorRT and pycuda, even where they are installed: importing them
    fails in this process (None in sys.modules) and in every Python it starts (a PYTHONPATH
    folder, ahead of site-packages, whose tensorrt / pycuda raise ModuleNotFoundError as a
    missing module does). Returns that folder."""
    folder = tmp_path / "without-tensorrt"
    for name in HIDDEN:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    for name in (*HIDDEN, "pycuda.driver", "pycuda.autoinit"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    return folder
