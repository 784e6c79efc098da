"""Single stages run on an existing run directory (`edgekd export RUN_DIR`, ...)."""

from __future__ import annotations

from pathlib import Path

from edgekd.config import apply_override, config_from_dict, validate
from edgekd.errors import RunDirError
from edgekd.pipeline.context import IG_DIR, Context, load_run_model
from edgekd.pipeline.rundir import RunDir
from edgekd.pipeline.stages import data as data_stage
from edgekd.pipeline.stages import export as export_stage
from edgekd.pipeline.stages.ig import compute_ig
from edgekd.pipeline.stages.select import apply_choice
from edgekd.runfiles import CONFIG
from edgekd.train import engine


def open_run(run_dir: str | Path) -> Context:
    """Reopen a finished run: its settings and its data set, without changing anything."""
    run = RunDir(run_dir)
    if not (run / CONFIG).exists():
        raise RunDirError(f"{run_dir} is not an edgekd run directory (no {CONFIG}): pass a run's folder")
    cfg = config_from_dict(run.read_config()["settings"])
    chosen = cfg.student.arch is None and run.stage_info("select").get("chosen")
    ctx = Context(cfg, run, engine.resolve_device("cpu"))
    data_stage.STAGE(ctx)
    if chosen:
        # Chosen by the run's latency budget: the reopened run is that student's (its size and
        # precision too), its budget spent (single stages neither select nor check it again).
        apply_choice(cfg, run.stage_info("select"), ctx.data.input_size)
        cfg.budget.latency_ms = cfg.budget.speedup = None
    return ctx


def export_run(run_dir: str | Path, opset: int | None = None, target: str | None = None,
               simplify: bool | None = None) -> dict:
    """Re-export a run's teacher and student (edgekd export); `target` picks opset and IR
    version (edgekd.config.targets), an explicit `opset` it cannot parse is refused."""
    ctx = open_run(run_dir)
    for name in ("teacher.pt", "student.pt"):
        if not (ctx.run / name).exists():
            raise RunDirError(f"{run_dir} has no {name}: finish the run first (edgekd compress --resume)")
    if target is not None:
        ctx.cfg.export.target = target
        if opset is None:
            ctx.cfg.export.opset = None  # the target's default, not the run's
    if opset is not None:
        ctx.cfg.export.opset = opset
    if simplify is not None:
        ctx.cfg.export.simplify = simplify
    validate(ctx.cfg)
    export_stage.STAGE(ctx)
    return ctx.run.stage_info("export")


def quantize_run(
    source: str | Path,
    out: str | Path | None = None,
    method: str = "minmax",
    max_drop: float = 1.0,
    exclude: tuple[str, ...] | list[str] = (),
    calib_size: int | None = None,
    calib: str | Path | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    seed: int | None = None,
    model: str = "student",
    auto_fallback: bool = False,
    diagnose: bool = False,
    qat_epochs: int = 0,
    qat_lr: float | None = None,
    qat_teacher: str = "teacher",
    reduce_range: bool = False,
    device: str | None = None,
    reporter=None,
) -> dict:
    """INT8 QDQ ONNX of a run's `model` (RUN_DIR) or of an exported .onnx file, with its
    accuracy on the test split against FP32 (edgekd quantize).

    A run writes its calibration set to RUN/calib/ (stratified over the training split,
    seeded with the run's seed); a lone .onnx file takes `calib` (an existing set) or builds
    one from `dataset` (default: the data set named in the model's metadata). `qat_epochs`
    runs the run's `qat` stage first (quantization-aware distillation of the student, on
    `device`) and quantizes its result, the drop still measured against student.onnx.
    """
    from edgekd.data import load_dataset
    from edgekd.export.onnx import read_contract
    from edgekd.export.quantize import (
        CALIB_DIR,
        int8_path,
        pixels,
        quantize_onnx,
        write_run_calibset,
    )

    source = Path(source)
    n = calib_size if calib_size is not None else 256
    reference = None
    if qat_epochs and not source.is_dir():
        raise RunDirError(f"--qat-epochs trains the PyTorch student with its teacher: pass the run "
                          f"directory {source.name} came from, not the .onnx file")
    if qat_epochs and (model != "student" or calib is not None):
        raise RunDirError("--qat-epochs fine-tunes the run's student on its own calibration set: "
                          "drop --model teacher / --calib")
    if source.is_dir():
        ctx = open_run(source)
        fp32 = ctx.run / f"{model}.onnx"
        if not fp32.is_file():
            raise RunDirError(f"{source} has no {model}.onnx: run `edgekd export {source}` first")
        data, seed = ctx.data, ctx.cfg.seed if seed is None else seed
        default_calib = ctx.run / CALIB_DIR
        if qat_epochs:
            fp32, reference = _qat_run(ctx, qat_epochs, qat_lr, qat_teacher, n, seed, device,
                                       reporter), fp32
    elif source.suffix == ".onnx" and source.is_file():
        fp32 = source
        contract = read_contract(fp32)
        spec = dataset or contract.get("dataset")
        if not spec:
            raise RunDirError(f"{source.name} does not say which data set it was trained on: "
                              "pass --dataset (digits | cifar10 | imagefolder:PATH)")
        size = int(contract["input_shape"][-1]) if contract.get("input_shape") else None
        data = load_dataset(spec, size, data_dir)
        seed = 0 if seed is None else seed
        default_calib = fp32.with_name(fp32.name.removesuffix(".onnx") + ".calib")
    else:
        raise RunDirError(f"{source} is neither a run directory nor an .onnx file: pass one of them")
    if calib is None:
        calib = default_calib
        write_run_calibset(calib, data, n, seed)
    target = Path(out) if out else int8_path(reference or fp32)
    info = quantize_onnx(fp32, target, calib, pixels(data.test.images), data.test.labels.numpy(),
                         method, max_drop, list(exclude), auto_fallback=auto_fallback,
                         diagnose=diagnose, reference=reference, reduce_range=reduce_range)
    info["model"] = str(reference or fp32)
    if reference is not None:
        info["qat"] = ctx.run.stage_info("qat")
    return info


def _qat_run(ctx: Context, epochs: int, lr: float | None, teacher: str, calib_size: int,
             seed: int, device: str | None, reporter) -> Path:
    """Run the `qat` stage on a reopened run; returns RUN/student.qat.onnx."""
    from edgekd.pipeline.stages import qat

    if not (ctx.run / "student.pt").is_file():
        raise RunDirError(f"{ctx.run.path} has no student.pt: finish the run first (edgekd compress --resume)")
    e = ctx.cfg.export
    e.int8, e.int8_qat_epochs, e.int8_qat_lr, e.int8_calib_size = True, epochs, lr, calib_size
    e.int8_qat_teacher = teacher
    ctx.cfg.seed = seed
    if device is not None:
        ctx.cfg.device = device
    validate(ctx.cfg)
    ctx.device = engine.resolve_device(ctx.cfg.device if device is not None else "cpu")
    if reporter is not None:
        ctx.reporter = reporter
    if "ig" in ctx.cfg.methods:
        from edgekd.pipeline.stages import ig

        ig.STAGE(ctx)  # its maps (valid: a skip) and their content id, for the overlays
    qat.STAGE(ctx)
    return ctx.run / qat.QAT_ONNX


def _teacher_run(run_dir: str | Path, device: str | None = None) -> Context:
    ctx = open_run(run_dir)
    if not (ctx.run / "teacher.pt").is_file():
        raise RunDirError(f"{run_dir} has no teacher.pt: run `edgekd compress --out {run_dir}` first "
                          "(it trains or loads the teacher)")
    if device is not None:
        ctx.cfg.device = device
        validate(ctx.cfg)
    ctx.device = engine.resolve_device(ctx.cfg.device)
    return ctx


def ig_compute_run(run_dir: str | Path, overrides: dict | None = None, device: str | None = None,
                   force: bool = False, progress=None) -> dict:
    """Compute, resume or check RUN/ig/ with the run's IG settings (`overrides`: dotted keys).

    Settings that differ from the run's make a cache that `compress` of this run will refuse
    as stale; that is how to study other settings without touching the run's record.
    """
    ctx = _teacher_run(run_dir, device)
    for key, value in (overrides or {}).items():
        if value is not None:
            apply_override(ctx.cfg, key, value)
    validate(ctx.cfg)
    result = compute_ig(ctx, force=force, progress=progress)
    doc = result.manifest
    return {
        "run": str(run_dir), "cache": str(ctx.ig_folder), "status": result.status,
        "maps": doc["shape"][0], "shape": doc["shape"], "dtype": doc["dtype"],
        "settings": doc["settings"], "computed_images": result.computed_images,
        "seconds": round(result.seconds, 3), "images_per_s": round(result.images_per_s, 3),
        "rows_per_forward": result.rows_per_forward, "world_size": result.world_size,
        "content_id": result.content_id, "notes": result.notes,
    }


def ig_show_run(run_dir: str | Path, samples: int = 10, out: str | Path | None = None) -> dict:
    """PNG grid (image | map | overlay) of `samples` training images of a run, classes in turn.

    The cache must belong to this run's training images and teacher (its settings may differ).
    """
    from edgekd.attribution.cache import MapCache, dataset_identity, weights_sha256
    from edgekd.attribution.show import grid_png, pick_indices

    ctx = _teacher_run(run_dir, "cpu")
    train = ctx.data.train
    teacher = load_run_model(ctx, "teacher")
    expected = {"teacher_sha256": weights_sha256(teacher),
                "dataset": dataset_identity(ctx.data.name, ctx.data.classes, train.images, train.labels)}
    recorded = (ctx.run.stage_info("ig") or {}).get("cache")
    folder = ctx.run / IG_DIR if recorded in (None, IG_DIR) else Path(recorded)
    maps = MapCache(folder).load(expected, check=("dataset", "teacher_sha256"))
    idx = pick_indices(train.labels, samples)
    captions = [f"#{i}  label {ctx.data.classes[int(train.labels[i])]}" for i in idx]
    path = Path(out) if out else ctx.run / "ig_grid.png"
    grid_png(path, train.images[idx], maps[idx], captions, blend=ctx.cfg.ig.blend)
    return {"png": str(path), "indices": idx}
