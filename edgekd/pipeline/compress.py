"""`edgekd compress`: the ordered list of stages (edgekd.pipeline.stages) run on one run
directory: data -> student selection by latency budget -> teacher fine-tuning ->
teacher -> IG maps -> auxiliary
teacher -> warm-up -> student -> quantization-aware distillation -> ONNX export -> INT8 ->
latency -> the budget's final check -> report.

Each stage is skipped when the ledger says its output is valid for the current settings;
training stages resume from their per-epoch checkpoint, the IG maps from their first
incomplete chunk.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from edgekd import distributed
from edgekd.config import RunConfig, validate
from edgekd.io import write_json
from edgekd.pipeline.context import Context, Reporter, Silent, on_main
from edgekd.pipeline.report import build_report
from edgekd.pipeline.rundir import RunDir
from edgekd.pipeline.stages import (
    aux,
    bench,
    budget,
    data,
    export,
    finetune,
    ig,
    qat,
    quantize,
    select,
    student,
    teacher,
    warmup,
)
from edgekd.pipeline.stages.data import prepare_data
from edgekd.runfiles import REPORT
from edgekd.train import engine

# Training stages run on every rank (torchrun splits each batch); the finishing stages and
# the report run on rank 0 alone.
TRAINING = (data.STAGE, select.STAGE, finetune.STAGE, teacher.STAGE, ig.STAGE, aux.STAGE, warmup.STAGE, student.STAGE,
            qat.STAGE)
FINISHING = (export.STAGE, quantize.STAGE, bench.STAGE, budget.STAGE)
STAGES = TRAINING + FINISHING


def compress(
    cfg: RunConfig, out: str | Path, *, resume: bool = False, force: bool = False,
    reporter: Reporter | None = None,
) -> dict:
    """Run the whole pipeline into `out`; return the report (also written to report.json)."""
    validate(cfg)
    cfg = copy.deepcopy(cfg)  # stages fill in what the run decides (the chosen student)
    # Under `torchrun` every rank runs this function: training stages split each batch over the
    # ranks (edgekd.distributed), rank 0 alone writes the run directory, the others wait.
    device = distributed.setup(engine.resolve_device(cfg.device))
    reporter = reporter if reporter is not None and distributed.is_main() else Silent()
    t0 = time.perf_counter()
    # Everything that can fail on user input is checked before the run directory is touched.
    reporter.stage("data", "start", cfg.data.dataset)
    run = RunDir(out)
    ctx = Context(cfg, run, device, reporter, data=prepare_data(cfg, reporter))
    # The selection's check measures on the target: it goes last, after the cheap ones.
    for stage in sorted(STAGES, key=lambda st: st is select.STAGE):
        if stage.applies(ctx):
            stage.check(ctx)
    ctx.opened = on_main(lambda: run.open(cfg, resume=resume, force=force))
    for stage in TRAINING:
        stage(ctx)

    def finish() -> dict:
        for stage in FINISHING:
            stage(ctx)
        report = build_report(ctx, wall_time_s=time.perf_counter() - t0)
        write_json(run / REPORT, report)
        return report

    report = on_main(finish)
    budget.verdict(ctx)  # a student over its latency budget fails the run, report written
    return report
