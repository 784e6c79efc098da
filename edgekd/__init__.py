"""edgekd: distil an image classifier into a small student and ship it to an edge device."""

from edgekd.version import __version__

__all__ = ["__version__"]
