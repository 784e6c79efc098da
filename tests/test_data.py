import numpy as np
import pytest
import torch

from edgekd.data import load_dataset
from edgekd.data.augment import AugmentSettings, random_crop_flip
from edgekd.errors import DataError
from tests.conftest import extract_cifar_subset


def test_digits_split_is_stratified_deterministic_and_disjoint():
    a = load_dataset("digits", 32)
    b = load_dataset("digits", 32)
    assert a.fingerprint() == b.fingerprint()
    assert a.train.images.shape[1:] == (3, 32, 32) and a.train.images.dtype == torch.uint8
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    # stratified: every class is in every split in proportion
    for split in (a.train, a.val, a.test):
        counts = np.bincount(split.labels.numpy(), minlength=10)
        assert counts.min() >= 0.8 * counts.mean()
    # disjoint: no image of test is a train image (digits has no exact duplicates across splits)
    train = {bytes(x.numpy()) for x in a.train.images}
    assert not any(bytes(x.numpy()) in train for x in a.test.images)
    # statistics recorded from the training split
    assert 0.2 < a.mean[0] < 0.4 and a.summary()["normalization"]["std"][0] > 0.2
    assert a.hflip is False  # flipping changes what a digit means


def test_digits_another_split_seed_changes_split():
    a, b = load_dataset("digits", 16, split_seed=0), load_dataset("digits", 16, split_seed=1)
    assert a.fingerprint() != b.fingerprint()


def test_unknown_dataset_lists_valid():
    with pytest.raises(DataError, match="digits, cifar10, imagefolder:PATH"):
        load_dataset("mnist")


def test_cifar10_offline_names_data_dir(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cifar10", data_dir=tmp_path / "nothing")


def test_imagefolder_real_images_other_size_and_classes(tmp_path):
    root = extract_cifar_subset(tmp_path / "folder", ["cat", "dog", "ship"], 20, 6, size=(40, 48))
    ds = load_dataset(f"imagefolder:{root}", input_size=24, val_fraction=0.2)
    assert ds.classes == ["cat", "dog", "ship"]
    assert ds.train.images.shape[1:] == (3, 24, 24)
    assert len(ds.train) == 48 and len(ds.val) == 12 and len(ds.test) == 18
    # a second load comes from the cache and is identical
    assert load_dataset(f"imagefolder:{root}", 24, val_fraction=0.2).fingerprint() == ds.fingerprint()


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "a" / "train" / "x").mkdir(parents=True)
    (tmp_path / "a" / "test" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="without images|one class"):
        load_dataset(f"imagefolder:{tmp_path / 'a'}")
    root = extract_cifar_subset(tmp_path / "b", ["cat", "dog"], 3, 2)
    (root / "test" / "dog").rename(root / "test" / "horse")
    with pytest.raises(DataError, match="train and test classes differ"):
        load_dataset(f"imagefolder:{root}")


def test_crop_and_flip_move_extra_channels_with_the_image():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(16, 3, 12, 12)
    stacked = torch.cat([img, img[:, :1]], dim=1)  # a 4th channel that must follow channel 0
    out = random_crop_flip(stacked, AugmentSettings(crop_padding=3, hflip=True), g)
    assert torch.equal(out[:, 3], out[:, 0])
    # something did move: not every sample is unchanged
    assert not torch.equal(out[:, :3], img)
