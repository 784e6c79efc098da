"""Retrieval mAP of penultimate features, as InDistill evaluates (database = train, queries = test)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgekd.data.dataset import Split
from edgekd.distill.hooks import FeatureTap
from edgekd.distill.methods import penultimate


@torch.no_grad()
def embed(model: nn.Module, split: Split, batch_size: int = 64) -> np.ndarray:
    """Penultimate features (the classifier's input) of every image, L2-normalised."""
    model.eval()
    path = penultimate(model)
    out = []
    for i in range(0, len(split), batch_size):
        x = split.images[i : i + batch_size].float().div(255.0)
        with FeatureTap(model, [path]) as tap:
            model(x)
        out.append(torch.nn.functional.normalize(tap[path].flatten(1), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def mean_average_precision(db: np.ndarray, db_labels: np.ndarray, queries: np.ndarray,
                           q_labels: np.ndarray, chunk: int = 256) -> float:
    """mAP in percent, ranking the database by cosine similarity to each query."""
    aps = []
    for i in range(0, len(queries), chunk):
        sim = queries[i : i + chunk] @ db.T
        order = np.argsort(-sim, axis=1, kind="stable")
        relevant = db_labels[order] == q_labels[i : i + chunk, None]
        hits = np.cumsum(relevant, axis=1)
        ranks = np.arange(1, db.shape[0] + 1)
        precision_at_hits = np.where(relevant, hits / ranks, 0.0)
        n_rel = relevant.sum(axis=1)
        aps.append(np.divide(precision_at_hits.sum(1), n_rel, out=np.zeros(len(n_rel)), where=n_rel > 0))
    return 100.0 * float(np.concatenate(aps).mean()) if aps else float("nan")


def retrieval_map(model: nn.Module, database: Split, queries: Split) -> float:
    return mean_average_precision(embed(model, database), database.labels.numpy(),
                                  embed(model, queries), queries.labels.numpy())
