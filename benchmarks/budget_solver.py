"""The budget solver on digits: `edgekd compress --speedup 20` with a fresh measurement cache,
then `edgekd bench --verify` on its run, a second and independent measurement of the chosen
student against the same budget.

Saves every combination measured (key, precision, size, latency at the CI's upper end, fits,
why an INT8 row was never an option), the proxy's scores, the choice, the final check, the
verification's verdict and both wall times, with the machine, to
benchmarks/results/budget_solver_digits.json.

    python benchmarks/budget_solver.py [--speedup 20] [--work /tmp/edgekd-budget-solver]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deploy.envinfo import capture

RESULTS = Path(__file__).resolve().parent / "results" / "budget_solver_digits.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speedup", type=float, default=20.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekd-budget-solver"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    run = args.work / "run"
    # A fresh measurement cache, as on a new machine: every combination is measured.
    env = dict(os.environ, EDGEKD_CACHE=str(args.work / "cache"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgekd", "compress", "--speedup", f"{args.speedup:g}",
                    "--out", str(run)], check=True, env=env)
    compress_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    verify = subprocess.run([sys.executable, "-m", "edgekd", "bench", "--verify", str(run), "--json"],
                            capture_output=True, text=True, env=env)
    verify_s = time.perf_counter() - t1
    if verify.returncode not in (0, 1):
        print(verify.stderr[-3000:], file=sys.stderr)
        return verify.returncode
    verdict = json.loads(verify.stdout)
    sel = json.loads((run / "select" / "select.json").read_text())
    report = json.loads((run / "report.json").read_text())
    rows = [{k: r.get(k) for k in ("key", "arch", "input_size", "precision", "macs", "value_ms",
                                   "fits", "excluded", "option")} for r in sel["candidates"]]
    doc = {
        "benchmark": "budget_solver_digits",
        "command": f"edgekd compress --speedup {args.speedup:g}; edgekd bench --verify RUN",
        "axes": sel["axes"],
        "budget": sel["budget"],
        "teacher_ms": sel["teacher"]["value_ms"],
        "combinations": rows,
        "measured": sel["measured"],
        "proxy": sel.get("proxy"),
        "choice": sel["choice"],
        "chosen_by": sel["chosen_by"],
        "final_check": report["budget"]["final"],
        "student_test_top1": report["student"]["accuracy"],
        "teacher_test_top1": report["teacher"]["accuracy"],
        "verify": {"exit_code": verify.returncode, "document": verdict},
        "wall_time_s": {"compress": round(compress_s, 1), "verify": round(verify_s, 1)},
        "machine": capture(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    fits = sum(1 for r in rows if r["fits"])
    slower = sum(1 for r in rows if r["excluded"])
    print(f"{len(rows)} combinations ({', '.join(sel['axes']['precisions'])} x "
          f"{'/'.join(map(str, sel['axes']['input_sizes']))} px), {fits} fit, {slower} slower than fp32; "
          f"chose {sel['choice']['key']} ({sel['chosen_by']}); final check holds: "
          f"{report['budget']['holds']}; verify exit {verify.returncode}; {compress_s:.0f} s -> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
