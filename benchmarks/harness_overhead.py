"""What does deploy's harness add to a latency figure? Its p50 against a bare `session.run`
loop on the same ONNX Runtime session and the same batches; target: within 2 %.

Rounds alternate which side goes first (ABBA), so drift in clocks, heat or background load
falls on both sides alike. Results go to benchmarks/results/harness_overhead.json.

    python benchmarks/harness_overhead.py [MODEL.onnx] [--rounds 6] [--min-s 1.5] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from dataclasses import asdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, ROOT)

from deploy.bench import random_inputs, sha256_file, write_json_atomic  # noqa: E402
from deploy.envinfo import capture  # noqa: E402
from deploy.harness import MeasureSettings, assemble_batches, measure  # noqa: E402
from deploy.runners import OrtRunner  # noqa: E402
from deploy.stats import percentiles  # noqa: E402

TARGET_PCT = 2.0
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "harness_overhead.json")


def build_convnet(path: str) -> str:
    """A CIFAR-shaped conv net (3x32x32 -> 10): two 3x3 convs, pooling, a linear head."""
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "overhead_convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [init("w1", 32, 3, 3, 3), init("b1", 32), init("w2", 64, 32, 3, 3), init("b2", 64),
         init("w3", 10, 64), init("b3", 10)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def bare_loop(session, input_name: str, batches, iterations: int) -> list:
    """The tightest loop: feed dict and output names made outside the timed region,
    perf_counter_ns around session.run and nothing else."""
    outputs = [session.get_outputs()[0].name]  # run(None, ...) would rebuild this list per call
    times = []
    for i in range(iterations):
        feed = {input_name: batches[i % len(batches)]}
        t0 = time.perf_counter_ns()
        session.run(outputs, feed)
        times.append(time.perf_counter_ns() - t0)
    return [t / 1e6 for t in times]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="ONNX model (default: a small conv net built here)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--min-s", type=float, default=1.5, help="seconds per side per round")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (1: least noise)")
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory()
    model = args.model or build_convnet(os.path.join(tmp.name, "convnet.onnx"))
    runner = OrtRunner(model, intra_op_threads=args.threads)
    inputs = random_inputs(runner, 64)
    batches = assemble_batches(inputs, args.batch, runner.input_dtype)

    # Both sides get the same warm-up count and the same number of timed runs, sized so one
    # side of a round lasts about --min-s.
    warm = 20
    probe = bare_loop(runner.session, runner.input_name, batches, 200)
    n = max(200, int(args.min_s * 1e3 / float(np.median(probe))))
    settings = MeasureSettings(warmup_s=0, warmup_iters=warm, min_iters=n, min_s=0,
                               max_iters=n, max_s=max(60.0, 20 * args.min_s))

    rounds, harness_all, bare_all = [], [], []
    for r in range(args.rounds):
        harness_first = r % 4 in (0, 3)  # ABBA ordering
        sides = {}
        for side in (("harness", "bare") if harness_first else ("bare", "harness")):
            if side == "harness":
                sides[side] = measure(runner, inputs, args.batch, settings)["timings_ms"]
            else:
                bare_loop(runner.session, runner.input_name, batches, warm)
                sides[side] = bare_loop(runner.session, runner.input_name, batches, n)
        h, b = sides["harness"], sides["bare"]
        harness_all += h
        bare_all += b
        hp, bp = percentiles(h, (50,))["p50"], percentiles(b, (50,))["p50"]
        rounds.append({"first": "harness" if harness_first else "bare", "iterations": n,
                       "harness_p50_ms": hp, "bare_p50_ms": bp,
                       "overhead_pct": 100.0 * (hp / bp - 1.0)})

    hp, bp = percentiles(harness_all, (50,))["p50"], percentiles(bare_all, (50,))["p50"]
    overhead = 100.0 * (hp / bp - 1.0)
    summary = {
        "harness_p50_ms": hp,
        "bare_p50_ms": bp,
        "overhead_pct": overhead,
        "median_round_overhead_pct": float(np.median([x["overhead_pct"] for x in rounds])),
        "target_pct": TARGET_PCT,
        "within_target": abs(overhead) <= TARGET_PCT,
    }
    doc = {
        "benchmark": "harness_overhead",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": capture(),
        "model": {"path": args.model or "built: overhead_convnet 3x32x32 -> 10",
                  "sha256": sha256_file(model), "input_shape": runner.input_shape},
        "runner": runner.describe(),
        "batch_size": args.batch,
        "settings": {"rounds": args.rounds, "min_s": args.min_s, "harness": asdict(settings)},
        "rounds": rounds,
        "summary": summary,
    }
    runner.close()
    tmp.cleanup()
    write_json_atomic(args.out, doc)
    for x in rounds:
        print(f"round first={x['first']:<7} n={n:6d}  harness p50 {x['harness_p50_ms']:.4f} ms"
              f"  bare p50 {x['bare_p50_ms']:.4f} ms  {x['overhead_pct']:+.2f} %")
    verdict = "met" if summary["within_target"] else "MISSED"
    print(f"pooled: harness p50 {hp:.4f} ms, bare p50 {bp:.4f} ms, overhead {overhead:+.2f} %"
          f" (target +-{TARGET_PCT:.0f} %: {verdict})")
    print("wrote " + args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
