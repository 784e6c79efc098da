"""`python -m deploy`: the device-side command line (bench, env); parses, prints, writes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .bench import format_table, run_bench, write_json_atomic
from .envinfo import capture
from .errors import DeployError, RunnerUnavailable
from .harness import MeasureSettings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy",
                                description="Measure models on this device (edgekd's device side).")
    verbs = p.add_subparsers(dest="verb")
    verbs.required = True  # argparse of Python 3.8 takes no required= in add_subparsers

    b = verbs.add_parser("bench", help="measure a model's latency on this machine")
    b.add_argument("model", help="model file (.onnx, or a TensorRT .engine with --backend tensorrt)")
    b.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt"))
    b.add_argument("--inputs", metavar="SAMPLES.npy", help=".npy of samples (N, C, H, W); default: uniform noise")
    b.add_argument("--batch", type=int, action="append", dest="batches", metavar="N",
                   help="batch size, repeatable (default: 1)")
    b.add_argument("--threads", type=int, metavar="N",
                   help="ONNX Runtime intra-op threads (default: the CPUs this process may use)")
    b.add_argument("--provider", action="append", dest="providers", metavar="NAME",
                   help="ONNX Runtime execution provider: cpu, cuda, tensorrt (repeatable)")
    d = MeasureSettings()
    for flag, kind, default, what in (
        ("--warmup-s", float, d.warmup_s, "warm up at least this many seconds"),
        ("--warmup-iters", int, d.warmup_iters, "and at least this many runs"),
        ("--min-s", float, d.min_s, "measure at least this many seconds"),
        ("--min-iters", int, d.min_iters, "and at least this many runs"),
        ("--max-s", float, d.max_s, "stop measuring after this many seconds"),
        ("--max-iters", int, d.max_iters, "or this many runs"),
    ):
        b.add_argument(flag, type=kind, default=default, help=what + " (default: %(default)s)")
    b.add_argument("--no-timings", action="store_true", help="leave per-iteration timings out")
    b.add_argument("--out", default="bench.json", metavar="FILE", help="JSON document to write (default: %(default)s)")

    verbs.add_parser("env", help="print this machine's description as JSON")
    return p


def _bench(args: argparse.Namespace) -> int:
    # A --min-s / --min-iters beyond the default caps raises the caps rather than failing.
    settings = MeasureSettings(
        warmup_s=args.warmup_s, warmup_iters=args.warmup_iters, min_s=args.min_s,
        min_iters=args.min_iters, max_s=max(args.max_s, args.min_s),
        max_iters=max(args.max_iters, args.min_iters))
    options = {}
    if args.backend == "onnxruntime":
        options = {"intra_op_threads": args.threads, "providers": args.providers}
    elif args.threads is not None or args.providers:
        raise DeployError("--threads and --provider apply to --backend onnxruntime only")
    doc = run_bench(args.model, args.backend, args.inputs, args.batches or [1], settings,
                    options, keep_timings=not args.no_timings)
    write_json_atomic(args.out, doc)
    for warning in doc["environment"]["warnings"]:
        print("warning: " + warning, file=sys.stderr)
    runner = doc["runner"]
    print("%s  (%s)" % (doc["model"]["path"],
                        ", ".join([runner["backend"]] + list(runner.get("providers") or []))))
    print(format_table(doc))
    print("wrote " + args.out)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.verb == "env":
            print(json.dumps(capture(), indent=1))
            return 0
        return _bench(args)
    except (DeployError, RunnerUnavailable) as e:  # user-fixable: one line, no traceback
        print("error: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
