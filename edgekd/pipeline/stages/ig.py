"""Stage `ig`: integrated-gradient maps of the frozen teacher for every training image, in
index order, in RUN/ig/ (edgekd.attribution), and the overlay transform that feeds them to
the student. The cache decides validity itself (its manifest says what made it), so this
stage is skipped when the cache is complete and matches, and resumes at its first missing
chunk otherwise."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from edgekd import distributed
from edgekd.io import folder_lock, sha256_json
from edgekd.pipeline.context import IG_DIR, Context, Reporter, augment_settings, load_run_model
from edgekd.pipeline.stage import Stage
from edgekd.train import engine

IG_FILES = (f"{IG_DIR}/manifest.json", f"{IG_DIR}/maps.npy", f"{IG_DIR}/scales.npy")


class _IGProgress:
    """Turns the IG computation's plan and per-chunk progress into reporter calls."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter

    def on_plan(self, info: dict) -> None:
        for note in info["notes"]:
            self.reporter.stage("ig", "note", note)
        resumed = f", resuming at chunk {info['chunks'] - info['todo_chunks'] + 1}" if info["resumed"] else ""
        ranks = f" x {info['world_size']} ranks" if info["world_size"] > 1 else ""
        self.reporter.stage("ig", "start", f"{info['todo_images']} of {info['images']} maps on "
                            f"{info['device']}{ranks}, {info['rows_per_forward']} rows per forward{resumed}")

    def on_chunk(self, done_images: int, total_images: int, images_per_s: float) -> None:
        show = getattr(self.reporter, "on_progress", None)
        if show is not None:
            show("ig", done_images, total_images, f"{images_per_s:.1f} img/s")


def ig_folder(ctx: Context, ident: dict) -> Path:
    """RUN/ig/, or with `ig.cache_dir` (experiments: one teacher, many runs) a folder under it
    named by what makes the maps, so runs that need the same maps share one computation."""
    if ctx.cfg.ig.cache_dir:
        return Path(ctx.cfg.ig.cache_dir) / sha256_json(ident)[:16]
    return ctx.run / IG_DIR


@contextmanager
def _exclusive(folder: Path):
    """One process at a time fills a shared cache (parallel experiment runs); torchrun ranks
    coordinate among themselves instead."""
    if distributed.requested():
        yield
        return
    with folder_lock(folder):
        yield


def compute_ig(ctx: Context, force: bool = False, progress=None):
    """The IG stage's work (also `edgekd ig compute`): returns the ComputeResult."""
    from edgekd.attribution.cache import dataset_identity
    from edgekd.attribution.compute import compute_maps, identity
    from edgekd.attribution.ig import IGSettings

    cfg = ctx.cfg
    g = cfg.ig
    settings = IGSettings.from_config(g, cfg.seed)
    teacher = load_run_model(ctx, "teacher")
    train = ctx.data.train
    dataset = dataset_identity(ctx.data.name, ctx.data.classes, train.images, train.labels)
    folder = ig_folder(ctx, identity(teacher, dataset, settings, g.dtype, g.chunk_size))
    with _exclusive(folder):
        result = compute_maps(folder, teacher, train, dataset, settings, dtype=g.dtype,
                              chunk_size=g.chunk_size, rows=g.internal_batch_size, device=ctx.device,
                              force=force, progress=progress or _IGProgress(ctx.reporter))
    ctx.ig_id = result.content_id
    ctx.ig_folder = folder
    doc = result.manifest
    distributed.barrier()  # rank 0 has recorded the last chunks in the manifest
    if result.rank == 0 and not ctx.run.stage_valid("ig", result.content_id):
        inside = folder == ctx.run / IG_DIR
        info = {"cache": IG_DIR if inside else str(folder.resolve()),
                "manifest": IG_FILES[0] if inside else str(folder.resolve() / "manifest.json"),
                "content_id": result.content_id,
                "settings": doc["settings"], "dtype": doc["dtype"], "shape": doc["shape"],
                "teacher_sha256": doc["teacher_sha256"], "stats": doc.get("stats", {}),
                "overlay": {"p": g.p, "blend": g.blend,
                            "space": "raw [0, 1] student input, after crop/flip of image and map together"}}
        ctx.run.mark_done("ig", result.content_id, list(IG_FILES) if inside else [], info)
    if result.status == "valid":
        ctx.reporter.stage("ig", "skip", f"{folder} is valid ({doc['shape'][0]} maps)")
    else:
        ctx.reporter.stage("ig", "done", f"{result.computed_images} maps in {result.seconds:.1f} s "
                           f"({result.images_per_s:.1f} img/s)")
    return result


def overlay_transform(ctx: Context, clean_for_teacher: bool = False) -> engine.BatchTransform:
    """The training transform of the `ig` method: crop/flip of image and map together, then
    the overlay; the maps are re-verified (every chunk's checksum) as they load."""
    from edgekd.attribution.cache import CacheError, MapCache
    from edgekd.attribution.overlay import IGOverlay
    from edgekd.data.store import ImageStore

    cache = MapCache(ctx.ig_folder)
    # a data set read from disk gets its maps read from disk too
    maps = cache.load(relative=True, lazy=isinstance(ctx.data.train.images, ImageStore))
    if MapCache.content_id(cache.manifest()) != ctx.ig_id:
        raise CacheError(f"{cache.folder} changed while the run was using it: rerun with --resume")
    return IGOverlay(maps, augment_settings(ctx), ctx.cfg.ig.p, ctx.cfg.ig.blend, clean_for_teacher)


class IGStage(Stage):
    name = "ig"
    outputs = IG_FILES

    def applies(self, ctx: Context) -> bool:
        return "ig" in ctx.cfg.methods

    def __call__(self, ctx: Context) -> None:
        if self.applies(ctx):
            compute_ig(ctx)


STAGE = IGStage()
