"""Stage `data`: the data set at the run's input size, split and recorded in data.json."""

from __future__ import annotations

from edgekd.config import RunConfig
from edgekd.data import Dataset, load_dataset
from edgekd.data.augment import ResizedCropSettings
from edgekd.data.dataset import stratified_split
from edgekd.errors import ModelError
from edgekd.io import write_json
from edgekd.models.pretrained import is_pretrained_spec, pretrained_info
from edgekd.models.registry import default_input_size, min_input_size
from edgekd.pipeline.context import Context, augment_settings, on_main
from edgekd.pipeline.stage import Stage

DATA_JSON = "data.json"


def prepare_data(run_cfg: RunConfig, reporter=None) -> Dataset:
    """The run's data set at the run's input size, with the training subset applied."""
    cfg = run_cfg.data
    spec = run_cfg.teacher.checkpoint
    size = cfg.input_size or (pretrained_info(spec).input_size if is_pretrained_spec(spec)
                              else default_input_size(run_cfg.teacher.arch))
    for role, arch in (("teacher", run_cfg.teacher.arch), ("student", run_cfg.student.arch),
                       ("auxiliary teacher", run_cfg.distill.aux_teacher)):
        if arch and size < min_input_size(arch):
            raise ModelError(
                f"input size {size} is below what the {role} {arch} takes: its total stride is "
                f"{min_input_size(arch)}, so use --input-size {min_input_size(arch)} or more")
    progress = None
    if reporter is not None and hasattr(reporter, "on_progress"):
        def progress(done, total, what):
            reporter.on_progress("data", done, total, f"decoding {what}")
    small = run_cfg.student.input_size
    if small is not None:
        arch = run_cfg.student.arch
        if small > size:
            raise ModelError(f"--student-input-size {small} is above the run's input size {size}: "
                             "the student sees the teacher's images downscaled, never enlarged")
        if arch and small < min_input_size(arch):
            raise ModelError(f"--student-input-size {small} is below what the student {arch} takes: "
                             f"its total stride is {min_input_size(arch)}")
    data = load_dataset(cfg.dataset, size, cfg.data_dir, cfg.val_fraction, cfg.split_seed,
                        storage=cfg.storage, skip_bad_images=cfg.skip_bad_images, progress=progress)
    if cfg.train_subset is not None and cfg.train_subset < 1.0:
        seed = cfg.split_seed if cfg.subset_seed is None else cfg.subset_seed
        keep, _ = stratified_split(data.train.labels.numpy(), 1.0 - cfg.train_subset, seed)
        data.train = data.train.subset(keep)
        data.extra["train_subset"] = cfg.train_subset
    return data


class DataStage(Stage):
    """Always runs (loading is cheap next to every other stage): loads the data set unless the
    caller already did, and rewrites data.json."""

    name = "data"
    outputs = (DATA_JSON,)

    def __call__(self, ctx: Context) -> None:
        if ctx.data is None:
            ctx.data = prepare_data(ctx.cfg)
        data = ctx.data
        size = data.input_size
        aug = augment_settings(ctx)
        ctx.data_summary = {**data.summary(), "augmentation": {
            "kind": "resized_crop" if isinstance(aug, ResizedCropSettings) else "crop_pad",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in aug.__dict__.items()}}}
        on_main(lambda: write_json(ctx.run / DATA_JSON, ctx.data_summary))
        sizes = ctx.data_summary["sizes"]
        ctx.reporter.stage(
            "data", "done",
            f"{data.name}: {data.num_classes} classes, {sizes['train']}/{sizes['val']}/"
            f"{sizes['test']} train/val/test at {size}x{size}",
        )


STAGE = DataStage()
