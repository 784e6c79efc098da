"""Model families: a registry of teachers and students, each with params, MACs and input size."""

from edgekd.models.registry import (
    Classifier,
    ModelInfo,
    create_model,
    describe,
    is_known,
    list_models,
)

__all__ = ["Classifier", "ModelInfo", "create_model", "describe", "is_known", "list_models"]
