"""Stage `select`: the student chosen by the latency budget (`budget`), measured on the target
(edgekd.selection); RUN/select/ holds select.json and pareto.png.

The measuring happens in `check`, before the run directory is opened, so that a budget no
candidate meets, an unreachable target or a candidate the method cannot train leaves nothing
written; `run` then records what was measured. Candidates the run's method cannot use (an
InDistill mapping or an AT/FitNet layer that cannot be found, a warm-up the epochs cannot hold)
are left out before ranking, each with its reason. With `budget.select_epochs` the top
`budget.select_top` fitting candidates are trained briefly (cross-entropy, no teacher) and the
best validation accuracy wins, as NetAdapt does.
"""

from __future__ import annotations

import dataclasses
import tempfile

import torch

from edgekd.errors import EdgeKDError, SelectError
from edgekd.pipeline.context import Context, input_norm, on_main, student_resize, train_stage
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage
from edgekd.pipeline.stages.warmup import epoch_plan, plan_epochs, warmup_pairs
from edgekd.train import engine

SELECT_DIR = "select"
FILES = (f"{SELECT_DIR}/select.json", f"{SELECT_DIR}/pareto.png")


def deploy_options_for(b, precision: str = "fp32"):
    """How a budget's target is reached and measured. FP32 models (the teacher, FP32
    candidates) run as `precision` on TensorRT; INT8 (Q/DQ) candidates build as INT8."""
    from edgekd.ship.remote import DeployOptions

    return DeployOptions(target=b.target, backend=b.backend, remote_python=b.remote_python,
                         remote_dir=b.remote_dir, ssh_config=b.ssh_config, threads=b.threads,
                         batch_sizes=[b.batch], precision=precision)


def deploy_options(ctx: Context):
    """The run's budget target, FP32 models measured as FP32."""
    return deploy_options_for(ctx.cfg.budget)


def trainable(cfg, name: str, num_classes: int, input_size: int) -> None:
    """Raise EdgeKDError when the run's method cannot train student `name`: its epoch plan,
    InDistill mapping and loss terms are built on random weights, as the stages would."""
    from edgekd.distill.indistill import build_mapping
    from edgekd.distill.methods import LOSS_TERMS, build_terms
    from edgekd.models.registry import create_model

    cfg = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, arch=name))
    epoch_plan(cfg, num_classes, input_size)
    methods = cfg.methods
    d = cfg.distill
    student = create_model(name, num_classes)
    if "indistill" in methods:
        teacher = create_model(d.aux_teacher or cfg.teacher.arch, num_classes)
        build_mapping(student, teacher, warmup_pairs(cfg, student, teacher, input_size), input_size)
    if any(m in LOSS_TERMS for m in methods):
        both = d.aux_teacher and d.aux_teaches == "both"
        teacher = create_model(d.aux_teacher if both else cfg.teacher.arch, num_classes)
        build_terms(methods, cfg, student, teacher, input_size)


def _usable(ctx: Context, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The candidates the method can train, and why each other one cannot."""
    keep, left_out = [], {}
    for name in names:
        try:
            trainable(ctx.cfg, name, ctx.data.num_classes, ctx.data.input_size)
        except EdgeKDError as e:
            left_out[name] = str(e)
            continue
        keep.append(name)
    return keep, left_out


class SelectStage(Stage):
    name = "select"
    outputs = FILES

    def applies(self, ctx: Context) -> bool:
        return ctx.cfg.budget.active

    def check(self, ctx: Context) -> None:
        from edgekd.selection.select import check_fit, check_input_size, default_candidates
        from edgekd.ship.remote import check_options

        b, cfg = ctx.cfg.budget, ctx.cfg
        ctx.cfg.budget.validate()  # a budget <= 0, a speed-up < 1, ... are refused here
        check_options(deploy_options(ctx))
        if b.select_epochs > 0 and len(ctx.data.val) == 0:
            raise SelectError("--select-epochs picks by validation accuracy, and this run has no "
                              "validation split: set data.val_fraction > 0")
        names = list(b.candidates) or default_candidates(ctx.data.input_size, [cfg.teacher.arch])
        check_input_size(names, ctx.data.input_size)
        names, left_out = _usable(ctx, names)
        if not names:
            first = next(iter(left_out.items()))
            raise SelectError(f"no candidate can be trained with {cfg.method}: {first[0]}: {first[1]}")
        ctx.select_candidates, ctx.select_left_out = names, left_out
        if ctx.run.stage_valid(self.name, self.key(ctx)):
            return  # a resumed run: its selection is recorded
        with tempfile.TemporaryDirectory(prefix="edgekd-select-") as work:
            doc = on_main(lambda: self._measure(ctx, names, work))
        check_fit(doc, b.target)
        ctx.select_doc = doc

    def _measure(self, ctx: Context, names: list[str], work: str) -> dict:
        from edgekd.config.targets import resolve_opset
        from edgekd.export.quantize import pixels
        from edgekd.selection.measure import Spec
        from edgekd.selection.select import evaluate

        b, cfg = ctx.cfg.budget, ctx.cfg
        opset, ir = resolve_opset(cfg.export.target, cfg.export.opset)
        spec = Spec(ctx.data.input_size, ctx.data.num_classes, b.batch, opset, ir,
                    for_tensorrt=b.backend == "tensorrt")
        ctx.reporter.stage("select", "start", f"{len(names)} candidates + the teacher on {b.target}, "
                           f"budget {ctx.cfg.budget.describe()}")

        def progress(step: str, detail: str) -> None:
            if step == "cache":  # the probe, bundle and transfer details are deploy's
                ctx.reporter.stage("select", "note", detail)

        def on_export(done: int, total: int, name: str) -> None:
            show = getattr(ctx.reporter, "on_progress", None)
            if show is not None:
                show("select", done, total, f"export {name}" if name else "")

        # Real images: test images feed the harness, training images calibrate INT8.
        samples = pixels(ctx.data.test.images[:max(b.batch, 32)])
        calib = pixels(ctx.data.train.images[:256])
        return evaluate(ctx.cfg.budget, spec, deploy_options(ctx), work, names, cfg.teacher.arch,
                        samples=samples, calib=calib, progress=progress, on_export=on_export)

    def key(self, ctx: Context) -> str:
        cfg = ctx.cfg
        return stage_key("select", cfg.budget.__dict__, cfg.teacher.arch, cfg.method,
                         cfg.distill.__dict__, cfg.student.train.__dict__, cfg.student.norm,
                         cfg.seed, ctx.data.input_size, ctx.data.num_classes, ctx.data.fingerprint(),
                         ctx.device.type, cfg.export.target, cfg.export.opset)

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
        ctx.selection = info
        plan_epochs(ctx)

    def run(self, ctx: Context, key: str) -> dict:
        from edgekd.selection.select import check_fit, write_outputs

        b = ctx.cfg.budget
        if ctx.select_candidates is None:
            self.check(ctx)  # called on its own, outside compress
        doc, ctx.select_doc = ctx.select_doc, None
        if doc is None:  # --force on a run whose selection was valid
            doc = on_main(lambda: self._measure(ctx, ctx.select_candidates,
                                                str(ctx.run / SELECT_DIR / "work")))
            check_fit(doc, b.target)
        left_out = ctx.select_left_out
        fitting = [r["arch"] for r in doc["candidates"] if r.get("fits")]
        trial = None
        if b.select_epochs > 0 and len(fitting) > 1:
            trial = self._trial(ctx, fitting[: b.select_top], key)
            doc["chosen"] = max(trial, key=lambda n: trial[n])
            doc["chosen_by"] = f"validation top-1 after {b.select_epochs} epochs of cross-entropy"
            doc["trial"] = trial
        doc["left_out"] = left_out
        chosen = doc["chosen"]
        row = next(r for r in doc["candidates"] if r["arch"] == chosen)
        info = {"chosen": chosen, "budget": doc["budget"], "teacher_ms": (doc["teacher"] or {}).get("value_ms"),
                "chosen_ms": row["value_ms"], "candidates": len(doc["candidates"]),
                "fitting": fitting, "left_out": sorted(left_out), "measured": doc["measured"],
                "cached": doc["cached"], "trial": trial, "target": doc["target"],
                "files": {"json": FILES[0], "plot": FILES[1]}}

        def record() -> None:
            write_outputs(doc, ctx.run / SELECT_DIR)  # the plot marks the final choice
            ctx.run.mark_done("select", key, list(FILES), info)

        on_main(record)
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
            model = create_model(name, ctx.data.num_classes, *input_norm(ctx, "student"),
                                 student_resize(ctx))
            tcfg = dataclasses.replace(ctx.cfg.student.train, epochs=b.select_epochs)
            ctx.reporter.stage("select", "note", f"trial {i + 1}/{len(names)}: {name}, "
                               f"{b.select_epochs} epochs")
            result = train_stage(ctx, f"select_{name}", model, tcfg,
                                 engine.CrossEntropy(tcfg.label_smoothing), key)
            out[name] = result.last["val_acc"]
            on_main(lambda n=name: (ctx.run / "ckpt" / f"select_{n}.state.pt").unlink(missing_ok=True))
        return out


STAGE = SelectStage()
