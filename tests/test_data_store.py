"""Image folders larger than memory: decoded once into an on-disk store, read per batch through
a DataLoader, identical to the in-memory path; images of every mode; unreadable images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgekd.cli import cli
from edgekd.data import load_dataset
from edgekd.data.loader import BatchFeeder
from edgekd.data.store import ImageStore, StoreWriter
from edgekd.errors import DataError
from tests.conftest import extract_cifar_subset


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return extract_cifar_subset(tmp_path_factory.mktemp("imgs"), ["airplane", "cat", "ship"], 30, 10)


def test_the_disk_store_holds_the_same_images_as_memory(folder):
    mem = load_dataset(f"imagefolder:{folder}", 40, storage="memory")
    disk = load_dataset(f"imagefolder:{folder}", 40, storage="disk")
    assert isinstance(disk.train.images, ImageStore) and isinstance(mem.train.images, torch.Tensor)
    assert disk.summary()["storage"] == "disk" and mem.summary()["storage"] == "memory"
    assert disk.fingerprint() == mem.fingerprint()  # same data, wherever it lives
    assert torch.equal(disk.train.images[:], mem.train.images)
    idx = torch.tensor([7, 3, 4, 5, 0])
    assert torch.equal(disk.train.images[idx], mem.train.images[idx])
    sub_d, sub_m = disk.train.subset([9, 2, 2]), mem.train.subset([9, 2, 2])
    assert torch.equal(sub_d.images[:], sub_m.images) and torch.equal(sub_d.labels, sub_m.labels)
    assert (disk.mean, disk.std) == (mem.mean, mem.std)
    batches = [torch.tensor([5, 1, 8]), torch.tensor([0, 2])]
    feeder = BatchFeeder(disk.train.images, torch.device("cpu"), workers=2)
    for got, idx in zip(feeder.epoch(batches), batches, strict=True):
        assert torch.equal(got, mem.train.images[idx])


def test_training_from_disk_gives_the_same_weights_as_from_memory(folder, tmp_path):
    # kd+ig: from disk the IG maps are read per batch too (MapRows), from memory indexed
    args = ["compress", "--dataset", f"imagefolder:{folder}", "--input-size", "32", "--method", "kd+ig",
            "--ig-steps", "2", "--ig-p", "0.5",
            "--teacher-arch", "resnet8_cifar_w0.5", "--student", "resnet8_cifar_w0.5",
            "--teacher-epochs", "1", "--epochs", "1", "--batch-size", "16", "--no-bench"]
    weights = {}
    for storage in ("memory", "disk"):
        out = tmp_path / storage
        r = CliRunner().invoke(cli, [*args, "--data-storage", storage, "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert json.loads((out / "data.json").read_text())["storage"] == storage
        weights[storage] = torch.load(out / "student.pt", weights_only=True)["state_dict"]
    for k, v in weights["memory"].items():
        assert torch.equal(v, weights["disk"][k]), k


def test_images_of_every_mode_are_converted(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 65535, (20, 24), dtype=np.uint16)).save(d / "grey16.png")
            Image.fromarray(rng.integers(0, 255, (20, 24, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
            Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8), "L").save(d / "grey.jpg")
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).convert("P").save(d / "pal.png")
    data = load_dataset(f"imagefolder:{tmp_path}", 16, val_fraction=0.0)
    assert data.train.images.shape == (8, 3, 16, 16)
    # a 16-bit grey image is scaled down to 8 bits, not clipped to white
    grey16 = data.train.images[0].float()
    assert 40 < grey16.mean() < 215 and torch.equal(grey16[0], grey16[1])


def test_a_corrupt_jpeg_is_named_or_skipped_and_listed(folder, tmp_path):
    import shutil

    root = shutil.copytree(folder, tmp_path / "imgs")
    bad = sorted((root / "train" / "cat").glob("*.jpg"))[3]
    bad.write_bytes(bad.read_bytes()[:300])  # truncated mid-scan
    with pytest.raises(DataError, match=f"cannot read image {bad}.*--skip-bad-images"):
        load_dataset(f"imagefolder:{root}", 32)
    data = load_dataset(f"imagefolder:{root}", 32, skip_bad_images=True)
    assert len(data.train) + len(data.val) == 89
    assert [s["file"] for s in data.summary()["skipped_images"]] == [str(bad)]


def test_a_class_missing_from_train_is_named(folder, tmp_path):
    import shutil

    root = shutil.copytree(folder, tmp_path / "imgs")
    shutil.rmtree(root / "train" / "ship")
    with pytest.raises(DataError, match=r"only in test: \['ship'\]"):
        load_dataset(f"imagefolder:{root}", 32)


def test_an_interrupted_decode_resumes_where_it_stopped(tmp_path):
    rows = np.arange(5 * 3 * 2 * 2, dtype=np.uint8).reshape(5, 3, 2, 2)
    w = StoreWriter(tmp_path / "s", 5, (3, 2, 2), {"labels": [0] * 5})
    w.write(0, rows[:2])
    del w  # killed: no manifest, the progress file says 2 rows are on disk
    assert not (tmp_path / "s" / "manifest.json").exists()
    w = StoreWriter(tmp_path / "s", 5, (3, 2, 2), {"labels": [0] * 5})
    assert w.done == 2
    w.write(2, rows[2:])
    store = w.finish()
    assert torch.equal(store[:], torch.from_numpy(rows))


def test_the_store_reads_in_pieces_and_indexes_like_a_tensor(folder, monkeypatch):
    from edgekd import io

    mem = load_dataset(f"imagefolder:{folder}", 24, storage="memory").test.images
    disk = load_dataset(f"imagefolder:{folder}", 24, storage="disk").test.images
    monkeypatch.setattr(io, "READ_MAX", 1000)  # many reads per run of rows
    assert torch.equal(disk[:], mem)
    assert torch.equal(disk[-1], mem[-1]) and torch.equal(disk[torch.tensor(3)], mem[3])
    assert torch.equal(disk[np.array([-2, 0])], mem[[-2, 0]])
    with pytest.raises(TypeError):
        disk[torch.zeros(len(disk), dtype=torch.bool)]
    with pytest.raises(IndexError):
        disk[[len(disk)]]
