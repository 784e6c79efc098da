"""Integrated-gradient attribution maps of the teacher: computed once with Captum, cached by
dataset index with a manifest (`cache`), sharded over torchrun ranks (`compute`), overlaid on
training images (`overlay`) and shown as a PNG grid (`show`)."""

from edgekd.attribution.cache import CacheError, MapCache, StaleCacheError
from edgekd.attribution.compute import ComputeResult, compute_maps
from edgekd.attribution.ig import IGSettings, MapComputer
from edgekd.attribution.overlay import IGOverlay

__all__ = ["CacheError", "ComputeResult", "IGOverlay", "IGSettings", "MapCache", "MapComputer",
           "StaleCacheError", "compute_maps"]
