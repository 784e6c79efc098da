"""Data sets as in-memory uint8 tensors with deterministic train / val / test splits."""

from edgekd.data.dataset import Dataset, Split, load_dataset, parse_dataset_spec

__all__ = ["Dataset", "Split", "load_dataset", "parse_dataset_spec"]
