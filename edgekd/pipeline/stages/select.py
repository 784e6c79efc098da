"""Stage `select`: the student chosen by the latency budget (`budget`), measured on the target
before anything trains (edgekd.selection); RUN/select/ holds select.json and pareto.png.

Candidates the run's method cannot use (an InDistill warm-up that cannot be mapped, or one that
leaves no epochs) are left out before ranking, each with its reason. With
`budget.select_epochs` the top `budget.select_top` fitting candidates are trained briefly
(cross-entropy, no teacher) and the best validation accuracy wins, as NetAdapt does.
"""

from __future__ import annotations

import dataclasses

import torch

from edgekd.errors import EdgeKDError, SelectError
from edgekd.io import write_json
from edgekd.pipeline.context import Context, input_norm, on_main, train_stage
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage
from edgekd.pipeline.stages.warmup import epoch_plan, plan_epochs
from edgekd.train import engine

SELECT_DIR = "select"


def budget_of(ctx: Context):
    from edgekd.selection.budget import Budget

    b = ctx.cfg.budget
    return Budget(b.latency_ms, b.speedup, b.batch, b.percentile, b.precision, b.margin)


def deploy_options(ctx: Context):
    from edgekd.ship.remote import DeployOptions

    b = ctx.cfg.budget
    return DeployOptions(target=b.target, backend=b.backend, remote_python=b.remote_python,
                         remote_dir=b.remote_dir, ssh_config=b.ssh_config, threads=b.threads,
                         batch_sizes=[b.batch], precision="fp32" if b.precision == "fp32" else "int8")


def _usable(ctx: Context, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The candidates the method can train, and why each other one cannot."""
    keep, left_out = [], {}
    for name in names:
        cfg = dataclasses.replace(ctx.cfg, student=dataclasses.replace(ctx.cfg.student, arch=name))
        try:
            epoch_plan(cfg, ctx.data.num_classes, ctx.data.input_size)
        except EdgeKDError as e:
            left_out[name] = str(e)
            continue
        keep.append(name)
    return keep, left_out


class SelectStage(Stage):
    name = "select"
    outputs = (f"{SELECT_DIR}/select.json",)

    def applies(self, ctx: Context) -> bool:
        return ctx.cfg.budget.active

    def check(self, ctx: Context) -> None:
        from edgekd.ship.transport import parse_target

        budget_of(ctx)  # a budget <= 0, a speed-up < 1, ... are refused here
        parse_target(ctx.cfg.budget.target)
        if ctx.cfg.budget.select_epochs > 0 and len(ctx.data.val) == 0:
            raise SelectError("--select-epochs picks by validation accuracy, and this run has no "
                              "validation split: set data.val_fraction > 0")

    def key(self, ctx: Context) -> str:
        b = ctx.cfg.budget
        return stage_key("select", b.__dict__, ctx.cfg.teacher.arch, ctx.cfg.method,
                         ctx.cfg.distill.__dict__, ctx.cfg.student.train.epochs,
                         ctx.data.input_size, ctx.data.num_classes, ctx.cfg.export.target)

    def __call__(self, ctx: Context) -> None:
        if not self.applies(ctx):
            return
        key = self.key(ctx)
        if ctx.run.stage_valid(self.name, key):
            info = ctx.run.stage_info(self.name)
            ctx.reporter.stage("select", "skip", f"{info['chosen']} (select/select.json is valid)")
        else:
            info = self.run(ctx, key)
        ctx.cfg.student.arch = info["chosen"]
        ctx.info["selection"] = info
        plan_epochs(ctx)

    def run(self, ctx: Context, key: str) -> dict:
        from edgekd.export.quantize import pixels
        from edgekd.export.targets import resolve_opset
        from edgekd.selection.measure import Spec
        from edgekd.selection.select import default_candidates, select

        b, cfg = ctx.cfg.budget, ctx.cfg
        budget = budget_of(ctx)
        names = list(b.candidates) or default_candidates(ctx.data.input_size, [cfg.teacher.arch])
        names, left_out = _usable(ctx, names)
        if not names:
            first = next(iter(left_out.items()))
            raise SelectError(f"no candidate can be trained with {cfg.method}: {first[0]}: {first[1]}")
        opset, ir = resolve_opset(cfg.export.target, cfg.export.opset)
        spec = Spec(ctx.data.input_size, ctx.data.num_classes, b.batch, opset, ir,
                    for_tensorrt=b.backend == "tensorrt")
        ctx.reporter.stage("select", "start", f"{len(names)} candidates + the teacher on {b.target}, "
                           f"budget {budget.describe()}")
        n = max(b.batch, 32)
        samples = pixels(ctx.data.test.images[:n])
        calib = pixels(ctx.data.train.images[:256])

        def progress(step: str, detail: str) -> None:
            if step == "cache":  # the probe, bundle and transfer details are deploy's
                ctx.reporter.stage("select", "note", detail)

        def on_export(done: int, total: int, name: str) -> None:
            show = getattr(ctx.reporter, "on_progress", None)
            if show is not None:
                show("select", done, total, f"export {name}" if name else "")

        folder = ctx.run / SELECT_DIR
        doc = on_main(lambda: select(budget, spec, deploy_options(ctx), folder, names,
                                     cfg.teacher.arch, samples=samples, calib=calib,
                                     progress=progress, on_export=on_export))
        fitting = [r["arch"] for r in doc["candidates"] if r.get("fits")]
        chosen, trial = doc["chosen"], None
        if b.select_epochs > 0 and len(fitting) > 1:
            trial = self._trial(ctx, fitting[: b.select_top], key)
            chosen = max(trial, key=lambda n: trial[n])
            doc["chosen"], doc["chosen_by"] = chosen, "validation accuracy after a short trial"
            doc["trial"] = trial
        doc["left_out"] = left_out
        on_main(lambda: write_json(folder / "select.json", doc))
        row = next(r for r in doc["candidates"] if r["arch"] == chosen)
        info = {"chosen": chosen, "budget": doc["budget"], "teacher_ms": (doc["teacher"] or {}).get("value_ms"),
                "chosen_ms": row["value_ms"], "candidates": len(doc["candidates"]),
                "fitting": fitting, "left_out": sorted(left_out), "measured": doc["measured"],
                "cached": doc["cached"], "trial": trial, "target": doc["target"],
                "files": {"json": f"{SELECT_DIR}/select.json", "plot": f"{SELECT_DIR}/pareto.png"}}
        on_main(lambda: ctx.run.mark_done("select", key, [f"{SELECT_DIR}/select.json",
                                                          f"{SELECT_DIR}/pareto.png"], info))
        ctx.reporter.stage("select", "done", f"{chosen}: {row['value_ms']:.3g} ms, limit "
                           f"{doc['budget']['limit_ms']:.3g} ms; {len(fitting)}/{len(doc['candidates'])} fit")
        return info

    def _trial(self, ctx: Context, names: list[str], key: str) -> dict[str, float]:
        """Validation top-1 of each candidate after `budget.select_epochs` of cross-entropy."""
        from edgekd.models.registry import create_model

        b = ctx.cfg.budget
        out = {}
        for i, name in enumerate(names):
            torch.manual_seed(ctx.cfg.seed * 2 + 1)
            model = create_model(name, ctx.data.num_classes, *input_norm(ctx, "student"))
            tcfg = dataclasses.replace(ctx.cfg.student.train, epochs=b.select_epochs)
            ctx.reporter.stage("select", "note", f"trial {i + 1}/{len(names)}: {name}, "
                               f"{b.select_epochs} epochs")
            result = train_stage(ctx, f"select_{name}", model, tcfg,
                                 engine.CrossEntropy(tcfg.label_smoothing), key)
            out[name] = result.last["val_acc"]
            (ctx.run / "ckpt" / f"select_{name}.state.pt").unlink(missing_ok=True)
        return out


STAGE = SelectStage()
