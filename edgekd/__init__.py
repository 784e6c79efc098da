"""edgekd: distil an image classifier into a small student and ship it to an edge device."""

__version__ = "0.1.0"
