"""Fill an IG cache: resumable, chunk by chunk, sharded over torchrun ranks.

Under `torchrun --nproc-per-node N` (WORLD_SIZE > 1) the ranks join a process group (gloo on
CPU, NCCL on CUDA), rank 0 prepares the cache, and the incomplete chunks are dealt out round
by round: in each round rank r computes the r-th next chunk, flushes it, and all ranks gather
the checksums, which rank 0 records in the manifest. A single process is the same loop with
one rank. The teacher is frozen and never wrapped in DDP: there is nothing to synchronise.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from edgekd.attribution.cache import CacheError, MapCache, StaleCacheError, weights_sha256
from edgekd.attribution.ig import IGSettings, MapComputer
from edgekd.data.dataset import Split
from edgekd.errors import EdgeKDError


class Progress(Protocol):
    def on_plan(self, info: dict) -> None: ...
    def on_chunk(self, done_images: int, total_images: int, images_per_s: float) -> None: ...


@dataclass
class ComputeResult:
    status: str  # "valid" (nothing to do) | "computed" | "resumed" | "repaired"
    manifest: dict
    content_id: str
    computed_images: int = 0
    seconds: float = 0.0
    rows_per_forward: int = 0
    world_size: int = 1
    notes: list[str] = field(default_factory=list)
    rank: int = 0

    @property
    def images_per_s(self) -> float:
        return self.computed_images / self.seconds if self.seconds > 0 else 0.0


def identity(teacher: nn.Module, dataset: dict, settings: IGSettings, dtype: str,
             chunk_size: int) -> dict:
    """What a cache for this teacher, split and settings must record to be reused."""
    n = dataset["size"]
    _c, h, w = dataset["image_shape"]
    return {
        "teacher_sha256": weights_sha256(teacher),
        "dataset": dataset,
        "settings": settings.identity(),
        "dtype": dtype,
        "shape": [n, h, w],
        "chunk_size": chunk_size,
    }


# ---- torch.distributed, only when torchrun started us --------------------------------------
@dataclass
class _Group:
    rank: int = 0
    world: int = 1
    created: bool = False

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _join(device: torch.device) -> tuple[_Group, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Group(), device
    import torch.distributed as dist

    if device.type == "cuda":
        # One GPU per rank; NCCL's object collectives use the current device.
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Group(dist.get_rank(), dist.get_world_size(), created), device


# ---- the loop ------------------------------------------------------------------------------
def compute_maps(
    folder: str | Path,
    teacher: nn.Module,
    split: Split,
    dataset: dict,
    settings: IGSettings,
    *,
    dtype: str = "float16",
    chunk_size: int = 256,
    rows: int | None = None,
    device: torch.device | str = "cpu",
    force: bool = False,
    progress: Progress | None = None,
) -> ComputeResult:
    """Make `folder` hold the maps of `split` (un-augmented, in index order) for `teacher`.

    A complete, matching, undamaged cache is left as it is; a partial one resumes at its
    first incomplete chunk; one of another teacher, data set or settings is refused
    (StaleCacheError) unless `force`.
    """
    group, device = _join(torch.device(device))
    try:
        return _compute(Path(folder), teacher, split, dataset, settings, dtype, chunk_size, rows,
                        device, force, progress, group)
    finally:
        group.close()


def _compute(folder, teacher, split, dataset, settings, dtype, chunk_size, rows, device, force,
             progress, group: _Group) -> ComputeResult:
    ident = identity(teacher, dataset, settings, dtype, chunk_size)
    cache = MapCache(folder)
    # Rank 0 alone opens, checks and (re)creates the files; the others learn the outcome, an
    # error included, so that no rank waits forever on a collective the others never reach.
    plan: dict
    if group.rank == 0:
        try:
            doc, notes = cache.prepare(ident, force)
            plan = {"doc": doc, "notes": notes}
        except EdgeKDError as e:
            plan = {"error": (type(e).__name__, str(e))}
        plan = group.broadcast(plan)
    else:
        plan = group.broadcast(None)
    if "error" in plan:
        kind, msg = plan["error"]
        raise {"StaleCacheError": StaleCacheError}.get(kind, CacheError)(msg)
    doc, notes = plan["doc"], plan["notes"]
    lay = cache.layout(doc)
    todo = [c for c in range(lay.chunks) if str(c) not in doc["chunks"]]
    was_partial = bool(doc["chunks"]) and bool(todo)
    if not todo:
        if group.rank == 0 and not doc.get("complete"):
            cache.record(doc, {}, complete=True)
        return ComputeResult("valid", doc, MapCache.content_id(doc), world_size=group.world,
                             notes=notes, rank=group.rank)

    computer = MapComputer(teacher, settings, device, rows, input_size=lay.w)
    if progress and group.rank == 0:
        progress.on_plan({
            "images": lay.n, "todo_images": sum(lay.span(c)[1] - lay.span(c)[0] for c in todo),
            "chunks": lay.chunks, "todo_chunks": len(todo), "resumed": was_partial, "notes": notes,
            "rows_per_forward": computer.rows, "world_size": group.world, "device": str(device),
        })
    writer = cache.open_for_writing(doc)
    t0 = time.perf_counter()
    computed = 0
    by_rank = [0] * group.world  # chunks each rank computed, for the record
    done_images = lay.n - sum(lay.span(c)[1] - lay.span(c)[0] for c in todo)
    for r in range(0, len(todo), group.world):
        mine = todo[r + group.rank] if r + group.rank < len(todo) else None
        result = None
        if mine is not None:
            a, b = lay.span(mine)
            idx = torch.arange(a, b)
            maps = computer(split.images[a:b], split.labels[a:b], idx)
            result = (mine, writer.write(mine, maps))
        # The round's checksums reach rank 0 only after every rank flushed its chunk.
        gathered = group.gather(result)
        for rank, x in enumerate(gathered):
            by_rank[rank] += x is not None
        finished = {c: digest for c, digest in (x for x in gathered if x)}
        for c in finished:
            a, b = lay.span(c)
            computed += b - a
            done_images += b - a
        last = r + group.world >= len(todo)
        if group.rank == 0:
            elapsed = time.perf_counter() - t0
            info = {"stats": {"seconds": round(elapsed, 3), "images": computed,
                              "images_per_s": round(computed / max(elapsed, 1e-9), 3),
                              "rows_per_forward": computer.rows, "world_size": group.world,
                              "chunks_by_rank": by_rank, "device": device.type}} if last else {}
            cache.record(doc, finished, complete=last, **info)
            if progress:
                progress.on_chunk(done_images, lay.n, computed / max(elapsed, 1e-9))
        else:
            doc["chunks"].update({str(c): d for c, d in finished.items()})
            doc["complete"] = last
    seconds = time.perf_counter() - t0
    status = "repaired" if notes and was_partial else "resumed" if was_partial else "computed"
    return ComputeResult(status, doc, MapCache.content_id(doc), computed, seconds, computer.rows,
                         group.world, notes, group.rank)
