"""edgekd's version, in a bottom-layer module so that every layer can read it (edgekd/__init__.py
belongs to the top layer; see docs/layers.md)."""

__version__ = "0.1.0"
