"""Stage `qat`: quantization-aware distillation before INT8 (export.int8_qat_epochs > 0).

The trained student is fake-quantized where the INT8 graph quantizes it (edgekd.export.qat),
its activation ranges fixed at the PTQ calibration's, and fine-tuned with the run's
distillation loss (the method's teacher terms and IG overlays; cross-entropy alone when the
method has no teacher) with BatchNorm frozen. The result, RUN/student.qat.pt and its export
RUN/student.qat.onnx, is what the `quantize` stage quantizes; the accuracy drop is still
measured against the student as trained (student.onnx).
"""

from __future__ import annotations

import dataclasses

import torch

from edgekd.distill.losses import DistillObjective, KDLoss
from edgekd.distill.methods import LOSS_TERMS
from edgekd.pipeline.context import (
    Context,
    augment_settings,
    frozen_teacher,
    load_run_model,
    on_main,
    train_stage,
)
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage
from edgekd.pipeline.stages.student import STUDENT, student_objective
from edgekd.train import checkpoint

QAT_PT, QAT_ONNX = "student.qat.pt", "student.qat.onnx"


def qat_settings(ctx: Context):
    """The fine-tuning's TrainConfig: the student's, shorter, at a tenth of its learning rate
    (or export.int8_qat_lr), and without the per-epoch BatchNorm recalibration, which would
    undo the frozen statistics the fake quantization folds into the weights."""
    e, train = ctx.cfg.export, ctx.cfg.student.train
    return dataclasses.replace(train, epochs=e.int8_qat_epochs, bn_recalibration=0,
                               lr=e.int8_qat_lr if e.int8_qat_lr is not None else train.lr / 10)


def _teacher(ctx: Context) -> str | None:
    """Who teaches the fine-tuning: `teacher`, `student` (the FP32 student), or None (the
    run's method distils nothing and the run's teacher was asked for)."""
    if ctx.cfg.export.int8_qat_teacher == "student":
        return "student"
    return "teacher" if any(m in LOSS_TERMS for m in ctx.cfg.methods) else None


def symmetric_activations(ctx: Context) -> bool:
    # As the PTQ places them (edgekd.export.quantize): symmetric for TensorRT's explicit mode.
    from edgekd.config.targets import runs_tensorrt

    return runs_tensorrt(ctx.cfg.export.target)


class QATStage(Stage):
    name = "qat"
    outputs = (QAT_PT, QAT_ONNX)

    def applies(self, ctx: Context) -> bool:
        e = ctx.cfg.export
        return e.enabled and e.int8 and e.int8_qat_epochs > 0

    def check(self, ctx: Context) -> None:
        from edgekd.export.quantize import calibration_indices

        calibration_indices(ctx.data, ctx.cfg.export.int8_calib_size, ctx.cfg.seed)

    def key(self, ctx: Context) -> str:
        from edgekd.config.targets import resolve_opset

        cfg, e = ctx.cfg, ctx.cfg.export
        methods = cfg.methods
        teacher = [cfg.kd.__dict__, cfg.distill.__dict__, ctx.run.output_hash("teacher.pt")] \
            if _teacher(ctx) == "teacher" else [cfg.kd.__dict__, _teacher(ctx)]
        ig = [cfg.ig.__dict__, ctx.ig_id] if "ig" in methods else []
        return stage_key("qat", ctx.run.output_hash(STUDENT), qat_settings(ctx).__dict__, cfg.method,
                         *teacher, *ig, e.int8_calib_size, symmetric_activations(ctx), cfg.seed,
                         ctx.data.fingerprint(), ctx.device.type, augment_settings(ctx).__dict__,
                         resolve_opset(e.target, e.opset), e.parity_atol, e.min_agreement)

    def run(self, ctx: Context, key: str) -> None:
        from edgekd.export.qat import FrozenBatchNormObjective, attach
        from edgekd.export.quantize import calibration_indices, pixels

        cfg, e = ctx.cfg, ctx.cfg.export
        train_cfg = qat_settings(ctx)
        teacher = _teacher(ctx)
        loss = {"teacher": cfg.method, "student": "kd from the FP32 student",
                None: "cross-entropy"}[teacher]
        how = {"teacher": f"with {cfg.method}'s loss from the teacher",
               "student": "distilled from the FP32 student",
               None: f"without a teacher ({cfg.method} distils nothing): plain fake-quant "
                     "fine-tuning"}[teacher]
        ctx.reporter.stage("qat", "start", f"{e.int8_qat_epochs} epochs of quantization-aware training "
                           f"{how}, lr {train_cfg.lr:g}")
        model = load_run_model(ctx, STUDENT.removesuffix(".pt")).to(ctx.device)
        idx = calibration_indices(ctx.data, e.int8_calib_size, cfg.seed)
        calib = torch.from_numpy(pixels(ctx.data.train.images[idx])).to(ctx.device)
        fake = attach(model, calib, symmetric=symmetric_activations(ctx))
        if teacher == "student":
            fp32 = frozen_teacher(ctx, STUDENT.removesuffix(".pt"))
            objective = DistillObjective(fp32, [(cfg.kd.alpha, KDLoss(cfg.kd.temperature))],
                                         task_weight=1.0 - cfg.kd.alpha,
                                         label_smoothing=cfg.student.train.label_smoothing)
            transform = None  # the standard augmentation: the overlays belong to the teacher's loss
        else:
            objective, transform = student_objective(ctx, model, train_cfg=train_cfg)
        result = train_stage(ctx, "qat", model, train_cfg, FrozenBatchNormObjective(objective), key,
                             transform)
        fake.remove()
        summary = {"epochs": e.int8_qat_epochs, "lr": train_cfg.lr, "teacher": teacher,
                   "loss": loss, "fake_quant": fake.summary(),
                   # test accuracy of the fake-quantized model, the INT8 graph's estimate
                   "simulated_int8": result.summary()}

        def save():
            checkpoint.save_model(model.cpu(), ctx.run / QAT_PT, cfg.student.arch, ctx.data.classes,
                                  input_size=ctx.data.input_size, dataset=ctx.data.name,
                                  training=summary)
            save_export(ctx, model)
            ctx.run.mark_done("qat", key, [QAT_PT, QAT_ONNX], summary)
            (ctx.run / "ckpt" / "qat.state.pt").unlink(missing_ok=True)
        on_main(save)
        ctx.reporter.stage("qat", "done", "simulated INT8 test top-1 "
                           f"{result.last['test_acc']:.2f} % (the real graph is measured next)")


def save_export(ctx: Context, model) -> None:
    """RUN/student.qat.onnx: the fine-tuned FP32 student exported as the export stage does,
    parity-checked against PyTorch."""
    from edgekd.config.targets import resolve_opset
    from edgekd.export.onnx import export_onnx, parity_check

    e = ctx.cfg.export
    opset, ir_version = resolve_opset(e.target, e.opset)
    model = model.cpu().eval()
    meta = {"classes": ctx.data.classes, "source_sha256": ctx.run.output_hash(QAT_PT),
            "arch": ctx.cfg.student.arch, "role": "student",
            "target": e.target, "dataset": ctx.data.name, "qat_epochs": e.int8_qat_epochs}
    export_onnx(model, ctx.run / QAT_ONNX, ctx.data.input_size, opset, meta, ir_version=ir_version,
                simplify=e.simplify)
    parity_check(model, ctx.run / QAT_ONNX, ctx.data.test.images, e.parity_atol, e.min_agreement)


STAGE = QATStage()
