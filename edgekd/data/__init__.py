"""Data sets as in-memory uint8 tensors with deterministic train / val / test splits.

Importing this package imports the loader modules, which register themselves with
edgekd.data.dataset (`register_loader`); load_dataset finds them there.
"""

from edgekd.data import cifar10, digits, imagefolder  # noqa: F401  (registers the loaders)
from edgekd.data.dataset import Dataset, Split, load_dataset, parse_dataset_spec

__all__ = ["Dataset", "Split", "load_dataset", "parse_dataset_spec"]
