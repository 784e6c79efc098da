"""`edgekd compress`: data -> teacher -> student -> ONNX export -> latency -> report.

Each stage reads and writes the run directory and is skipped when the ledger says its output
is valid for the current settings; training stages resume from their per-epoch checkpoint.
Later stages (attribution maps, InDistill warm-up, INT8) slot in between these.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from edgekd import __version__
from edgekd.config import RunConfig, validate
from edgekd.data import Dataset, load_dataset
from edgekd.data.augment import AugmentSettings
from edgekd.data.dataset import stratified_split
from edgekd.distill.indistill import InDistillObjective, auto_mapping, build_mapping
from edgekd.distill.losses import DistillObjective, KDLoss
from edgekd.distill.methods import LOSS_TERMS, build_terms, parse_pair
from edgekd.errors import ModelError
from edgekd.export.onnx import export_onnx, parity_check
from edgekd.io import atomic_path, sha256_file, write_json
from edgekd.models.profile import count_macs, count_params
from edgekd.models.registry import Classifier, create_model, default_input_size
from edgekd.pipeline.rundir import BENCH, METRICS, REPORT, SAMPLES, RunDir, stage_key
from edgekd.train import checkpoint, engine

WARMUP = "student.warmup.pt"
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
    device = engine.resolve_device(cfg.device)
    reporter = reporter or _Silent()
    t0 = time.perf_counter()
    # Everything that can fail on user input is checked before the run directory is touched.
    reporter.stage("data", "start", cfg.data.dataset)
    data = prepare_data(cfg)
    if cfg.teacher.checkpoint:
        checkpoint.load_model(cfg.teacher.checkpoint, cfg.teacher.arch, data.num_classes,
                              "teacher checkpoint")
    run = RunDir(out)
    status = run.open(cfg, resume=resume, force=force)
    ctx = Context(cfg, run, device, reporter, data=data)
    ctx.info["open"] = status
    stage_data(ctx)
    stage_teacher(ctx)
    stage_aux_teacher(ctx)
    stage_warmup(ctx)
    stage_student(ctx)
    if cfg.export.enabled:
        stage_export(ctx)
    if cfg.bench.enabled:
        stage_bench(ctx)
    report = build_report(ctx, wall_time_s=time.perf_counter() - t0)
    write_json(run / REPORT, report)
    return report


# ---- stages ------------------------------------------------------------------------------
def prepare_data(run_cfg: RunConfig) -> Dataset:
    """The run's data set at the run's input size, with the training subset applied."""
    cfg = run_cfg.data
    size = cfg.input_size or default_input_size(run_cfg.teacher.arch)
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
    write_json(ctx.run / "data.json", ctx.info["data"])
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


def _new_model(ctx: Context, role: str) -> Classifier:
    # Seeded per role so the student's init does not depend on whether the teacher was trained.
    torch.manual_seed(ctx.cfg.seed * 2 + (role == "student"))
    arch = getattr(ctx.cfg, role).arch
    return create_model(arch, ctx.data.num_classes, ctx.data.mean, ctx.data.std)


def _train(ctx: Context, stage: str, model, train_cfg, objective, key: str):
    ckpt_dir = ctx.run / "ckpt"
    ckpt_dir.mkdir(exist_ok=True)
    return engine.train(
        model, ctx.data.train, ctx.data.val, ctx.data.test, train_cfg,
        stage=stage, seed=ctx.cfg.seed, device=ctx.device, objective=objective,
        transform=engine.StandardAugment(_augment(ctx)),
        state_path=ckpt_dir / f"{stage}.state.pt", metrics_path=ctx.run / METRICS,
        settings_key=key, resume=True, tb_dir=ctx.run / "tb", callback=ctx.reporter,
    )


def stage_teacher(ctx: Context) -> None:
    tcfg = ctx.cfg.teacher
    data = ctx.data
    source = (
        {"checkpoint_sha256": sha256_file(tcfg.checkpoint)}
        if tcfg.checkpoint and Path(tcfg.checkpoint).is_file()
        else {"train": tcfg.train.__dict__}
    )
    key = stage_key("teacher", tcfg.arch, source, data.fingerprint(), ctx.cfg.seed,
                    ctx.device.type, _augment(ctx).__dict__)
    if ctx.run.stage_valid("teacher", key):
        ctx.reporter.stage("teacher", "skip", "teacher.pt is valid")
        return
    if tcfg.checkpoint:
        ctx.reporter.stage("teacher", "start", f"loading {tcfg.checkpoint}")
        model, meta = checkpoint.load_model(tcfg.checkpoint, tcfg.arch, data.num_classes, "teacher checkpoint")
        if meta.get("classes") and meta["classes"] != data.classes:
            raise ModelError(
                f"teacher checkpoint {tcfg.checkpoint} was trained on classes {meta['classes'][:5]}..., "
                f"not this data set's {data.classes[:5]}...: use a teacher of this data set"
            )
        model.to(ctx.device)
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
    checkpoint.save_model(model.cpu(), ctx.run / "teacher.pt", tcfg.arch, data.classes,
                          input_size=data.input_size, dataset=data.name, training=summary)
    ctx.run.mark_done("teacher", key, ["teacher.pt"], summary)
    (ctx.run / "ckpt" / "teacher.state.pt").unlink(missing_ok=True)
    ctx.reporter.stage("teacher", "done", f"test top-1 {summary['last_epoch']['test_acc']:.2f} %")


def _load_run_model(ctx: Context, name: str) -> Classifier:
    model, _ = checkpoint.load_model(ctx.run / f"{name}.pt", what=name)
    return model


def _frozen_teacher(ctx: Context, name: str = "teacher") -> Classifier:
    teacher = _load_run_model(ctx, name).to(ctx.device).eval()
    if ctx.cfg.student.train.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher


def stage_aux_teacher(ctx: Context) -> None:
    """InDistill's auxiliary teacher: a mid-size model distilled from the teacher with KD."""
    cfg = ctx.cfg
    arch = cfg.distill.aux_teacher
    if arch is None:
        return
    tcfg = cfg.student.train
    key = stage_key("aux", arch, tcfg.__dict__, cfg.kd.__dict__, ctx.run.output_hash("teacher.pt"),
                    ctx.data.fingerprint(), cfg.seed, ctx.device.type, _augment(ctx).__dict__)
    if ctx.run.stage_valid("aux", key):
        ctx.reporter.stage("aux", "skip", f"{AUX} is valid")
        return
    ctx.reporter.stage("aux", "start", f"distilling the auxiliary teacher {arch}")
    torch.manual_seed(cfg.seed * 2 + 7)
    model = create_model(arch, ctx.data.num_classes, ctx.data.mean, ctx.data.std)
    objective = DistillObjective(_frozen_teacher(ctx), [(cfg.kd.alpha, KDLoss(cfg.kd.temperature))],
                                 task_weight=1.0 - cfg.kd.alpha)
    result = _train(ctx, "aux", model, tcfg, objective, key)
    summary = {"arch": arch, **result.summary()}
    checkpoint.save_model(model.cpu(), ctx.run / AUX, arch, ctx.data.classes,
                          input_size=ctx.data.input_size, dataset=ctx.data.name, training=summary)
    ctx.run.mark_done("aux", key, [AUX], summary)
    (ctx.run / "ckpt" / "aux.state.pt").unlink(missing_ok=True)
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
                    ctx.device.type, _augment(ctx).__dict__)
    if ctx.run.stage_valid("warmup", key):
        ctx.reporter.stage("warmup", "skip", f"{WARMUP} is valid")
        return
    model = _new_model(ctx, "student")
    teacher = _frozen_teacher(ctx, source.removesuffix(".pt"))
    pairs = ([parse_pair(p, "distill.indistill_layers") for p in d.indistill_layers]
             or auto_mapping(model, d.indistill_max_layers))
    mapping = build_mapping(model.to(ctx.device), teacher, pairs, ctx.data.input_size)
    objective = InDistillObjective(teacher, mapping, d.indistill_a, d.indistill_b)
    ctx.reporter.stage("warmup", "start", "InDistill over " + ", ".join(
        f"{p.student} ({p.teacher_channels}->{p.student_channels} ch)" for p in mapping)
        + f", {objective.epochs} epochs")
    # Constant lr as the InDistill code; one optimizer for the whole curriculum.
    wcfg = dataclasses.replace(scfg.train, epochs=objective.epochs, lr=d.indistill_lr,
                               schedule="constant")
    result = _train(ctx, "warmup", model, wcfg, objective, key)
    summary = {
        "mapping": [dataclasses.asdict(p) for p in mapping],
        "curriculum": [{"layer": p.student, "epochs": [a, b]} for p, (a, b) in zip(mapping, objective.spans, strict=True)],
        "final_mse": result.last["train_loss"],
    }
    checkpoint.save_model(model.cpu(), ctx.run / WARMUP, scfg.arch, ctx.data.classes,
                          input_size=ctx.data.input_size, dataset=ctx.data.name, warmup=summary)
    ctx.run.mark_done("warmup", key, [WARMUP], summary)
    (ctx.run / "ckpt" / "warmup.state.pt").unlink(missing_ok=True)
    ctx.reporter.stage("warmup", "done", f"feature MSE {summary['final_mse']:.4f}")


def stage_student(ctx: Context) -> None:
    cfg = ctx.cfg
    scfg = cfg.student
    methods = cfg.method.split("+")
    init = ctx.run.output_hash(WARMUP) if "indistill" in methods else None
    key = stage_key("student", scfg.arch, scfg.train.__dict__, cfg.method, cfg.kd.__dict__,
                    cfg.distill.__dict__, init, ctx.run.output_hash("teacher.pt"),
                    ctx.data.fingerprint(), cfg.seed, ctx.device.type, _augment(ctx).__dict__)
    if ctx.run.stage_valid("student", key):
        ctx.reporter.stage("student", "skip", "student.pt is valid")
        return
    ctx.reporter.stage("student", "start", f"distilling {scfg.arch} with {cfg.method}")
    model = _new_model(ctx, "student")
    if init is not None:
        model = _load_run_model(ctx, WARMUP.removesuffix(".pt"))
    ls = scfg.train.label_smoothing
    if any(m in LOSS_TERMS for m in methods):
        teacher = _frozen_teacher(ctx)
        terms, task_weight = build_terms(methods, cfg, model, teacher, ctx.data.input_size)
        objective = DistillObjective(teacher, terms, task_weight=task_weight, label_smoothing=ls)
    else:
        objective = engine.CrossEntropy(ls)
    result = _train(ctx, "student", model, scfg.train, objective, key)
    summary = {"method": cfg.method, **result.summary()}
    checkpoint.save_model(model.cpu(), ctx.run / "student.pt", scfg.arch, ctx.data.classes,
                          input_size=ctx.data.input_size, dataset=ctx.data.name,
                          method=cfg.method, training=summary)
    ctx.run.mark_done("student", key, ["student.pt"], summary)
    (ctx.run / "ckpt" / "student.state.pt").unlink(missing_ok=True)
    ctx.reporter.stage("student", "done", f"test top-1 {summary['last_epoch']['test_acc']:.2f} %")


def stage_export(ctx: Context) -> None:
    opset = ctx.cfg.export.opset
    e = ctx.cfg.export
    key = stage_key("export", ctx.run.output_hash("teacher.pt"), ctx.run.output_hash("student.pt"),
                    opset, e.parity_atol, e.min_agreement, ctx.data.fingerprint())
    if ctx.run.stage_valid("export", key):
        ctx.reporter.stage("export", "skip", "student.onnx is valid")
        return
    info = {}
    for name in ("student", "teacher"):
        ctx.reporter.stage("export", "start", f"{name}.onnx (opset {opset})")
        model = _load_run_model(ctx, name)
        meta = {"classes": ctx.data.classes, "source_sha256": ctx.run.output_hash(f"{name}.pt"),
                "arch": getattr(ctx.cfg, name).arch, "role": name}
        export_onnx(model, ctx.run / f"{name}.onnx", ctx.data.input_size, opset, meta)
        info[name] = parity_check(model, ctx.run / f"{name}.onnx", ctx.data.test.images,
                                  e.parity_atol, e.min_agreement)
    ctx.run.mark_done("export", key, ["student.onnx", "teacher.onnx"], {"parity": info})
    p = info["student"]
    ctx.reporter.stage("export", "done", f"parity: max |diff| {p['max_abs_diff']:.2e}, "
                       f"top-1 agreement {p['top1_agreement']:.2f} %")


def stage_bench(ctx: Context) -> None:
    """Latency of both ONNX models on this machine with deploy/'s harness, on real test images.

    bench.json holds one `edgekd.bench` document (deploy/SCHEMA.md) per model.
    """
    import numpy as np

    from deploy.bench import run_bench
    from deploy.harness import MeasureSettings

    b = ctx.cfg.bench
    key = stage_key("bench", ctx.run.output_hash("student.onnx"), ctx.run.output_hash("teacher.onnx"),
                    b.__dict__, ctx.data.fingerprint())
    if ctx.run.stage_valid("bench", key):
        ctx.reporter.stage("bench", "skip", "bench.json is valid")
        return
    threads = b.threads or os.cpu_count() or 1
    settings = MeasureSettings(warmup_s=b.warmup_s, warmup_iters=3, min_iters=b.min_iters,
                               min_s=b.min_s)
    # Real test images, enough to fill the largest batch twice; kept for on-device runs too.
    samples = ctx.data.test.images[: max(b.batch_sizes) * 2].float().div(255.0).numpy()
    with atomic_path(ctx.run / SAMPLES) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, samples)
    docs = {}
    for name in ("teacher", "student"):
        ctx.reporter.stage("bench", "start", f"{name}: batch {', '.join(map(str, b.batch_sizes))}, "
                           f"ONNX Runtime CPU, {threads} threads")
        docs[name] = run_bench(str(ctx.run / f"{name}.onnx"), "onnxruntime", str(ctx.run / SAMPLES),
                               b.batch_sizes, settings, {"intra_op_threads": threads})
    doc = {"schema": "edgekd.run-bench", "schema_version": 1, "where": "local", "models": docs}
    write_json(ctx.run / BENCH, doc)
    ctx.run.mark_done("bench", key, [BENCH, SAMPLES], {})
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
        "accuracy_best_epoch": round(training["best_epoch"]["test_acc"], 2),
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
                                "teacher.onnx", AUX, WARMUP, METRICS, BENCH, SAMPLES, "data.json")
        if (ctx.run / name).exists()
    }
    return {
        "edgekd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": ctx.cfg.method,
        "dataset": {k: v for k, v in ctx.info["data"].items() if k != "classes"} | {
            "classes": ctx.data.classes},
        "seed": ctx.cfg.seed,
        "device": str(ctx.device),
        "teacher": teacher,
        "student": student,
        "compression_factor": round(teacher["params"] / student["params"], 2),
        "mac_reduction": round(teacher["macs"] / student["macs"], 2),
        "export": ctx.run.stage_info("export"),
        "latency": _latency_summary(ctx),
        "artifacts": artifacts,
        "wall_time_s": round(wall_time_s, 1),
        "status": ctx.info.get("open"),
    }

