"""scikit-learn's bundled handwritten digits (1,797 8x8 images): the embedded, offline default."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from edgekd.data.dataset import (
    Dataset,
    LoadRequest,
    Split,
    channel_stats,
    register_loader,
    resize_uint8,
    stratified_split,
)

TEST_FRACTION = 0.2


def load_digits_dataset(input_size: int, val_fraction: float, split_seed: int) -> Dataset:
    """Digits upsampled to input_size, grey copied to RGB, stratified 70/10/20 split."""
    bunch = load_digits()
    # Pixel values are 0..16; scale to 0..255 so every data set shares the uint8 convention.
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = torch.from_numpy(pixels)[:, None].repeat(1, 3, 1, 1)
    images = resize_uint8(images, input_size)
    labels = torch.from_numpy(bunch.target.astype(np.int64))

    rest, test = stratified_split(labels.numpy(), TEST_FRACTION, split_seed)
    # val_fraction is a fraction of the whole set, taken from what is not test.
    val_of_rest = val_fraction / (1 - TEST_FRACTION)
    train_r, val_r = stratified_split(labels[rest].numpy(), val_of_rest, split_seed)
    train, val = rest[train_r], rest[val_r]
    full = Split(images, labels)
    mean, std = channel_stats(images[train])
    return Dataset(
        name="digits",
        classes=[str(c) for c in bunch.target_names],
        train=full.subset(train),
        val=full.subset(val),
        test=full.subset(test),
        mean=mean,
        std=std,
        hflip=False,
        source="sklearn.datasets.load_digits (UCI ML hand-written digits, 8x8, bundled)",
        extra={"split_seed": split_seed},
    )


def _load(r: LoadRequest) -> Dataset:
    return load_digits_dataset(r.input_size, r.val_fraction, r.split_seed)


register_loader("digits", _load)
