"""Time `edgekd compress` with no arguments (the README's promise: <= 6 min on 2 cores).

Runs the real CLI in a fresh temporary directory, then saves wall time, peak memory and the
report's figures with the machine description to benchmarks/results/compress_default.json.

    python benchmarks/compress_default.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deploy.envinfo import capture

RESULTS = Path(__file__).resolve().parent / "results" / "compress_default.json"
BUDGET_S = 360


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        # A fresh measurement cache, as on a new machine: the selection measures every candidate.
        env = dict(os.environ, EDGEKD_CACHE=str(Path(tmp) / "cache"))
        proc = subprocess.run([sys.executable, "-m", "edgekd", "compress"], cwd=tmp,
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        report = json.loads(next(Path(tmp, "runs").glob("*/report.json")).read_text())
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    doc = {
        "benchmark": "compress_default",
        "command": "edgekd compress",
        "wall_time_s": round(wall, 1),
        "budget_s": BUDGET_S,
        "within_budget": wall <= BUDGET_S,
        "peak_rss_mib": round(peak_kb / 1024),
        "teacher": {k: report["teacher"][k] for k in ("arch", "params", "macs", "accuracy", "accuracy_best_epoch")},
        "student": {k: report["student"][k] for k in ("arch", "params", "macs", "accuracy", "accuracy_best_epoch")},
        "compression_factor": report["compression_factor"],
        "latency": report["latency"],
        "budget": report.get("budget"),
        "machine": capture(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"edgekd compress: {wall:.0f} s (budget {BUDGET_S} s), teacher {doc['teacher']['accuracy']} %, "
          f"student {doc['student']['arch']} {doc['student']['accuracy']} %, CF {doc['compression_factor']}, "
          + (f"{doc['budget']['final']['speedup']}x faster at batch {doc['budget']['final']['batch']} "
             f"(budget holds: {doc['budget']['holds']}), " if doc.get("budget") else "")
          + f"peak RSS {doc['peak_rss_mib']} MiB -> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
