"""Stage `quantize`: INT8 QDQ ONNX of the student (and of the teacher with
export.int8_teacher) with ONNX Runtime static calibration on RUN/calib/; over the accuracy
budget the run stops."""

from __future__ import annotations

from edgekd.pipeline.context import Context
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage
from edgekd.pipeline.stages import qat
from edgekd.pipeline.stages.qat import QAT_ONNX


class QuantizeStage(Stage):
    name = "quantize"
    label = "int8"
    outputs = ("student.int8.onnx",)

    def applies(self, ctx: Context) -> bool:
        e = ctx.cfg.export
        return e.enabled and (e.int8 or e.int8_teacher)

    def _names(self, ctx: Context) -> list[str]:
        return ["student"] + (["teacher"] if ctx.cfg.export.int8_teacher else [])

    def _source(self, ctx: Context, name: str) -> str:
        """The FP32 file quantized: after quantization-aware distillation, its fine-tuned copy."""
        return QAT_ONNX if name == "student" and qat.STAGE.applies(ctx) else f"{name}.onnx"

    def key(self, ctx: Context) -> str:
        e = ctx.cfg.export
        qat_source = [ctx.run.output_hash(QAT_ONNX)] if qat.STAGE.applies(ctx) else []
        return stage_key("quantize", *[ctx.run.output_hash(f"{n}.onnx") for n in self._names(ctx)],
                         e.int8_method, e.int8_calib_size, e.int8_max_drop, e.int8_exclude,
                         ctx.cfg.seed, ctx.data.fingerprint(),
                         *(["auto_fallback"] if e.int8_auto_fallback else []), *qat_source,
                         *(["reduce_range"] if e.int8_reduce_range else []))

    def run(self, ctx: Context, key: str) -> None:
        from edgekd.export.quantize import (
            CALIB_DIR,
            int8_path,
            pixels,
            quantize_onnx,
            write_run_calibset,
        )

        e = ctx.cfg.export
        names = self._names(ctx)
        ctx.reporter.stage("int8", "start", f"{e.int8_method} calibration on {e.int8_calib_size} "
                           "training images" + (f", of {QAT_ONNX}" if qat.STAGE.applies(ctx) else ""))
        calib = write_run_calibset(ctx.run / CALIB_DIR, ctx.data, e.int8_calib_size, ctx.cfg.seed)
        x, y = pixels(ctx.data.test.images), ctx.data.test.labels.numpy()
        info = {}
        for name in names:
            fp32, source = ctx.run / f"{name}.onnx", ctx.run / self._source(ctx, name)
            info[name] = quantize_onnx(source, int8_path(fp32), ctx.run / CALIB_DIR, x, y,
                                       e.int8_method, e.int8_max_drop, e.int8_exclude,
                                       auto_fallback=e.int8_auto_fallback,
                                       reference=fp32 if source != fp32 else None,
                                       reduce_range=e.int8_reduce_range)
            info[name]["out_path"] = int8_path(f"{name}.onnx").name
            if source != fp32:
                info[name]["quantized_from"], info[name]["accuracy_reference"] = source.name, fp32.name
            info[name]["calibration"]["dir"] = CALIB_DIR
        files = [f"{CALIB_DIR}/calib.json", f"{CALIB_DIR}/images.npy", f"{CALIB_DIR}/labels.npy",
                 *[int8_path(f"{n}.onnx").name for n in names]]
        ctx.run.mark_done("quantize", key, files, {"calibration": {"count": calib["count"],
                          "seed": calib["seed"]}, **info})
        a = info["student"]["accuracy"]
        ctx.reporter.stage("int8", "done", f"student top-1 {a['fp32_top1']:.2f} % -> {a['int8_top1']:.2f} % "
                           f"(-{a['drop_pp']:.2f} pp, budget {e.int8_max_drop} pp)")
        if info["student"]["host_kernels"].get("note"):
            ctx.reporter.stage("int8", "note", info["student"]["host_kernels"]["note"])


STAGE = QuantizeStage()
