"""The training engine: exact resume after an interruption, metrics log, schedules."""

import dataclasses
import json
import shutil

import pytest
import torch

from edgekd.config import TrainConfig
from edgekd.data import load_dataset
from edgekd.data.augment import AugmentSettings
from edgekd.errors import RunDirError
from edgekd.models import create_model
from edgekd.train import engine
from edgekd.train.precision import cpu_native_bf16
from edgekd.train.schedule import lr_at


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("digits", 16)
    ds.train = ds.train.subset(range(0, len(ds.train), 4))  # ~314 images
    return ds


@pytest.fixture(scope="module")
def small(data):
    """The resume tests' data: a resume is exact or not whatever the size, so half of those
    training images (157: 5 steps of 32 an epoch) and a quarter of validation and test."""
    return dataclasses.replace(data, train=data.train.subset(range(0, len(data.train), 2)),
                               val=data.val.subset(range(0, len(data.val), 4)),
                               test=data.test.subset(range(0, len(data.test), 4)))


FIXED_AMP = "bf16" if cpu_native_bf16() else "off"


class _InterruptAt(engine.CrossEntropy):
    """Cross-entropy that interrupts training at (epoch, step), like a Ctrl-C mid-epoch."""

    def __init__(self, epoch, step):
        super().__init__(0.1)
        self.target, self.epoch, self.step = (epoch, step), 0, 0

    def set_epoch(self, epoch):
        self.epoch, self.step = epoch, 0

    def __call__(self, model, x, y, idx):
        self.step += 1
        if (self.epoch, self.step) == self.target:
            raise KeyboardInterrupt
        return super().__call__(model, x, y, idx)


def _run(data, tmp, callback=None, resume=False, key="k", cfg=None, objective=None):
    torch.manual_seed(0)
    model = create_model("mbv2_cifar_w0.25", 10, data.mean, data.std)
    # A fixed precision: `auto` measures which is faster, and two fresh runs may differ.
    cfg = cfg or TrainConfig(epochs=3, batch_size=32, lr=3e-3, schedule="onecycle", amp=FIXED_AMP)
    result = engine.train(
        model, data.train, data.val, data.test, cfg, stage="student", seed=1,
        device=torch.device("cpu"), objective=objective or engine.CrossEntropy(0.1),
        transform=engine.StandardAugment(AugmentSettings(2, False)),
        state_path=tmp / "state.pt", metrics_path=tmp / "metrics.jsonl", settings_key=key,
        resume=resume, callback=callback,
    )
    return model, result


@pytest.fixture(scope="module")
def interrupted(small, tmp_path_factory):
    """A training interrupted in epoch 2, at step 3, as a Ctrl-C would; copy it to resume it."""
    cut_dir = tmp_path_factory.mktemp("cut")
    with pytest.raises(KeyboardInterrupt):
        _run(small, cut_dir, objective=_InterruptAt(epoch=2, step=3))
    return cut_dir


def test_interrupted_training_resumes_bit_for_bit(small, interrupted, tmp_path):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir()
    shutil.copytree(interrupted, cut_dir)
    ref_model, ref = _run(small, ref_dir)

    logged = [json.loads(line) for line in (cut_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [1]  # epoch 2 never finished

    model, result = _run(small, cut_dir, resume=True)
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert result.last["test_acc"] == ref.last["test_acc"]
    logged = [json.loads(line) for line in (cut_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [1, 2, 3]
    assert logged[-1]["train_loss"] == ref.last["train_loss"]


def test_resume_with_other_settings_is_refused(small, interrupted, tmp_path):
    cut_dir = shutil.copytree(interrupted, tmp_path / "cut")
    with pytest.raises(RunDirError, match="different settings"):
        _run(small, cut_dir, resume=True, key="other")


def test_training_learns_and_reports_last_and_best(data, tmp_path):
    cfg = TrainConfig(epochs=6, batch_size=16, lr=5e-3, schedule="onecycle")
    _, result = _run(data, tmp_path, cfg=cfg)
    assert result.last["test_acc"] > 30  # three times chance (10 %) after ~120 steps
    assert result.best["selected_on"] == "val"
    assert result.best["val_acc"] == max(r["val_acc"] for r in result.history)
    assert result.last["images_per_s"] > 0


def test_schedules():
    assert lr_at("constant", 0.1, 50, 100) == 0.1
    assert lr_at("cosine", 0.1, 0, 100) == pytest.approx(0.1)
    assert lr_at("cosine", 0.1, 50, 100) == pytest.approx(0.05)
    assert lr_at("cosine", 0.1, 100, 100) == pytest.approx(0.0)
    peak = max(range(100), key=lambda s: lr_at("onecycle", 0.1, s, 100))
    assert peak == 30 and lr_at("onecycle", 0.1, 0, 100) == pytest.approx(0.1 / 25)


class _Notes:
    def __init__(self):
        self.notes = []

    def stage(self, name, status, detail=""):
        self.notes.append(detail)

    def on_epoch_start(self, stage, epoch, epochs, steps): ...
    def on_step(self, stage, step, loss, acc, ips): ...
    def on_epoch_end(self, stage, record): ...


@pytest.mark.parametrize("where", ["at the first step", "unavailable"])
def test_torch_compile_that_fails_falls_back_to_eager_and_says_so_once(small, tmp_path, monkeypatch, where):
    class Broken(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise RuntimeError("inductor: no C++ compiler")

    def compile_(model):
        if where == "unavailable":
            raise RuntimeError("not on this platform")
        return Broken()

    monkeypatch.setattr(torch, "compile", compile_)
    rec = _Notes()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3, compile=True, amp="off")
    _, result = _run(small, tmp_path, callback=rec, cfg=cfg)
    assert len(result.history) == 2 and result.last["train_loss"] < 5
    said = [n for n in rec.notes if "torch.compile" in n]
    assert len(said) == 1 and said[0].endswith("training eagerly")


def test_batchnorm_statistics_come_from_every_class_of_a_class_ordered_split():
    """An image folder is stored class by class: the first images are all one class."""
    images = torch.arange(10, dtype=torch.uint8).repeat_interleave(100)[:, None, None, None]
    images = images.expand(1000, 3, 4, 4).mul(20)
    sample = engine.bn_sample(images, 64)
    classes = sample[:, 0, 0, 0].div(20).long()
    assert len(sample) == 64 and len(classes.unique()) == 10
    # shuffled, not in file order: per-batch variances average to the split's only then
    assert not torch.equal(classes, classes.sort().values)
    assert torch.equal(engine.bn_sample(images, 64), sample)  # the same draw every epoch
    assert len(engine.bn_sample(images, 5000)) == 1000
