"""What the command line prints: a log file or pipe reads like the screen, line for line."""

from __future__ import annotations

import io

from rich.console import Console

from edgekd.cli.common import RichReporter

RECORD = {"epoch": 1, "train_loss": 0.5, "train_acc": 50.0, "val_acc": 40.0, "test_acc": 41.0,
          "images_per_s": 100.0, "epoch_time_s": 1.0}


def _train(console: Console) -> str:
    r = RichReporter(console)
    r.stage("teacher", "start", "2 epochs")
    for epoch in (1, 2):
        r.on_epoch_start("teacher", epoch, 2, 3)
        for step in (1, 2, 3):
            r.on_step("teacher", step, 0.5, 50.0, 100.0)
        r.on_epoch_end("teacher", {**RECORD, "epoch": epoch})
    r.on_progress("ig", 1, 2, "3 img/s")
    r.on_progress("ig", 2, 2, "3 img/s")
    r.stage("ig", "done", "maps")
    return console.file.getvalue()


def test_a_captured_log_has_one_line_per_event_and_no_blank_lines():
    text = _train(Console(file=io.StringIO(), width=80))
    lines = text.splitlines()
    assert "" not in lines
    assert [line.split()[:3] for line in lines] == [
        ["teacher", "start", "2"], ["teacher", "ep", "1"], ["teacher", "ep", "2"], ["ig", "done", "maps"]]


def test_a_terminal_still_gets_the_live_bars():
    text = _train(Console(file=io.StringIO(), width=80, force_terminal=True))
    assert "epoch 1/2" in text and "img/s" in text
