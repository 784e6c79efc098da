"""The one exception type that calibration/ raises for user mistakes."""

from __future__ import annotations


class CalibrationError(ValueError):
    """A calibration input or result is unusable; the message says how to fix it."""
