"""The exception types that deploy/ raises for problems a user can fix."""

from __future__ import annotations


class DeployError(ValueError):
    """A deploy input (model, inputs file, setting) is unusable; the message says how to fix it."""


class RunnerUnavailable(RuntimeError):
    """A backend or execution provider is not installed or not usable here; the message says
    what to install."""
