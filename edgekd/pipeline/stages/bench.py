"""Stage `bench`: latency of both ONNX models on this machine with deploy/'s harness, on real
test images. bench.json holds one `edgekd.bench` document (deploy/SCHEMA.md) per model."""

from __future__ import annotations

import os

from edgekd.io import write_json
from edgekd.pipeline.context import Context
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage
from edgekd.runfiles import BENCH, SAMPLE_LABELS, SAMPLES


class BenchStage(Stage):
    name = "bench"
    outputs = (BENCH,)

    def applies(self, ctx: Context) -> bool:
        return ctx.cfg.bench.enabled

    def key(self, ctx: Context) -> str:
        return stage_key("bench", ctx.run.output_hash("student.onnx"), ctx.run.output_hash("teacher.onnx"),
                         ctx.cfg.bench.__dict__, ctx.data.fingerprint())

    def run(self, ctx: Context, key: str) -> None:
        from deploy.bench import run_bench
        from deploy.harness import MeasureSettings
        from edgekd.runfiles import save_npy, test_samples

        b = ctx.cfg.bench
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


STAGE = BenchStage()
