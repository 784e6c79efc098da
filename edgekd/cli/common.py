"""What every verb shares: the consoles, one-line errors, the live progress reporter and the
latency harness's options."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgekd.errors import EdgeKDError

err = Console(stderr=True)
out = Console()


class Group(click.Group):
    """Turns user errors into one-line messages (no traceback) with exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeKDError as e:
            err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            sys.exit(2)


class RichReporter:
    """Stage lines and a per-epoch progress bar with loss, accuracy and images/s (on stderr)."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.bar: Progress | None = None  # for on_progress
        self.bar_task = None

    def stage(self, name, status, detail=""):
        style = {"start": "cyan", "done": "green", "skip": "yellow", "note": "magenta"}.get(status, "white")
        if self.bar is not None and status != "note":
            self.bar.stop()
            self.bar = None
        self.console.print(f"[{style}]{name:>8} {status:<5}[/] {detail}", highlight=False)

    @property
    def live(self) -> bool:
        """Bars only on a terminal: a file or pipe gets the finished lines alone (a live display
        there leaves a blank line behind each time it stops)."""
        return self.console.is_terminal

    def _bar(self, label: str, total: int):
        """A started transient bar: label, bar, done/total, stats, elapsed; and its task."""
        bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=self.console,
                       transient=True)
        bar.start()
        return bar, bar.add_task(label, total=total, stats="")

    def on_progress(self, stage, done, total, detail=""):
        """A bar for work that is not epochs (IG maps: images done of total)."""
        if not self.live:
            return
        if self.bar is None:
            self.bar, self.bar_task = self._bar(f"{stage:>8}", total)
        self.bar.update(self.bar_task, completed=done, total=total, stats=detail)

    def on_epoch_start(self, stage, epoch, epochs, steps):
        if self.bar is not None:  # one live display at a time
            self.bar.stop()
            self.bar = None
        if not self.live:
            return
        self.progress, self.task = self._bar(f"{stage:>8} epoch {epoch}/{epochs}", steps)

    def on_step(self, stage, step, loss, acc, ips):
        if self.progress is None:
            return
        self.progress.update(self.task, completed=step,
                             stats=f"loss {loss:.3f}  acc {acc:.1f} %  {ips:.0f} img/s")

    def on_epoch_end(self, stage, r):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        # One line that fits 80 columns; a warm-up epoch that was not evaluated shows no accuracy.
        acc = "" if r["test_acc"] is None else (
            (f" val {r['val_acc']:.1f}" if r["val_acc"] == r["val_acc"] else "")
            + f" test {r['test_acc']:.2f} %")
        self.console.print(
            f"{stage:>8} ep {r['epoch']:>3} loss {r['train_loss']:.3f} train {r['train_acc']:.1f}"
            f"{acc} {r['images_per_s']:.0f} img/s {r['epoch_time_s']:.1f} s", highlight=False,
        )


def measure_options(f):
    """Harness settings shared by bench and deploy (deploy.harness.MeasureSettings)."""
    for opt in reversed([
        click.option("--warmup-s", type=float, default=1.0, show_default=True, help="Warm up at least this many seconds..."),
        click.option("--warmup-iters", type=int, default=10, show_default=True, help="...and this many runs."),
        click.option("--min-s", type=float, default=2.0, show_default=True, help="Measure at least this many seconds..."),
        click.option("--min-iters", type=int, default=50, show_default=True, help="...and this many runs."),
        click.option("--max-s", type=float, default=60.0, show_default=True, help="Stop measuring after this many seconds."),
    ]):
        f = opt(f)
    return f


def harness_settings(warmup_s, warmup_iters, min_s, min_iters, max_s):
    from deploy.errors import DeployError
    from deploy.harness import MeasureSettings

    try:
        return MeasureSettings(warmup_s=warmup_s, warmup_iters=warmup_iters, min_s=min_s,
                               min_iters=min_iters, max_s=max(max_s, min_s),
                               max_iters=max(100000, min_iters))
    except DeployError as e:
        raise EdgeKDError(str(e)) from None
