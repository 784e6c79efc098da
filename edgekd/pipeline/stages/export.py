"""Stage `export`: both models to ONNX for the configured target (opset, IR version),
optionally simplified, each followed by the parity check against PyTorch on the test split."""

from __future__ import annotations

from edgekd.export.onnx import export_onnx, parity_check
from edgekd.pipeline.context import Context, load_run_model
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage


class ExportStage(Stage):
    name = "export"
    outputs = ("student.onnx", "teacher.onnx")

    def applies(self, ctx: Context) -> bool:
        return ctx.cfg.export.enabled

    def _opset(self, ctx: Context) -> tuple[int, int]:
        from edgekd.config.targets import resolve_opset

        return resolve_opset(ctx.cfg.export.target, ctx.cfg.export.opset)

    def key(self, ctx: Context) -> str:
        e = ctx.cfg.export
        opset, ir_version = self._opset(ctx)
        return stage_key("export", ctx.run.output_hash("teacher.pt"), ctx.run.output_hash("student.pt"),
                         opset, e.parity_atol, e.min_agreement, ctx.data.fingerprint(),
                         *([e.target, ir_version, e.simplify] if (e.target, e.simplify) != ("cpu", False) else []))

    def run(self, ctx: Context, key: str) -> None:
        e = ctx.cfg.export
        opset, ir_version = self._opset(ctx)
        info = {}
        files = []
        for name in ("student", "teacher"):
            ctx.reporter.stage("export", "start", f"{name}.onnx ({e.target}: opset {opset}, IR {ir_version}"
                               f"{', simplified' if e.simplify else ''})")
            model = load_run_model(ctx, name)
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


STAGE = ExportStage()
