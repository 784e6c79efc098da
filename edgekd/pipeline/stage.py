"""The one shape of a pipeline stage.

A stage names its ledger entry (`name`), says whether it applies to the run's settings,
refuses bad settings before the run directory is touched (`check`), computes the key of
everything its outputs depend on (`key`), and does its work (`run`), which writes its outputs
and records them in the ledger under that key. Calling a stage runs it unless the ledger
already holds its key with intact outputs, in which case it reports a skip. `compress` is the
ordered list of stages; the single-stage verbs (`edgekd export`, `quantize`, `ig compute`)
call the same stage objects on a reopened run.
"""

from __future__ import annotations

from edgekd.pipeline.context import Context


class Stage:
    name: str = ""  # the ledger entry (state.json) and, unless `label` says otherwise, the label
    label: str = ""  # what the reporter shows
    outputs: tuple[str, ...] = ()  # main files, relative to the run directory

    def applies(self, ctx: Context) -> bool:
        """Whether the run's settings call for this stage at all."""
        return True

    def check(self, ctx: Context) -> None:
        """Refuse settings this stage cannot work with (raise EdgeKDError), before anything is
        written. `ctx.data` is loaded; the run directory is not open yet."""

    def key(self, ctx: Context) -> str:
        raise NotImplementedError

    def run(self, ctx: Context, key: str) -> None:
        raise NotImplementedError

    def skip_detail(self, ctx: Context) -> str:
        return f"{self.outputs[0]} is valid" if self.outputs else "valid"

    def __call__(self, ctx: Context) -> None:
        if not self.applies(ctx):
            return
        key = self.key(ctx)
        if ctx.run.stage_valid(self.name, key):
            ctx.reporter.stage(self.label or self.name, "skip", self.skip_detail(ctx))
            return
        self.run(ctx, key)
