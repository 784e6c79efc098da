"""`edgekd compress`: data -> teacher -> IG maps -> student -> ONNX export -> latency -> report.

Each stage reads and writes the run directory and is skipped when the ledger says its output
is valid for the current settings; training stages resume from their per-epoch checkpoint,
the IG maps from their first incomplete chunk. Later stages (INT8) slot in between these.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from edgekd import __version__, distributed
from edgekd.config import (
    NORMS,
    RunConfig,
    TeacherConfig,
    recipe_record,
    validate,
)
from edgekd.data import Dataset, load_dataset
from edgekd.data.augment import AugmentSettings
from edgekd.data.dataset import stratified_split
from edgekd.distill.indistill import InDistillObjective, auto_mapping, build_mapping, warmup_epochs
from edgekd.distill.losses import DistillObjective, KDLoss, PKTLoss
from edgekd.distill.methods import LOSS_TERMS, build_terms, parse_pair, penultimate
from edgekd.errors import EdgeKDError, ModelError
from edgekd.export.onnx import export_onnx, parity_check
from edgekd.io import sha256_file, sha256_json, write_json
from edgekd.models.profile import count_macs, count_params
from edgekd.models.registry import Classifier, create_model, default_input_size, min_input_size
from edgekd.pipeline.rundir import BENCH, METRICS, REPORT, SAMPLE_LABELS, SAMPLES, RunDir, stage_key
from edgekd.train import checkpoint, engine

WARMUP = "student.warmup.pt"
IG_DIR = "ig"
AUX = "aux_teacher.pt"


class Reporter(engine.Callback, Protocol):
    def stage(self, name: str, status: str, detail: str = "") -> None: ...


class _Silent:
    def stage(self, name, status, detail=""): ...
    def on_epoch_start(self, stage, epoch, epochs, steps): ...
    def on_step(self, stage, step, loss, acc, ips): ...
    def on_epoch_end(self, stage, record): ...


@dataclass
class Context:
    cfg: RunConfig
    run: RunDir
    device: torch.device
    reporter: Reporter
    data: Dataset | None = None
    info: dict = field(default_factory=dict)


def compress(
    cfg: RunConfig, out: str | Path, *, resume: bool = False, force: bool = False,
    reporter: Reporter | None = None,
) -> dict:
    """Run the whole pipeline into `out`; return the report (also written to report.json)."""
    validate(cfg)
    # Under `torchrun` every rank runs this function: training stages split each batch over the
    # ranks (edgekd.distributed), rank 0 alone writes the run directory, the others wait.
    device = distributed.setup(engine.resolve_device(cfg.device))
    reporter = reporter if reporter is not None and distributed.is_main() else _Silent()
    t0 = time.perf_counter()
    # Everything that can fail on user input is checked before the run directory is touched.
    reporter.stage("data", "start", cfg.data.dataset)
    data = prepare_data(cfg)
    if cfg.teacher.checkpoint:
        load_teacher_checkpoint(cfg.teacher, data)
    # A warm-up that cannot be mapped or leaves no epochs is refused here.
    plan = epoch_plan(cfg, data.num_classes, data.input_size)
    run = RunDir(out)
    status = _on_main(lambda: run.open(cfg, resume=resume, force=force))
    ctx = Context(cfg, run, device, reporter, data=data)
    ctx.info["open"], ctx.info["epoch_plan"] = status, plan
    stage_data(ctx)
    stage_teacher(ctx)
    stage_ig(ctx)
    stage_aux_teacher(ctx)
    stage_warmup(ctx)
    stage_student(ctx)

    def finish() -> dict:
        if cfg.export.enabled:
            stage_export(ctx)
        if cfg.export.enabled and (cfg.export.int8 or cfg.export.int8_teacher):
            stage_quantize(ctx)
        if cfg.bench.enabled:
            stage_bench(ctx)
        report = build_report(ctx, wall_time_s=time.perf_counter() - t0)
        write_json(run / REPORT, report)
        return report

    return _on_main(finish)


def _on_main(fn):
    """Run `fn` on rank 0 only and hand its result (or its error) to every rank; just `fn()`
    in a single process. Ranks never wait on a rank that has failed."""
    if not distributed.active():
        return fn()
    outcome: tuple = ("ok", None)
    if distributed.is_main():
        try:
            outcome = ("ok", fn())
        except Exception as e:  # re-raised below, on every rank
            outcome = ("error", e)
    kind, value = distributed.broadcast_object(outcome)
    if kind == "error":
        if distributed.is_main():
            raise value
        raise EdgeKDError(f"rank 0 failed: {value}")
    return value


# ---- stages ------------------------------------------------------------------------------
def prepare_data(run_cfg: RunConfig) -> Dataset:
    """The run's data set at the run's input size, with the training subset applied."""
    cfg = run_cfg.data
    size = cfg.input_size or default_input_size(run_cfg.teacher.arch)
    for role, arch in (("teacher", run_cfg.teacher.arch), ("student", run_cfg.student.arch),
                       ("auxiliary teacher", run_cfg.distill.aux_teacher)):
        if arch and size < min_input_size(arch):
            raise ModelError(
                f"input size {size} is below what the {role} {arch} takes: its total stride is "
                f"{min_input_size(arch)}, so use --input-size {min_input_size(arch)} or more")
    data = load_dataset(cfg.dataset, size, cfg.data_dir, cfg.val_fraction, cfg.split_seed)
    if cfg.train_subset is not None and cfg.train_subset < 1.0:
        seed = cfg.split_seed if cfg.subset_seed is None else cfg.subset_seed
        keep, _ = stratified_split(data.train.labels.numpy(), 1.0 - cfg.train_subset, seed)
        data.train = data.train.subset(keep)
        data.extra["train_subset"] = cfg.train_subset
    return data


def stage_data(ctx: Context) -> None:
    if ctx.data is None:
        ctx.data = prepare_data(ctx.cfg)
    data = ctx.data
    size = data.input_size
    ctx.info["data"] = data.summary()
    _on_main(lambda: write_json(ctx.run / "data.json", ctx.info["data"]))
    sizes = ctx.info["data"]["sizes"]
    ctx.reporter.stage(
        "data", "done",
        f"{data.name}: {data.num_classes} classes, {sizes['train']}/{sizes['val']}/{sizes['test']} "
        f"train/val/test at {size}x{size}",
    )


def _augment(ctx: Context) -> AugmentSettings:
    d = ctx.cfg.data
    pad = d.crop_padding if d.crop_padding is not None else ctx.data.input_size // 8
    return AugmentSettings(crop_padding=pad, hflip=ctx.data.hflip if d.hflip is None else d.hflip)


def input_norm(ctx: Context, role: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a new model of `role` normalises its raw [0, 1] input with."""
    norm = getattr(ctx.cfg, role).norm
    return (ctx.data.mean, ctx.data.std) if norm == "data" else NORMS[norm]


def _new_model(ctx: Context, role: str) -> Classifier:
    # Seeded per role so the student's init does not depend on whether the teacher was trained.
    torch.manual_seed(ctx.cfg.seed * 2 + (role == "student"))
    arch = getattr(ctx.cfg, role).arch
    return create_model(arch, ctx.data.num_classes, *input_norm(ctx, role))


def _warmup_pairs(cfg: RunConfig, student: torch.nn.Module, teacher: torch.nn.Module,
                  input_size: int) -> list[tuple[str, str]]:
    d = cfg.distill
    return ([parse_pair(p, "distill.indistill_layers") for p in d.indistill_layers]
            or auto_mapping(student, teacher, d.indistill_max_layers, input_size))


def epoch_plan(cfg: RunConfig, num_classes: int, input_size: int) -> dict:
    """How the student's epochs (`student.train.epochs`) split: the InDistill warm-up's come
    out of the same budget, so every method of an ablation trains the same number of epochs
    (the InDistill code counts its warm-up inside its 60). Refused when nothing is left."""
    total = cfg.student.train.epochs
    warm = 0
    if "indistill" in cfg.method.split("+"):
        d = cfg.distill
        # Random weights suffice: the mapping depends on the architectures only.
        teacher = create_model(d.aux_teacher or cfg.teacher.arch, num_classes)
        n = len(_warmup_pairs(cfg, create_model(cfg.student.arch, num_classes), teacher, input_size))
        warm = warmup_epochs(n, d.indistill_a, d.indistill_b)
        if total - warm < 1:
            spans = " + ".join(str(d.indistill_a + d.indistill_b * (i + 1)) for i in range(n))
            raise EdgeKDError(
                f"the InDistill warm-up takes {warm} of the student's {total} epochs ({spans}) "
                f"and leaves none for distillation: pass --epochs {warm + 1} or more, or shorten "
                "the curriculum (--set distill.indistill_a=1 --set distill.indistill_b=0)"
            )
    return {"warmup": warm, "distill": total - warm, "total": total}


def _train(ctx: Context, stage: str, model, train_cfg, objective, key: str,
           transform: engine.BatchTransform | None = None, evaluate_every_epoch: bool = True):
    ckpt_dir = ctx.run / "ckpt"
    ckpt_dir.mkdir(exist_ok=True)
    return engine.train(
        model, ctx.data.train, ctx.data.val, ctx.data.test, train_cfg,
        stage=stage, seed=ctx.cfg.seed, device=ctx.device, objective=objective,
        transform=transform or engine.StandardAugment(_augment(ctx)),
        state_path=ckpt_dir / f"{stage}.state.pt", metrics_path=ctx.run / METRICS,
        settings_key=key, resume=True, tb_dir=ctx.run / "tb", callback=ctx.reporter,
        evaluate_every_epoch=evaluate_every_epoch,
    )


def load_teacher_checkpoint(tcfg: TeacherConfig, data: Dataset) -> Classifier:
    """The given teacher, refused (ModelError) unless it fits the run: architecture, classes
    and the input size it was trained at."""
    model, meta = checkpoint.load_model(tcfg.checkpoint, tcfg.arch, data.num_classes, "teacher checkpoint")
    if meta.get("classes") and meta["classes"] != data.classes:
        raise ModelError(
            f"teacher checkpoint {tcfg.checkpoint} was trained on classes {meta['classes'][:5]}..., "
            f"not this data set's {data.classes[:5]}...: use a teacher of this data set"
        )
    if meta.get("input_size") and meta["input_size"] != data.input_size:
        raise ModelError(
            f"teacher checkpoint {tcfg.checkpoint} was trained at {meta['input_size']}x"
            f"{meta['input_size']}, this run is at {data.input_size}x{data.input_size}: "
            f"pass --input-size {meta['input_size']}"
        )
    return model


def stage_teacher(ctx: Context) -> None:
    tcfg = ctx.cfg.teacher
    data = ctx.data
    source = (
        {"checkpoint_sha256": sha256_file(tcfg.checkpoint)}
        if tcfg.checkpoint and Path(tcfg.checkpoint).is_file()
        else {"train": tcfg.train.__dict__}
    )
    key = stage_key("teacher", tcfg.arch, source, data.fingerprint(), ctx.cfg.seed,
                    ctx.device.type, _augment(ctx).__dict__,
                    *([tcfg.norm] if tcfg.norm != "data" and not tcfg.checkpoint else []))
    if ctx.run.stage_valid("teacher", key):
        ctx.reporter.stage("teacher", "skip", "teacher.pt is valid")
        return
    if tcfg.checkpoint:
        ctx.reporter.stage("teacher", "start", f"loading {tcfg.checkpoint}")
        model = load_teacher_checkpoint(tcfg, data).to(ctx.device)
        acc, _ = engine.evaluate(model, data.test, ctx.device)
        val_acc, _ = engine.evaluate(model, data.val, ctx.device)
        summary = {"source": str(tcfg.checkpoint), "last_epoch": {"test_acc": acc, "val_acc": val_acc},
                   "best_epoch": {"test_acc": acc, "val_acc": val_acc, "selected_on": "given"}}
    else:
        ctx.reporter.stage("teacher", "start", f"training {tcfg.arch}")
        model = _new_model(ctx, "teacher")
        result = _train(ctx, "teacher", model, tcfg.train,
                        engine.CrossEntropy(tcfg.train.label_smoothing), key)
        summary = {"source": "trained", **result.summary()}
    def save():
        checkpoint.save_model(model.cpu(), ctx.run / "teacher.pt", tcfg.arch, data.classes,
                              input_size=data.input_size, dataset=data.name, training=summary)
        ctx.run.mark_done("teacher", key, ["teacher.pt"], summary)
        (ctx.run / "ckpt" / "teacher.state.pt").unlink(missing_ok=True)

    _on_main(save)
    ctx.reporter.stage("teacher", "done", f"test top-1 {summary['last_epoch']['test_acc']:.2f} %")


def _load_run_model(ctx: Context, name: str) -> Classifier:
    model, _ = checkpoint.load_model(ctx.run / f"{name}.pt", what=name)
    return model


def _frozen_teacher(ctx: Context, name: str = "teacher") -> Classifier:
    teacher = _load_run_model(ctx, name).to(ctx.device).eval()
    if ctx.cfg.student.train.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher


# ---- IG maps -------------------------------------------------------------------------------
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


def stage_ig(ctx: Context) -> None:
    """Integrated-gradient maps of the frozen teacher for every training image, in index order,
    into RUN/ig/ (edgekd.attribution); skipped when the cache there is complete and matches."""
    if "ig" in ctx.cfg.method.split("+"):
        compute_ig(ctx)


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
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def compute_ig(ctx: Context, force: bool = False, progress=None):
    """The IG stage's work (also `edgekd ig compute`): returns the ComputeResult."""
    from edgekd.attribution.cache import dataset_identity
    from edgekd.attribution.compute import compute_maps, identity
    from edgekd.attribution.ig import IGSettings

    cfg = ctx.cfg
    g = cfg.ig
    settings = IGSettings.from_config(g, cfg.seed)
    teacher = _load_run_model(ctx, "teacher")
    train = ctx.data.train
    dataset = dataset_identity(ctx.data.name, ctx.data.classes, train.images, train.labels)
    folder = ig_folder(ctx, identity(teacher, dataset, settings, g.dtype, g.chunk_size))
    with _exclusive(folder):
        result = compute_maps(folder, teacher, train, dataset, settings, dtype=g.dtype,
                              chunk_size=g.chunk_size, rows=g.internal_batch_size, device=ctx.device,
                              force=force, progress=progress or _IGProgress(ctx.reporter))
    ctx.info["ig"] = result.content_id
    ctx.info["ig_folder"] = folder
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


def _overlay(ctx: Context, clean_for_teacher: bool = False) -> engine.BatchTransform:
    from edgekd.attribution.cache import CacheError, MapCache
    from edgekd.attribution.overlay import IGOverlay

    cache = MapCache(ctx.info["ig_folder"])
    maps = cache.load(relative=True)  # re-verified: every chunk's checksum
    if MapCache.content_id(cache.manifest()) != ctx.info["ig"]:
        raise CacheError(f"{cache.folder} changed while the run was using it: rerun with --resume")
    return IGOverlay(maps, _augment(ctx), ctx.cfg.ig.p, ctx.cfg.ig.blend, clean_for_teacher)


def stage_aux_teacher(ctx: Context) -> None:
    """InDistill's auxiliary teacher, a mid-size model made from the teacher: with KD from
    scratch (`distill.aux_method=kd`), or as the InDistill code makes it (`pkt`): a
    cross-entropy baseline, then trained on with PKT from the teacher plus the task loss.
    It is then pruned for the warm-up and (`distill.aux_teaches=both`) teaches stage 2 too."""
    cfg = ctx.cfg
    d = cfg.distill
    arch = d.aux_teacher
    if arch is None:
        return
    tcfg = cfg.student.train
    how = cfg.kd.__dict__ if d.aux_method == "kd" else {"pkt_weight": d.pkt_weight}
    key = stage_key("aux", arch, d.aux_method, how, tcfg.__dict__, cfg.student.norm,
                    ctx.run.output_hash("teacher.pt"), ctx.data.fingerprint(), cfg.seed,
                    ctx.device.type, _augment(ctx).__dict__)
    if ctx.run.stage_valid("aux", key):
        ctx.reporter.stage("aux", "skip", f"{AUX} is valid")
        return
    ctx.reporter.stage("aux", "start", f"making the auxiliary teacher {arch} ({d.aux_method})")
    torch.manual_seed(cfg.seed * 2 + 7)
    model = create_model(arch, ctx.data.num_classes, *input_norm(ctx, "student"))
    teacher = _frozen_teacher(ctx)
    extra: dict = {}
    if d.aux_method == "kd":
        objective = DistillObjective(teacher, [(cfg.kd.alpha, KDLoss(cfg.kd.temperature))],
                                     task_weight=1.0 - cfg.kd.alpha)
    else:
        # A finished baseline's state file makes this a no-op on resume, so an interruption
        # in the PKT part does not retrain the baseline.
        base = _train(ctx, "aux_ce", model, tcfg, engine.CrossEntropy(tcfg.label_smoothing), key)
        extra["baseline"] = base.summary()
        objective = DistillObjective(
            teacher, [(d.pkt_weight, PKTLoss(penultimate(model), penultimate(teacher)))],
            label_smoothing=tcfg.label_smoothing)
    result = _train(ctx, "aux", model, tcfg, objective, key)
    summary = {"arch": arch, "method": d.aux_method, **extra, **result.summary()}
    def save():
        checkpoint.save_model(model.cpu(), ctx.run / AUX, arch, ctx.data.classes,
                              input_size=ctx.data.input_size, dataset=ctx.data.name, training=summary)
        ctx.run.mark_done("aux", key, [AUX], summary)
        for stage in ("aux_ce", "aux"):
            (ctx.run / "ckpt" / f"{stage}.state.pt").unlink(missing_ok=True)

    _on_main(save)
    ctx.reporter.stage("aux", "done", f"test top-1 {summary['last_epoch']['test_acc']:.2f} %")


def stage_warmup(ctx: Context) -> None:
    """InDistill stage 1: layer-wise curriculum feature distillation (edgekd.distill.indistill)."""
    cfg = ctx.cfg
    if "indistill" not in cfg.method.split("+"):
        return
    d, scfg = cfg.distill, cfg.student
    indistill = {k: v for k, v in d.__dict__.items() if k.startswith("indistill")}
    source = AUX if d.aux_teacher else "teacher.pt"
    key = stage_key("warmup", scfg.arch, scfg.train.__dict__, indistill, source,
                    ctx.run.output_hash(source), ctx.data.fingerprint(), cfg.seed,
                    ctx.device.type, _augment(ctx).__dict__, scfg.norm)
    if ctx.run.stage_valid("warmup", key):
        ctx.reporter.stage("warmup", "skip", f"{WARMUP} is valid")
        return
    model = _new_model(ctx, "student")
    teacher = _frozen_teacher(ctx, source.removesuffix(".pt"))
    pairs = _warmup_pairs(cfg, model, teacher, ctx.data.input_size)
    mapping = build_mapping(model.to(ctx.device), teacher, pairs, ctx.data.input_size)
    objective = InDistillObjective(teacher, mapping, d.indistill_a, d.indistill_b)
    ctx.reporter.stage("warmup", "start", "InDistill over " + ", ".join(
        f"{p.student} ({p.teacher_channels}->{p.student_channels} ch)" for p in mapping)
        + f", {objective.epochs} epochs")
    # Constant lr as the InDistill code; one optimizer for the whole curriculum.
    wcfg = dataclasses.replace(scfg.train, epochs=objective.epochs, lr=d.indistill_lr,
                               schedule="constant")
    # The classifier head does not train in the warm-up: only its last epoch is evaluated.
    result = _train(ctx, "warmup", model, wcfg, objective, key, evaluate_every_epoch=False)
    summary = {
        "mapping": [dataclasses.asdict(p) for p in mapping],
        "curriculum": [{"layer": p.student, "epochs": [a, b]} for p, (a, b) in zip(mapping, objective.spans, strict=True)],
        "final_mse": result.last["train_loss"],
    }
    def save():
        checkpoint.save_model(model.cpu(), ctx.run / WARMUP, scfg.arch, ctx.data.classes,
                              input_size=ctx.data.input_size, dataset=ctx.data.name, warmup=summary)
        ctx.run.mark_done("warmup", key, [WARMUP], summary)
        (ctx.run / "ckpt" / "warmup.state.pt").unlink(missing_ok=True)

    _on_main(save)
    ctx.reporter.stage("warmup", "done", f"feature MSE {summary['final_mse']:.4f}")


def stage_student(ctx: Context) -> None:
    cfg = ctx.cfg
    scfg = cfg.student
    methods = cfg.method.split("+")
    plan = ctx.info["epoch_plan"]  # checked by compress before the run directory was opened
    init = ctx.run.output_hash(WARMUP) if "indistill" in methods else None
    # The auxiliary teacher teaches stage 2 as well, as in the InDistill paper and code.
    source = AUX if cfg.distill.aux_teacher and cfg.distill.aux_teaches == "both" else "teacher.pt"
    uses_teacher = any(m in LOSS_TERMS for m in methods)
    # With overlays the student depends on the maps themselves (their content id), not only
    # on the settings that made them.
    ig = [cfg.ig.__dict__, ctx.info["ig"]] if "ig" in methods else []
    key = stage_key("student", scfg.arch, scfg.train.__dict__, cfg.method, cfg.kd.__dict__,
                    cfg.distill.__dict__, init, ctx.run.output_hash("teacher.pt"),
                    ctx.data.fingerprint(), cfg.seed, ctx.device.type, _augment(ctx).__dict__, *ig,
                    scfg.norm, plan, *([source, ctx.run.output_hash(source)] if source == AUX else []))
    if ctx.run.stage_valid("student", key):
        ctx.reporter.stage("student", "skip", "student.pt is valid")
        return
    teaching = f" from {source.removesuffix('.pt')}" if uses_teacher else ""
    ctx.reporter.stage("student", "start", f"distilling {scfg.arch} with {cfg.method}{teaching}, "
                       f"{plan['distill']} of {plan['total']} epochs")
    model = _new_model(ctx, "student")
    if init is not None:
        model = _load_run_model(ctx, WARMUP.removesuffix(".pt"))
    ls = scfg.train.label_smoothing
    if uses_teacher:
        teacher = _frozen_teacher(ctx, source.removesuffix(".pt"))
        terms, task_weight = build_terms(methods, cfg, model, teacher, ctx.data.input_size)
        objective = DistillObjective(teacher, terms, task_weight=task_weight, label_smoothing=ls)
    else:
        objective = engine.CrossEntropy(ls)
    clean = uses_teacher and cfg.distill.teacher_input == "clean"
    transform = _overlay(ctx, clean_for_teacher=clean) if "ig" in methods else None
    train_cfg = dataclasses.replace(scfg.train, epochs=plan["distill"])
    result = _train(ctx, "student", model, train_cfg, objective, key, transform)
    summary = {"method": cfg.method, "teacher": source, "epoch_plan": plan, **result.summary()}
    def save():
        checkpoint.save_model(model.cpu(), ctx.run / "student.pt", scfg.arch, ctx.data.classes,
                              input_size=ctx.data.input_size, dataset=ctx.data.name,
                              method=cfg.method, training=summary)
        ctx.run.mark_done("student", key, ["student.pt"], summary)
        (ctx.run / "ckpt" / "student.state.pt").unlink(missing_ok=True)

    _on_main(save)
    ctx.reporter.stage("student", "done", f"test top-1 {summary['last_epoch']['test_acc']:.2f} %")


def stage_export(ctx: Context) -> None:
    """Both models to ONNX for the configured target (opset, IR version), optionally
    simplified, each followed by the parity check against PyTorch on the test split."""
    from edgekd.export.targets import resolve_opset

    e = ctx.cfg.export
    opset, ir_version = resolve_opset(e.target, e.opset)
    key = stage_key("export", ctx.run.output_hash("teacher.pt"), ctx.run.output_hash("student.pt"),
                    opset, e.parity_atol, e.min_agreement, ctx.data.fingerprint(),
                    *([e.target, ir_version, e.simplify] if (e.target, e.simplify) != ("cpu", False) else []))
    if ctx.run.stage_valid("export", key):
        ctx.reporter.stage("export", "skip", "student.onnx is valid")
        return
    info = {}
    files = []
    for name in ("student", "teacher"):
        ctx.reporter.stage("export", "start", f"{name}.onnx ({e.target}: opset {opset}, IR {ir_version}"
                           f"{', simplified' if e.simplify else ''})")
        model = _load_run_model(ctx, name)
        meta = {"classes": ctx.data.classes, "source_sha256": ctx.run.output_hash(f"{name}.pt"),
                "arch": getattr(ctx.cfg, name).arch, "role": name, "target": e.target,
                "dataset": ctx.data.name}
        contract = export_onnx(model, ctx.run / f"{name}.onnx", ctx.data.input_size, opset, meta,
                               ir_version=ir_version, simplify=e.simplify)
        files += [f"{name}.onnx"] + ([contract["external_data"]] if contract["external_data"] else [])
        # An INT8 file quantized from the previous export no longer matches this one.
        (ctx.run / f"{name}.int8.onnx").unlink(missing_ok=True)
        info[name] = parity_check(model, ctx.run / f"{name}.onnx", ctx.data.test.images,
                                  e.parity_atol, e.min_agreement)
        if contract.get("simplified"):
            info[name]["simplified"] = contract["simplified"]
    target = {"target": e.target, "opset": opset, "ir_version": ir_version}
    ctx.run.mark_done("export", key, files, {"parity": info, **target})
    p = info["student"]
    ctx.reporter.stage("export", "done", f"parity: max |diff| {p['max_abs_diff']:.2e}, "
                       f"top-1 agreement {p['top1_agreement']:.2f} %")


def stage_quantize(ctx: Context) -> None:
    """INT8 QDQ ONNX of the student (and of the teacher with export.int8_teacher) with ONNX
    Runtime static calibration on RUN/calib/; over the accuracy budget the run stops."""
    from edgekd.export.quantize import (
        CALIB_DIR,
        int8_path,
        pixels,
        quantize_onnx,
        write_run_calibset,
    )

    e = ctx.cfg.export
    names = ["student"] + (["teacher"] if e.int8_teacher else [])
    key = stage_key("quantize", *[ctx.run.output_hash(f"{n}.onnx") for n in names], e.int8_method,
                    e.int8_calib_size, e.int8_max_drop, e.int8_exclude, ctx.cfg.seed,
                    ctx.data.fingerprint())
    if ctx.run.stage_valid("quantize", key):
        ctx.reporter.stage("int8", "skip", "student.int8.onnx is valid")
        return
    ctx.reporter.stage("int8", "start", f"{e.int8_method} calibration on {e.int8_calib_size} "
                       "training images")
    calib = write_run_calibset(ctx.run / CALIB_DIR, ctx.data, e.int8_calib_size, ctx.cfg.seed)
    x, y = pixels(ctx.data.test.images), ctx.data.test.labels.numpy()
    info = {}
    for name in names:
        info[name] = quantize_onnx(ctx.run / f"{name}.onnx", int8_path(ctx.run / f"{name}.onnx"),
                                   ctx.run / CALIB_DIR, x, y, e.int8_method, e.int8_max_drop,
                                   e.int8_exclude)
        info[name]["out_path"] = int8_path(f"{name}.onnx").name
        info[name]["calibration"]["dir"] = CALIB_DIR
    files = [f"{CALIB_DIR}/calib.json", f"{CALIB_DIR}/images.npy", f"{CALIB_DIR}/labels.npy",
             *[int8_path(f"{n}.onnx").name for n in names]]
    ctx.run.mark_done("quantize", key, files, {"calibration": {"count": calib["count"],
                      "seed": calib["seed"]}, **info})
    a = info["student"]["accuracy"]
    ctx.reporter.stage("int8", "done", f"student top-1 {a['fp32_top1']:.2f} % -> {a['int8_top1']:.2f} % "
                       f"(-{a['drop_pp']:.2f} pp, budget {e.int8_max_drop} pp)")


def stage_bench(ctx: Context) -> None:
    """Latency of both ONNX models on this machine with deploy/'s harness, on real test images.

    bench.json holds one `edgekd.bench` document (deploy/SCHEMA.md) per model.
    """
    from deploy.bench import run_bench
    from deploy.harness import MeasureSettings
    from edgekd.pipeline.samples import save_npy, test_samples

    b = ctx.cfg.bench
    key = stage_key("bench", ctx.run.output_hash("student.onnx"), ctx.run.output_hash("teacher.onnx"),
                    b.__dict__, ctx.data.fingerprint())
    if ctx.run.stage_valid("bench", key):
        ctx.reporter.stage("bench", "skip", "bench.json is valid")
        return
    threads = b.threads or os.cpu_count() or 1
    settings = MeasureSettings(warmup_s=b.warmup_s, warmup_iters=3, min_iters=b.min_iters,
                               min_s=b.min_s)
    # Real test images, enough to fill the largest batch twice; kept, with their labels, for
    # on-device runs and accuracy checks (edgekd deploy).
    samples, labels = test_samples(ctx.data, max(b.batch_sizes) * 2)
    save_npy(ctx.run / SAMPLES, samples)
    save_npy(ctx.run / SAMPLE_LABELS, labels)
    docs = {}
    for name in ("teacher", "student"):
        ctx.reporter.stage("bench", "start", f"{name}: batch {', '.join(map(str, b.batch_sizes))}, "
                           f"ONNX Runtime CPU, {threads} threads")
        docs[name] = run_bench(str(ctx.run / f"{name}.onnx"), "onnxruntime", str(ctx.run / SAMPLES),
                               b.batch_sizes, settings, {"intra_op_threads": threads})
    doc = {"schema": "edgekd.run-bench", "schema_version": 1, "where": "local", "models": docs}
    write_json(ctx.run / BENCH, doc)
    ctx.run.mark_done("bench", key, [BENCH, SAMPLES, SAMPLE_LABELS], {})
    ctx.reporter.stage("bench", "done", f"{len(b.batch_sizes)} batch sizes, {threads} threads")


# ---- report ------------------------------------------------------------------------------
def _model_entry(ctx: Context, role: str) -> dict:
    model = _load_run_model(ctx, role)
    arch = getattr(ctx.cfg, role).arch
    training = ctx.run.stage_info(role)
    return {
        "arch": arch,
        "params": count_params(model),
        "macs": count_macs(model, ctx.data.input_size),
        "accuracy": round(training["last_epoch"]["test_acc"], 2),
        # Without a validation split (`--recipe paper`) the best epoch could only be chosen on
        # the test split itself: no figure rather than an optimistic one.
        "accuracy_best_epoch": (round(training["best_epoch"]["test_acc"], 2)
                                if training["best_epoch"].get("selected_on") in ("val", "given")
                                else None),
        # Every epoch the model trained, split into stages (the warm-up counts for a student).
        "epochs": training.get("epoch_plan") or {"total": training.get("epochs")},
        "training": training,
    }


def _latency_summary(ctx: Context) -> dict:
    f = ctx.run / BENCH
    if not f.exists():
        return {}
    doc = json.loads(f.read_text())
    out: dict = {}
    for role, entry in doc["models"].items():
        out[role] = {
            f"batch_{r['batch_size']}": {
                "p50_ms": r["latency_ms"]["p50"], "p90_ms": r["latency_ms"]["p90"],
                "mean_ms": r["latency_ms"]["mean"], "throughput_ips": r["throughput_ips"],
            }
            for r in entry["results"]
        }
    student = doc["models"]["student"]
    out["backend"] = (f"onnxruntime {student['runner'].get('version', '')} CPU, "
                      f"{student['runner'].get('intra_op_threads')} threads")
    out["cpu"] = (student["environment"].get("cpu") or {}).get("model")
    return out


def build_report(ctx: Context, wall_time_s: float) -> dict:
    teacher, student = _model_entry(ctx, "teacher"), _model_entry(ctx, "student")
    artifacts = {
        name: name for name in ("config.yaml", "teacher.pt", "student.pt", "student.onnx",
                                "teacher.onnx", "student.int8.onnx", "teacher.int8.onnx", AUX, WARMUP, METRICS, BENCH, SAMPLES, SAMPLE_LABELS, "data.json",
                                *IG_FILES)
        if (ctx.run / name).exists()
    }
    return {
        "edgekd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": ctx.cfg.method,
        "recipe": recipe_record(ctx.cfg),
        "dataset": {k: v for k, v in ctx.info["data"].items() if k != "classes"} | {
            "classes": ctx.data.classes},
        "seed": ctx.cfg.seed,
        "device": str(ctx.device),
        "teacher": teacher,
        "student": student,
        "compression_factor": round(teacher["params"] / student["params"], 2),
        "mac_reduction": round(teacher["macs"] / student["macs"], 2),
        "export": ctx.run.stage_info("export"),
        **({"int8": ctx.run.stage_info("quantize")} if ctx.run.stage_info("quantize") else {}),
        **({"ig": ctx.run.stage_info("ig")} if "ig" in ctx.cfg.method.split("+") else {}),
        "latency": _latency_summary(ctx),
        "artifacts": artifacts,
        "wall_time_s": round(wall_time_s, 1),
        "status": ctx.info.get("open"),
    }

