"""Training under torchrun (2 CPU ranks, gloo) follows the single-process loss curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from edgekd.cli import cli

SCRIPT = textwrap.dedent('''
    import json, sys, torch
    from pathlib import Path
    from edgekd import distributed
    from edgekd.config import TrainConfig
    from edgekd.data import load_dataset
    from edgekd.data.augment import AugmentSettings
    from edgekd.models import create_model
    from edgekd.train import engine

    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    device = distributed.setup(torch.device("cpu"))
    data = load_dataset("digits", 16)
    data.train = data.train.subset(range(0, len(data.train), 3))
    torch.manual_seed(0)
    model = create_model("mbv2_cifar_w0.25", 10, data.mean, data.std)
    result = engine.train(
        model, data.train, data.val, data.test,
        TrainConfig(epochs=3, batch_size=32, lr=3e-3, schedule="onecycle", channels_last=False),
        stage="student", seed=0, device=device, objective=engine.CrossEntropy(),
        transform=engine.StandardAugment(AugmentSettings(2, False)),
        state_path=out / "state.pt", metrics_path=out / "metrics.jsonl", settings_key="k")
    if distributed.is_main():
        (out / "result.json").write_text(json.dumps([r["train_loss"] for r in result.history]))
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(weights[::97].tolist()))
''')


def _start(cmd, out):
    out.mkdir()
    with open(out.with_suffix(".log"), "w") as log:  # a file, not a pipe nobody reads yet
        return subprocess.Popen(cmd + [str(out)], stdout=log, stderr=subprocess.STDOUT)


def _result(proc, out):
    proc.wait(timeout=600)
    assert proc.returncode == 0, out.with_suffix(".log").read_text()[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.timeout(600)
def test_two_ranks_match_single_process(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    # The two trainings are independent (own folders, one thread per process: the script sets
    # it, torchrun gives each rank OMP_NUM_THREADS=1): they run side by side.
    single = _start([sys.executable, str(script)], tmp_path / "single")
    ddp = _start([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                  "--master-port", "29533", str(script)], tmp_path / "ddp")
    single, ddp = _result(single, tmp_path / "single"), _result(ddp, tmp_path / "ddp")
    assert len(ddp) == len(single) == 3
    # Same global batches and averaged gradients; only BatchNorm's per-rank statistics differ.
    for a, b in zip(single, ddp, strict=True):
        assert abs(a - b) / a < 0.1, (single, ddp)
    assert ddp[-1] < ddp[0]
    # the ranks hold identical weights: gradients really were averaged between them
    r0, r1 = (json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1
    # rank 0 alone wrote the log: one line per epoch
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


@pytest.mark.timeout(600)
def test_compress_runs_under_torchrun(tmp_path):
    """`torchrun -m edgekd compress`: every stage under two ranks (IG maps sharded, training
    split over the ranks), rank 0 alone writing the run directory and printing."""
    from tests.conftest import TINY

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29534", "-m", "edgekd", "compress", *TINY, "--method", "kd+ig",
           "--ig-steps", "2", "--set", "ig.chunk_size=64", "--epochs", "2", "--no-bench",
           "--set", "export.enabled=false", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("edgekd compress: digits") == 1  # one summary table, rank 0's
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "kd+ig" and report["student"]["accuracy"] > 0
    ledger = json.loads((out / "state.json").read_text())
    assert {"teacher", "ig", "student"} <= set(ledger)
    # both ranks computed IG chunks, into one cache
    assert ledger["ig"]["info"]["stats"]["chunks_by_rank"] == [3, 2]
    # rank 0 alone wrote the metrics: one line per epoch and stage
    stages = [(json.loads(x)["stage"], json.loads(x)["epoch"])
              for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert stages == [("teacher", 1), ("student", 1), ("student", 2)]
    # and the run is complete: rerunning it in one process (this one) skips every stage
    assert cmd[8:10] == ["edgekd", "compress"]
    again = CliRunner().invoke(cli, cmd[9:])
    assert again.exit_code == 0, again.output[-3000:]
    assert "student skip" in " ".join(again.stderr.split())
