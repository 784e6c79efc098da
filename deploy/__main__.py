"""`python -m deploy`: the device-side command line (bench, env, probe, verify, run-bundle);
parses, prints, writes. Verbs import what they need, so `probe` and `verify` work on a device
that lacks numpy or onnxruntime (which is what `probe` reports)."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from typing import List, Optional

from .errors import DeployError, RunnerUnavailable

SCENARIOS = {"single-stream": [1], "sweep": [1, 8, 64]}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy",
                                description="Measure models on this device (edgekd's device side).")
    verbs = p.add_subparsers(dest="verb")
    verbs.required = True  # argparse of Python 3.8 takes no required= in add_subparsers

    b = verbs.add_parser("bench", help="measure a model's latency on this machine")
    b.add_argument("model", help="model file (.onnx, or a TensorRT .engine with --backend tensorrt)")
    b.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt"))
    b.add_argument("--inputs", metavar="SAMPLES.npy", help=".npy of samples (N, C, H, W); default: uniform noise")
    b.add_argument("--scenario", choices=sorted(SCENARIOS),
                   help="single-stream: batch 1, strictly one query at a time, p90 as MLPerf; "
                        "sweep: batches 1, 8, 64 with throughput (default: single-stream, or "
                        "the --batch sizes)")
    b.add_argument("--batch", type=int, action="append", dest="batches", metavar="N",
                   help="batch size, repeatable (replaces the scenario's sizes)")
    _runner_options(b)
    _measure_options(b)
    b.add_argument("--no-timings", action="store_true", help="leave per-iteration timings out")
    b.add_argument("--out", default="bench.json", metavar="FILE", help="JSON document to write (default: %(default)s)")

    verbs.add_parser("env", help="print this machine's description as JSON")

    pr = verbs.add_parser("probe", help="print this device's Python, libraries, rsync and free space as JSON")
    pr.add_argument("dir", nargs="?", default=".", help="where a bundle would go (default: .)")

    v = verbs.add_parser("verify", help="check a bundle folder against its manifest")
    v.add_argument("bundle")
    v.add_argument("--expect", metavar="SHA256", help="the manifest's sha256, as the sender knows it")

    r = verbs.add_parser("run-bundle", help="verify a bundle, check accuracy and measure its models")
    r.add_argument("bundle")
    r.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt"))
    r.add_argument("--batch", type=int, action="append", dest="batches", metavar="N",
                   help="batch size, repeatable (default: 1, 8, 64)")
    r.add_argument("--model", action="append", dest="models", metavar="KEY",
                   help="only this model of the bundle (repeatable; default: all)")
    r.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8"),
                   help="TensorRT precision for FP32 models (int8: calibrated on the bundle's "
                        "calibration set); INT8 (Q/DQ) models build as INT8")
    r.add_argument("--engine-cache", metavar="DIR",
                   help="TensorRT engine cache (default: engines/ beside the bundle)")
    _runner_options(r)
    _measure_options(r)
    r.add_argument("--out", required=True, metavar="FILE", help="edgekd.run-bench JSON to write")
    return p


def _runner_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="ONNX Runtime intra-op threads (default: the CPUs this process may use)")
    p.add_argument("--provider", action="append", dest="providers", metavar="NAME",
                   help="ONNX Runtime execution provider: cpu, cuda, tensorrt, or auto (CUDA "
                        "when this onnxruntime has it); repeatable; default cpu")
    p.add_argument("--power", default="auto", choices=("auto", "tegrastats", "jtop", "off"),
                   help="sample power rails while measuring (auto: tegrastats or jtop when "
                        "present, i.e. on a Jetson)")


def _measure_options(p: argparse.ArgumentParser) -> None:
    from .harness import MeasureSettings

    d = MeasureSettings()
    for flag, kind, default, what in (
        ("--warmup-s", float, d.warmup_s, "warm up at least this many seconds"),
        ("--warmup-iters", int, d.warmup_iters, "and at least this many runs"),
        ("--min-s", float, d.min_s, "measure at least this many seconds"),
        ("--min-iters", int, d.min_iters, "and at least this many runs"),
        ("--max-s", float, d.max_s, "stop measuring after this many seconds"),
        ("--max-iters", int, d.max_iters, "or this many runs"),
    ):
        p.add_argument(flag, type=kind, default=default, help=what + " (default: %(default)s)")
    p.add_argument("--sustain", type=float, default=0.0, metavar="SECONDS",
                   help="then run the largest batch this long without pause and report the "
                        "latency's drift (thermal steady state on a Jetson); default: off")


def _settings(args: argparse.Namespace):
    from .harness import MeasureSettings

    # A --min-s / --min-iters beyond the default caps raises the caps rather than failing.
    return MeasureSettings(
        warmup_s=args.warmup_s, warmup_iters=args.warmup_iters, min_s=args.min_s,
        min_iters=args.min_iters, max_s=max(args.max_s, args.min_s),
        max_iters=max(args.max_iters, args.min_iters))


def _batches(args: argparse.Namespace) -> List[int]:
    if args.scenario == "single-stream" and args.batches and set(args.batches) != {1}:
        raise DeployError("--scenario single-stream is batch 1: drop --batch or use --scenario sweep")
    return args.batches or SCENARIOS[args.scenario or "single-stream"]


def _bench(args: argparse.Namespace) -> int:
    from .bench import format_table, run_bench, summary_lines, write_json_atomic

    options = {}
    if args.backend == "onnxruntime":
        options = {"intra_op_threads": args.threads, "providers": args.providers}
    elif args.threads is not None or args.providers:
        raise DeployError("--threads and --provider apply to --backend onnxruntime only")
    doc = run_bench(args.model, args.backend, args.inputs, _batches(args), _settings(args),
                    options, keep_timings=not args.no_timings, power=args.power, sustain_s=args.sustain)
    write_json_atomic(args.out, doc)
    for warning in doc["environment"]["warnings"]:
        print("warning: " + warning, file=sys.stderr)
    runner = doc["runner"]
    print("%s  (%s)" % (doc["model"]["path"],
                        ", ".join([runner["backend"]] + list(runner.get("providers") or []))))
    print(format_table(doc))
    for line in summary_lines(doc):
        print(line)
    print("wrote " + args.out)
    return 0


def _run_bundle(args: argparse.Namespace) -> int:
    from .bench import write_json_atomic
    from .run_bundle import run_bundle

    if args.backend == "tensorrt" and (args.threads is not None or args.providers):
        raise DeployError("--threads and --provider apply to --backend onnxruntime only")
    doc = run_bundle(args.bundle, args.backend, args.batches or SCENARIOS["sweep"], _settings(args),
                     threads=args.threads, providers=args.providers, engine_cache=args.engine_cache,
                     precision=args.precision, models=args.models, power=args.power,
                     sustain_s=args.sustain)
    write_json_atomic(args.out, doc)
    for key, m in sorted(doc["models"].items()):
        acc = m["accuracy"]
        print("%s: top-1 %.2f %% on %d samples, agreement with the workstation %s %%"
              % (key, acc["top1"], acc["samples"], acc["agreement"]))
    print("wrote " + args.out)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.verb == "env":
            from .envinfo import capture

            print(json.dumps(capture(), indent=1))
            return 0
        if args.verb == "probe":
            from .probe import probe

            print(json.dumps(probe(args.dir)))
            return 0
        if args.verb == "verify":
            from .verify import main as verify_main

            return verify_main([args.bundle] + (["--expect", args.expect] if args.expect else []))
        if args.verb == "run-bundle":
            return _run_bundle(args)
        return _bench(args)
    except (DeployError, RunnerUnavailable) as e:  # user-fixable: one line, no traceback
        print("error: %s" % e, file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print("error: no space left on this device writing %s: free space and retry"
              % (e.filename or "a file"), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
