"""Cached soft labels (FKD style): the recorded logits are the teacher's on the exact views the
training loop draws, a cache is used only for its own key, and a build resumes."""

import json

import pytest
import torch
from torch import nn

from edgekd.attribution.overlay import IGOverlay
from edgekd.config import TrainConfig
from edgekd.data import load_dataset
from edgekd.data.augment import AugmentSettings
from edgekd.distill.losses import DistillObjective, KDLoss
from edgekd.distill.soft_labels import CachedTeacher, SoftLabelCache, SoftLabelError, ViewReplay
from edgekd.models import create_model
from edgekd.train import engine

AUG = AugmentSettings(crop_padding=2, hflip=True)


@pytest.fixture(scope="module")
def data():
    d = load_dataset("digits", 16)
    d.train = d.train.subset(range(0, len(d.train), 6))  # ~210 real images
    d.val = d.val.subset(range(0, len(d.val), 8))
    d.test = d.test.subset(range(0, len(d.test), 8))
    return d


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(0)
    return create_model("resnet8_cifar_w0.5", 10, data.mean, data.std).eval()


class _LiveRecorder(DistillObjective):
    """The live teacher's logits of every step, by (epoch, training index)."""

    def __init__(self, teacher):
        super().__init__(teacher, [(1.0, KDLoss(4.0))], task_weight=0.0)
        self.seen: dict[tuple[int, int], torch.Tensor] = {}
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __call__(self, model, x, y, idx, teacher_x=None):
        with torch.no_grad():
            t = self.teacher(x if teacher_x is None else teacher_x)
        for i, row in zip(idx.tolist(), t, strict=True):
            self.seen[(self.epoch, i)] = row
        return super().__call__(model, x, y, idx, teacher_x=teacher_x)


def _train(data, tmp, objective, transform, epochs=2, seed=3):
    student = create_model("resnet8_cifar_w0.5", 10, data.mean, data.std)
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, amp="off", bn_recalibration=0)
    return engine.train(student, data.train, data.val, data.test, cfg, stage="student", seed=seed,
                        device=torch.device("cpu"), objective=objective, transform=transform,
                        state_path=tmp / "s.pt", metrics_path=tmp / "m.jsonl", settings_key="k")


def _key(**kw):
    return {"teacher": "t", "data": "d", "seed": 3, "batch_size": 32, **kw}


def test_recorded_logits_are_the_live_teachers_on_the_training_views(data, teacher, tmp_path):
    live = _LiveRecorder(teacher)
    _train(data, tmp_path / "live", live, engine.StandardAugment(AUG))
    cache = SoftLabelCache(tmp_path / "cache", _key())
    built = cache.build(teacher, data.train.images, 2, ViewReplay(3, 32, engine.StandardAugment(AUG)),
                        torch.device("cpu"), batch_size=100)
    assert built == [1, 2]
    for epoch in (1, 2):
        rec = cache.load(epoch, 10)
        for (e, i), row in live.seen.items():
            if e == epoch:
                torch.testing.assert_close(rec[i], row, atol=2e-2, rtol=1e-2)  # float16 storage
        drawn = {i for (e, i) in live.seen if e == epoch}
        left_out = [i for i in range(len(data.train)) if i not in drawn]  # the dropped last batch
        assert left_out and torch.isnan(rec[left_out]).all()
    # epochs draw different views, so their logits differ
    assert not torch.allclose(cache.load(1, 10).nan_to_num(), cache.load(2, 10).nan_to_num())


def test_training_from_the_cache_matches_training_with_the_live_teacher(data, teacher, tmp_path):
    torch.manual_seed(0)
    live = _train(data, tmp_path / "a", DistillObjective(teacher, [(0.5, KDLoss(4.0))], 0.5),
                  engine.StandardAugment(AUG))
    cache = SoftLabelCache(tmp_path / "cache", _key())
    cache.build(teacher, data.train.images, 2, ViewReplay(3, 32, engine.StandardAugment(AUG)),
                torch.device("cpu"))
    recorded = CachedTeacher(cache, 10, torch.device("cpu"))
    torch.manual_seed(0)
    cached = _train(data, tmp_path / "b", DistillObjective(None, [(0.5, KDLoss(4.0))], 0.5,
                                                           recorded=recorded),
                    engine.StandardAugment(AUG))
    for a, b in zip(live.history, cached.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)


def test_overlays_do_not_move_the_views_the_teacher_sees(data):
    """The overlay draws from its own generator: kd and kd+ig (clean teacher view) share views."""
    maps = torch.rand(len(data.train), 16, 16)
    ig = IGOverlay(maps, AUG, p=0.5, blend=0.5, clean_for_teacher=True)
    plain = engine.StandardAugment(AUG)
    g1, batches = engine.epoch_batches(5, 1, len(data.train), 32)
    g2, _ = engine.epoch_batches(5, 1, len(data.train), 32)
    for idx in batches:
        images = data.train.images[idx]
        mixed, clean = ig(images, idx, g1)
        assert torch.equal(clean, plain(images, idx, g2))
    assert not torch.equal(mixed, clean)


def test_a_cache_serves_its_own_key_only(data, teacher, tmp_path):
    replay = ViewReplay(3, 32, engine.StandardAugment(AUG))
    a = SoftLabelCache(tmp_path, _key())
    a.build(teacher, data.train.images, 1, replay, torch.device("cpu"))
    # a key with a tuple (a resized crop's scale range) reads back from its manifest as itself
    tupled = SoftLabelCache(tmp_path, _key(augment={"scale": (0.35, 1.0)}))
    tupled.build(teacher, data.train.images, 1, replay, torch.device("cpu"))
    assert tupled.recorded() == [1] and tupled.load(1, 10).shape == (len(data.train), 10)
    other_seed = SoftLabelCache(tmp_path, _key(seed=4))
    other_teacher = SoftLabelCache(tmp_path, _key(teacher="t2"))
    assert len({a.folder, other_seed.folder, other_teacher.folder}) == 3
    assert other_seed.recorded() == [] and other_teacher.recorded() == []  # never reused
    # a manifest whose key is not its folder's is refused, not read
    doc = json.loads((a.folder / "manifest.json").read_text())
    doc["key"]["seed"] = 99
    (a.folder / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(SoftLabelError, match="another teacher, data or augmentation.*delete it"):
        a.load(1, 10)


def test_an_interrupted_build_resumes_and_a_corrupt_epoch_is_recomputed(data, teacher, tmp_path):
    replay = ViewReplay(3, 32, engine.StandardAugment(AUG))
    cache = SoftLabelCache(tmp_path, _key())

    class Stop(Exception):
        pass

    def stop_after_two(done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        cache.build(teacher, data.train.images, 4, replay, torch.device("cpu"), progress=stop_after_two)
    assert cache.recorded() == [1, 2]
    first = cache.load(1, 10)
    assert cache.build(teacher, data.train.images, 4, replay, torch.device("cpu")) == [3, 4]
    (cache.folder / "epoch-0002.npz").write_bytes(b"garbage")
    with pytest.raises(SoftLabelError, match="epoch 2 are missing or corrupt"):
        cache.load(2, 10)
    assert cache.build(teacher, data.train.images, 4, replay, torch.device("cpu")) == [2]
    torch.testing.assert_close(cache.load(1, 10), first, equal_nan=True)


def test_more_classes_than_top_k_keep_the_top_logits_and_the_mean_of_the_rest(data, tmp_path):
    class Fixed(nn.Module):  # logits 0..9 for every image
        def forward(self, x):
            return torch.arange(10.0).repeat(len(x), 1)

    cache = SoftLabelCache(tmp_path, _key(topk=3))
    cache.build(Fixed(), data.train.images, 1, ViewReplay(3, 32, engine.StandardAugment(AUG)),
                torch.device("cpu"), topk=3)
    row = cache.load(1, 10)[0]
    assert row[7:].tolist() == [7.0, 8.0, 9.0]
    assert row[:7].tolist() == [3.0] * 7  # mean of 0..6


def test_recorded_soft_labels_refuse_terms_on_features(teacher):
    from edgekd.distill.losses import ATLoss

    with pytest.raises(ValueError, match="logits only; at need the teacher"):
        DistillObjective(None, [(1.0, ATLoss("a", "b"))], recorded=object())


def test_an_epoch_replayed_in_the_same_process_draws_the_same_overlays(data):
    """The cache replays epoch e with the run's own transform just before training runs it."""
    maps = torch.rand(len(data.train), 16, 16)
    ig = IGOverlay(maps, AUG, p=0.5, blend=0.5)
    runs = []
    for _ in range(2):
        g, batches = engine.epoch_batches(5, 1, len(data.train), 32)
        runs.append([ig(data.train.images[idx], idx, g) for idx in batches])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
