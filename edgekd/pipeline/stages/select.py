"""Stage `select`: the student chosen by the latency budget (`budget`), measured on the target
(edgekd.selection); RUN/select/ holds select.json and pareto.png. The choice is an architecture,
the input size it computes at and its precision: the stage sets the run's student, its
--student-input-size and, for INT8, export.int8.

The measuring happens in `check`, before the run directory is opened, so that a budget no
combination meets, an unreachable target or a candidate the method cannot train leaves nothing
written; `run` then records what was measured. Combinations the run's method cannot use (an
InDistill mapping or an AT/FitNet layer that cannot be found, a warm-up the epochs cannot hold)
are left out before measuring, each with its reason. With `budget.select_epochs` the top
`budget.select_top` options (by MACs) are trained briefly on a stratified subset of at most
`budget.select_images` training images (cross-entropy: the teacher is not trained yet) and the
best validation accuracy wins, as NetAdapt does; each trial resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile

import torch

from edgekd.errors import EdgeKDError, SelectError
from edgekd.io import write_json
from edgekd.pipeline.context import Context, input_norm, on_main, train_stage
from edgekd.pipeline.rundir import stage_key
from edgekd.pipeline.stage import Stage
from edgekd.pipeline.stages.warmup import epoch_plan, plan_epochs, warmup_pairs
from edgekd.train import engine

SELECT_DIR = "select"
SELECT_VERSION = 2  # the stage's key: choices over precision and input size
TRIALS = "select_trials.json"  # RUN/ckpt/: the proxy's finished trials, until the stage is done
# Terms that compare feature maps at the teacher's resolution: no lower student input size.
_AT_TEACHER_RESOLUTION = frozenset({"at", "fitnet"})
FILES = (f"{SELECT_DIR}/select.json", f"{SELECT_DIR}/pareto.png")


def deploy_options_for(b, precision: str = "fp32"):
    """How a budget's target is reached and measured. FP32 models (the teacher, FP32
    candidates) run as `precision` on TensorRT; INT8 (Q/DQ) candidates build as INT8."""
    from edgekd.ship.remote import DeployOptions

    return DeployOptions(target=b.target, backend=b.backend, remote_python=b.remote_python,
                         remote_dir=b.remote_dir, ssh_config=b.ssh_config, threads=b.threads,
                         batch_sizes=[b.batch], precision=precision)


def deploy_options(ctx: Context):
    """The run's budget target, FP32 models measured as FP32 (as FP16 on TensorRT when the
    selection chose FP16: the teacher then builds as FP16 too, which can only make a
    --speedup stricter)."""
    return deploy_options_for(ctx.cfg.budget, "fp16" if chosen_precision(ctx) == "fp16" else "fp32")


def chosen_precision(ctx: Context) -> str:
    """The precision the budget holds the student at: the selection's choice, else the
    budget's own (fp32 for auto)."""
    choice = (ctx.selection or {}).get("choice")
    if choice:
        return choice["precision"]
    p = ctx.cfg.budget.precision
    return "fp32" if p == "auto" else p


def trainable(cfg, name: str, num_classes: int, input_size: int, size: int | None = None) -> None:
    """Raise EdgeKDError when the run's method cannot train student `name` computing at `size`
    (None: the run's `input_size`): its epoch plan, InDistill mapping and loss terms are built
    on random weights, as the stages would."""
    from edgekd.distill.indistill import build_mapping
    from edgekd.distill.methods import LOSS_TERMS, build_terms
    from edgekd.models.registry import create_model

    cfg = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, arch=name, input_size=size))
    epoch_plan(cfg, num_classes, input_size)
    methods = cfg.methods
    d = cfg.distill
    if size is not None and _AT_TEACHER_RESOLUTION & set(methods):
        raise EdgeKDError(f"{'+'.join(sorted(_AT_TEACHER_RESOLUTION & set(methods)))} compare "
                          "feature maps at the teacher's resolution")
    student = create_model(name, num_classes, input_size=size)
    if "indistill" in methods:
        teacher = create_model(d.aux_teacher or cfg.teacher.arch, num_classes)
        build_mapping(student, teacher, warmup_pairs(cfg, student, teacher, input_size), input_size)
    if any(m in LOSS_TERMS for m in methods):
        both = d.aux_teacher and d.aux_teaches == "both"
        teacher = create_model(d.aux_teacher if both else cfg.teacher.arch, num_classes)
        build_terms(methods, cfg, student, teacher, input_size)


def _usable(ctx: Context, items: list) -> tuple[list, dict[str, str]]:
    """The combinations the method can train, and why each other one cannot (keyed by the
    architecture at its size: the precision does not change what trains)."""
    from edgekd.selection.measure import label

    keep, left_out, tried = [], {}, {}
    for name, precision, size in items:
        pair = label(name, "fp32", size)
        if pair not in tried:
            try:
                trainable(ctx.cfg, name, ctx.data.num_classes, ctx.data.input_size, size)
                tried[pair] = None
            except EdgeKDError as e:
                tried[pair] = left_out[pair] = str(e)
        if tried[pair] is None:
            keep.append((name, precision, size))
    return keep, left_out


class SelectStage(Stage):
    name = "select"
    outputs = FILES

    def applies(self, ctx: Context) -> bool:
        return ctx.cfg.budget.active

    def check(self, ctx: Context) -> None:
        from edgekd.selection.select import check_fit, search_space
        from edgekd.ship.remote import check_options

        b, cfg = ctx.cfg.budget, ctx.cfg
        ctx.cfg.budget.validate()  # a budget <= 0, a speed-up < 1, ... are refused here
        check_options(deploy_options(ctx))
        precisions = b.precisions()  # one the backend lacks is refused here
        sizes = b.sizes(ctx.data.input_size, cfg.student.input_size)
        if b.select_epochs > 0 and len(ctx.data.val) == 0:
            raise SelectError("--select-epochs picks by validation accuracy, and this run has no "
                              "validation split: set data.val_fraction > 0, or --select-epochs 0")
        items, skipped = search_space(b.candidates, cfg.teacher.arch, ctx.data.input_size, sizes,
                                      precisions)
        items, left_out = _usable(ctx, items)
        if not items:
            first = next(iter(left_out.items()))
            raise SelectError(f"no candidate can be trained with {cfg.method}: {first[0]}: {first[1]}")
        ctx.select_candidates, ctx.select_left_out, ctx.select_skipped = items, left_out, skipped
        if ctx.run.stage_valid(self.name, self.key(ctx)):
            return  # a resumed run: its selection is recorded
        with tempfile.TemporaryDirectory(prefix="edgekd-select-") as work:
            doc = on_main(lambda: self._measure(ctx, items, work))
        check_fit(doc, b.target)
        ctx.select_doc = doc

    def _measure(self, ctx: Context, items: list, work: str) -> dict:
        from edgekd.config.targets import resolve_opset
        from edgekd.export.quantize import pixels
        from edgekd.selection.measure import Spec
        from edgekd.selection.select import evaluate

        b, cfg = ctx.cfg.budget, ctx.cfg
        opset, ir = resolve_opset(cfg.export.target, cfg.export.opset)
        spec = Spec(ctx.data.input_size, ctx.data.num_classes, b.batch, opset, ir,
                    for_tensorrt=b.backend == "tensorrt")
        ctx.reporter.stage("select", "start", f"{len(items)} combinations + the teacher on {b.target}, "
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
        return evaluate(ctx.cfg.budget, spec, deploy_options(ctx), work, None, cfg.teacher.arch,
                        samples=samples, calib=calib, progress=progress, on_export=on_export,
                        items=items, skipped=ctx.select_skipped)

    def key(self, ctx: Context) -> str:
        cfg = ctx.cfg
        return stage_key("select", cfg.budget.__dict__, cfg.teacher.arch, cfg.method,
                         cfg.distill.__dict__, cfg.student.train.__dict__, cfg.student.norm,
                         cfg.student.input_size, f"select-{SELECT_VERSION}",
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
        apply_choice(ctx.cfg, info, ctx.data.input_size)
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
        from edgekd.selection.select import choose

        doc["left_out"] = ctx.select_left_out
        options = [r for r in doc["candidates"] if r["option"]]
        trial = None
        if b.select_epochs > 0 and len(options) > 1:
            top = options[: b.select_top]
            trial = self._trial(ctx, top, key)
            best = max(top, key=lambda r: (trial["scores"][r["key"]], r["macs"]))
            choose(doc, best["key"], f"validation top-1 after {b.select_epochs} epochs of "
                   f"cross-entropy on {trial['images']} training images, among the "
                   f"{len(top)} options with the most MACs")
            doc["proxy"] = trial
        choice = doc["choice"]
        row = next(r for r in doc["candidates"] if r["key"] == choice["key"])
        info = {"chosen": choice["arch"], "choice": choice, "budget": doc["budget"],
                "teacher_ms": (doc["teacher"] or {}).get("value_ms"),
                "chosen_ms": row["value_ms"], "candidates": len(doc["candidates"]),
                "fitting": [r["key"] for r in doc["candidates"] if r.get("fits")],
                "options": [r["key"] for r in options],
                "left_out": sorted(doc["left_out"]), "measured": doc["measured"],
                "cached": doc["cached"], "trial": trial, "target": doc["target"],
                "files": {"json": FILES[0], "plot": FILES[1]}}

        def record() -> None:
            write_outputs(doc, ctx.run / SELECT_DIR)  # the plot marks the final choice
            ctx.run.mark_done("select", key, list(FILES), info)
            (ctx.run / "ckpt" / TRIALS).unlink(missing_ok=True)

        on_main(record)
        ctx.reporter.stage("select", "done", f"{choice['key']}: {row['value_ms']:.3g} ms, limit "
                           f"{doc['budget']['limit_ms']:.3g} ms; {len(info['fitting'])}/"
                           f"{len(doc['candidates'])} fit")
        return info

    def _trial(self, ctx: Context, rows: list[dict], key: str) -> dict:
        """Validation top-1 of each option after `budget.select_epochs` of cross-entropy on a
        stratified subset of the training images; each trial resumes from its checkpoint."""
        from edgekd.data.dataset import stratified_split
        from edgekd.models.registry import create_model

        b = ctx.cfg.budget
        train = ctx.data.train
        if len(train) > b.select_images:
            keep, _ = stratified_split(train.labels.numpy(), 1.0 - b.select_images / len(train),
                                       ctx.cfg.seed)
            train = train.subset(keep)
        # Finished trials' scores survive an interruption (each one's checkpoint is dropped once
        # it is scored); they count only for the same settings.
        done_path = ctx.run / "ckpt" / TRIALS
        scores = {}
        try:
            done = json.loads(done_path.read_text())
            if done.get("key") == key:
                scores = {k: float(v) for k, v in done["scores"].items()}
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            pass  # none yet, or a damaged file: score them again
        for i, row in enumerate(rows):
            if row["key"] in scores:
                ctx.reporter.stage("select", "skip", f"trial {i + 1}/{len(rows)}: {row['key']} "
                                   f"scored {scores[row['key']]:.2f} %")
                continue
            torch.manual_seed(ctx.cfg.seed * 2 + 1)
            size = None if row["input_size"] == ctx.data.input_size else row["input_size"]
            model = create_model(row["arch"], ctx.data.num_classes, *input_norm(ctx, "student"), size)
            tcfg = dataclasses.replace(ctx.cfg.student.train, epochs=b.select_epochs)
            ctx.reporter.stage("select", "note", f"trial {i + 1}/{len(rows)}: {row['key']}, "
                               f"{b.select_epochs} epochs on {len(train)} images")
            stage = f"select_{row['key']}"
            result = train_stage(ctx, stage, model, tcfg, engine.CrossEntropy(tcfg.label_smoothing),
                                 key, evaluate_every_epoch=False, train=train)
            scores[row["key"]] = result.last["val_acc"]

            def record(s=stage) -> None:
                write_json(done_path, {"key": key, "scores": scores})
                (ctx.run / "ckpt" / f"{s}.state.pt").unlink(missing_ok=True)

            on_main(record)
        return {"epochs": b.select_epochs, "images": len(train), "loss": "cross-entropy",
                "metric": "validation top-1 (%)", "scores": {r["key"]: scores[r["key"]] for r in rows}}


def apply_choice(cfg, info: dict, input_size: int) -> None:
    """The run's student becomes the selection's choice: its architecture, the size it computes
    at (None: the run's) and, for INT8, an INT8 export. A selection recorded before choices
    had a size and precision chose an FP32 architecture at the run's size."""
    choice = info.get("choice") or {"arch": info["chosen"], "input_size": input_size,
                                    "precision": "fp32"}
    cfg.student.arch = choice["arch"]
    cfg.student.input_size = None if choice["input_size"] == input_size else choice["input_size"]
    if choice["precision"] == "int8":
        cfg.export.int8 = True


STAGE = SelectStage()
