"""User-facing errors: one line, naming the fix; the CLI prints them without a traceback."""


class EdgeKDError(Exception):
    """A mistake the user can fix (bad path, wrong name, mismatched checkpoint...)."""


class DataError(EdgeKDError):
    """The data set is missing, empty or inconsistent."""


class ModelError(EdgeKDError):
    """Unknown model name, or a checkpoint that does not fit the model."""


class RunDirError(EdgeKDError):
    """The run directory holds something that conflicts with the request."""


class BenchError(EdgeKDError):
    """A model to measure is missing, of an unknown kind, or cannot run with the settings given."""


class ShipError(EdgeKDError):
    """Shipping a run to a device failed (unreachable, refused, missing libraries, no space,
    a crash there); nothing half-done is left that a later deploy would trust."""


class SelectError(EdgeKDError):
    """A latency budget that cannot be met or set (edgekd.selection)."""


class BudgetError(EdgeKDError):
    """The final student measured over its latency budget on the target."""
