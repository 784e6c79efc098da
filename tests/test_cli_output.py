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


# The fields of a real default run's report.json that the summary table reads (2-core AMD EPYC).
REPORT = {
    "dataset": {"name": "digits"}, "method": "indistill+kd+ig",
    "teacher": {"arch": "mbv2_cifar", "accuracy": 97.78, "accuracy_best_epoch": 97.78,
                "epochs": {"total": 10}, "params": 2236682, "macs": 22003712},
    "student": {"arch": "resnet8_cifar_w0.75", "accuracy": 98.61, "accuracy_best_epoch": 98.61,
                "epochs": {"warmup": 12, "distill": 14, "total": 26}, "params": 44230, "macs": 1779168},
    "compression_factor": 50.57, "mac_reduction": 12.37,
    "latency": {"teacher": {"batch_64": {"p50_ms": 18.72}}, "student": {"batch_64": {"p50_ms": 1.60}},
                "backend": "onnxruntime 1.32.0 CPU, 2 threads", "cpu": "AMD EPYC"},
    "budget": {"speedup": 10.0, "latency_ms": None, "selection": {"candidates": 10},
               "final": {"batch": 64, "percentile": "p50", "precision": "fp32", "target": "local",
                         "teacher_ms": 17.21, "student_ms": 1.60, "limit_ms": 1.72, "speedup": 10.76,
                         "margin_pct": 7.07, "holds": True}},
}


def test_the_summary_table_fits_80_columns_without_losing_a_word():
    from edgekd.cli.tables import summary_table

    console = Console(file=io.StringIO(), width=80)
    console.print(summary_table(REPORT))
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    words = " ".join(text.split())
    for phrase in ("latency: onnxruntime 1.32.0 CPU, 2 threads on AMD EPYC",
                   "budget on local, student chosen from 10 candidates (select/pareto.png)",
                   "11.70x faster", "holds +7.1 %"):
        assert phrase in words, phrase
