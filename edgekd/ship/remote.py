"""`edgekd deploy` as a library: build a run's bundle, check the device, ship the bundle into a
staging folder there, verify it with the workstation's own checker and only then rename it
into place, run it (accuracy check + latency harness, TensorRT engines built there), and
bring the results back as RUN/bench-<target>.json.

Safe to interrupt and to retry at any point: the device only ever runs a folder that passed
verification, a partial transfer stays in the staging folder (rsync resumes it; scp starts
over), and the results file in the run appears whole or not at all.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deploy
from deploy.bundle import build_bundle
from deploy.errors import DeployError, RunnerUnavailable
from deploy.harness import MeasureSettings
from edgekd.errors import RunDirError, ShipError
from edgekd.io import write_json
from edgekd.runfiles import CONFIG, REPORT, ensure_samples
from edgekd.ship.transport import (
    Target,
    Transport,
    check_remote_path,
    make_transport,
    parse_target,
    ssh_error,
)

RESULT_SCHEMA = "edgekd.run-bench"
MIN_PYTHON = (3, 8)
MODEL_FILES = {"teacher": "teacher.onnx", "student": "student.onnx",
               "teacher.int8": "teacher.int8.onnx", "student.int8": "student.int8.onnx"}
CALIB_DIRS = ("calib", "calibration")  # where a run keeps its calibration set, if it has one
BUNDLE_DIR = "bundle"  # RUN/bundle/: the last bundle built, the exact folder that is shipped
PROBE_TIMEOUT_S = 180  # importing onnxruntime / tensorrt on a cold Jetson takes seconds
SPACE_MARGIN = 4 << 20  # results files and Python's own temporary files

Progress = Callable[[str, str], None]


@dataclass
class DeployOptions:
    """Everything `edgekd deploy` takes besides the run directory."""

    target: str = "local"
    backend: str = "onnxruntime"
    remote_python: str | None = None  # default: python3 on a device, this Python for local
    remote_dir: str | None = None  # default: edgekd-bundles in the device user's home
    batch_sizes: Sequence[int] = (1, 8, 64)
    threads: int | None = None
    providers: Sequence[str] | None = None
    precision: str = "fp16"
    models: Sequence[str] | None = None
    ssh_config: str | None = None
    transfer: str = "auto"  # auto | rsync | scp | tar
    bwlimit_kbps: int | None = None
    connect_timeout_s: int = 20
    settings: MeasureSettings = field(default_factory=MeasureSettings)
    sustain_s: float = 0.0  # > 0: each model then runs this long at the largest batch


@dataclass
class Device:
    """A target that answered the probe: how to reach it and what it runs."""

    target: Target
    transport: Transport
    python: str
    remote_dir: str
    probe: dict


def connect(opts: DeployOptions, progress: Progress | None = None, bundle_bytes: int = 0) -> Device:
    """Check the options, reach `opts.target` and probe it (Python, libraries, free space for
    `bundle_bytes`); one-line ShipErrors naming the fix otherwise."""
    say = progress or (lambda step, detail: None)
    target = parse_target(opts.target)
    _check_options(opts)
    remote_dir = _remote_dir(target, opts.remote_dir)  # refused before any work is done
    transport = make_transport(target, opts.ssh_config, opts.connect_timeout_s, opts.bwlimit_kbps)
    python = opts.remote_python or (sys.executable if target.kind == "local" else "python3")
    say("probe", f"{target.display}: {python}")
    probe = probe_device(transport, python, remote_dir, opts.backend, bundle_bytes)
    say("probe", f"Python {probe['python']['version']}, "
                 + ", ".join(f"{k} {v}" for k, v in probe["modules"].items() if v)
                 + (f", {probe['free_bytes'] / 2**20:.0f} MiB free" if probe.get("free_bytes") is not None else ""))
    return Device(target, transport, python, remote_dir, probe)


def manifest_bytes(manifest: dict) -> int:
    """What shipping the bundle of `manifest` writes on the device, in bytes."""
    return sum(f["bytes"] for f in manifest["files"].values()) + len(json.dumps(manifest))


def run_on_device(device: Device, bundle_dir: Path, manifest: dict, opts: DeployOptions,
                  progress: Progress | None = None) -> dict:
    """Ship the bundle folder `bundle_dir` (built by deploy.bundle, `manifest` its manifest)
    to the device unless a verified copy is already there, run it and return {'document':
    the checked edgekd.run-bench results, 'bundle', 'transfer', 'reused'}."""
    say = progress or (lambda step, detail: None)
    target, transport, python, remote_dir = device.target, device.transport, device.python, device.remote_dir
    check_space(device, manifest_bytes(manifest))
    bundle_id, name = manifest["manifest_sha256"], manifest["name"]
    method = _method(opts.transfer, transport, device.probe)
    final = f"{remote_dir}/{name}-{bundle_id[:12]}"
    staging = f"{remote_dir}/.staging-{name}-{bundle_id[:12]}"
    reused = _verify(transport, python, final, bundle_id, check_only=True)
    if reused:
        say("transfer", f"{final} is already there and verified: nothing to send")
    else:
        _ok(transport, ["mkdir", "-p", "--", remote_dir], "create " + remote_dir)
        say("transfer", f"{method} -> {target.display}:{staging}")
        used = transport.push(bundle_dir, staging, method)
        if used != method:
            say("transfer", f"{target.display} refused {method} (no sftp subsystem): sent with {used}")
        method = used
        _verify(transport, python, staging, bundle_id, promote=final, prune=f"{name}-")
        say("verify", f"checksums match; {final} is in place")

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result_path = f"{remote_dir}/results/{name}-{bundle_id[:12]}-{stamp}-{uuid.uuid4().hex[:8]}.json"
    _ok(transport, ["mkdir", "-p", "--", f"{remote_dir}/results"], "create the results folder")
    say("run", f"{opts.backend}: accuracy check and latency at batch "
               f"{', '.join(map(str, opts.batch_sizes))} on {target.display}")
    command = run_command(python, final, result_path, opts, f"{remote_dir}/engines")
    if target.kind == "ssh":
        command = SIGNAL_STATUS + command
    done = transport.run(command)
    _check_run(transport.target, done, python)

    doc = fetch_results(transport, result_path, manifest)
    doc["where"] = target.display
    doc["target"] = {"spec": target.display, "kind": target.kind, "python": python,
                     "remote_dir": remote_dir, "bundle_dir": final, "results": result_path}
    doc["transfer"] = {"method": None if reused else method, "reused": reused, "bundle_id": bundle_id}
    return {"document": doc, "bundle": {"id": bundle_id, "dir": final},
            "transfer": None if reused else method, "reused": reused}


def check_options(opts: DeployOptions) -> None:
    """Refuse options that cannot work (target syntax, backend, transfer, batch sizes, the
    remote folder) before any work is done; nothing is contacted."""
    _check_options(opts)
    _remote_dir(parse_target(opts.target), opts.remote_dir)


def deploy_run(run_dir: str | Path, opts: DeployOptions, progress: Progress | None = None,
               results_dir: str | None = None, open_data: Callable | None = None) -> dict:
    """Ship the run to `opts.target`, measure it there and return {'path': the results file in
    the run (RUN/bench-<target>.json, or under RUN/<results_dir>/), 'document': its
    edgekd.run-bench content, 'bundle', 'transfer', 'probe'}. `open_data` opens the run's
    data set when its sample inputs must be written (edgekd.runfiles.ensure_samples)."""
    say = progress or (lambda step, detail: None)
    run = Path(run_dir)
    check_options(opts)
    if not (run / CONFIG).is_file():
        raise RunDirError(f"{run} is not an edgekd run directory (no {CONFIG}): pass a run's folder")

    say("bundle", "building")
    manifest = build_run_bundle(run, opts.models, open_data)
    size = manifest_bytes(manifest)
    say("bundle", f"{run / BUNDLE_DIR}: {len(manifest['models'])} models, {len(manifest['files'])} files, "
                  f"{size / 2**20:.1f} MiB, id {manifest['manifest_sha256'][:12]}")
    device = connect(opts, say, size)
    result = run_on_device(device, run / BUNDLE_DIR, manifest, opts, say)
    out = (run / results_dir if results_dir else run) / f"bench-{device.target.slug}.json"
    write_json(out, result["document"])
    return {"path": str(out), **result, "probe": device.probe}


def build_run_bundle(run: Path, models: Sequence[str] | None = None,
                     open_data: Callable | None = None) -> dict[str, Any]:
    """RUN/bundle/ from the run's ONNX models, sample images with labels and calibration set."""
    present = {k: run / f for k, f in MODEL_FILES.items() if (run / f).is_file()}
    if models:
        unknown = [m for m in models if m not in MODEL_FILES]
        if unknown:
            raise ShipError(f"--model {unknown[0]}: use one of {', '.join(MODEL_FILES)}")
        missing = [m for m in models if m not in present]
        if missing:
            raise RunDirError(f"{run} has no {MODEL_FILES[missing[0]]}: quantize or export it first")
        present = {k: present[k] for k in models}
    if "student" not in present and not models:
        raise RunDirError(f"{run} has no student.onnx: finish the run (edgekd compress --resume) "
                          "or export it (edgekd export)")
    report = json.loads((run / REPORT).read_text()) if (run / REPORT).is_file() else {}
    entries = {}
    for key, path in present.items():
        role = key.split(".")[0]
        facts = report.get(role, {})
        entries[key] = {"path": str(path), "role": role,
                        "precision": "int8" if key.endswith(".int8") else "fp32",
                        **{k: facts[k] for k in ("arch", "macs", "params") if k in facts}}
        if "accuracy" in facts and role == key:  # the FP32 model's test top-1 from report.json
            entries[key]["test_top1"] = facts["accuracy"]
    samples, labels = ensure_samples(run, open_data=open_data)
    calib = next((run / d for d in CALIB_DIRS if (run / d / "calib.json").is_file()), None)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", run.resolve().name)[:80] or "run"
    source = {"run": run.resolve().name, "dataset": (report.get("dataset") or {}).get("name"),
              "method": report.get("method"), "edgekd_version": report.get("edgekd_version")}
    try:
        return build_bundle(str(run / BUNDLE_DIR), entries, str(samples), str(labels), name,
                            str(calib) if calib else None, source)
    except (DeployError, RunnerUnavailable) as e:
        raise ShipError(str(e)) from None


def probe_device(transport: Transport, python: str, remote_dir: str, backend: str,
                 bundle_bytes: int) -> dict:
    """Run deploy/probe.py's source with the device's Python; refuse, in one line naming the
    fix, when Python is missing or too old, a needed library is missing, or space is short."""
    where = transport.target.display
    done = transport.run([python, "-c", _source("probe"), remote_dir], timeout=PROBE_TIMEOUT_S)
    if done.returncode == 255 and transport.target.kind == "ssh":
        raise ssh_error(transport.target, done.stderr) or ShipError(
            f"ssh to {where} failed: {_tail(done.stderr)}")
    if done.returncode in (126, 127):
        raise ShipError(f"{python} not found on {where}: install python3 there, or pass "
                        "--remote-python PATH (e.g. a venv's bin/python)")
    info = _last_json(done.stdout)
    if done.returncode != 0 or info is None:
        raise ShipError(f"{python} on {where} could not describe itself (exit {done.returncode}: "
                        f"{_tail(done.stderr)}); is it Python 3.8 or newer?")
    version = tuple(int(p) for p in info["python"]["version"].split(".")[:2])
    if version < MIN_PYTHON:
        raise ShipError(f"{python} on {where} is Python {info['python']['version']}; deploy/ needs "
                        "3.8 or newer (JetPack 5+): pass --remote-python PATH")
    need = ["numpy"] + (["onnxruntime"] if backend == "onnxruntime" else ["tensorrt", "pycuda"])
    missing = [m for m in need if not info["modules"].get(m)]
    if missing:
        why = "; ".join(f"{m}: {info['import_errors'][m]}" for m in missing
                        if "No module named" not in info["import_errors"].get(m, "No module named"))
        hints = {"numpy": "pip3 install numpy", "onnxruntime": "pip3 install onnxruntime (on a "
                 "Jetson: the onnxruntime-gpu wheel for its JetPack)", "tensorrt": "TensorRT "
                 "comes with JetPack (sudo apt install python3-libnvinfer)", "pycuda": "pip3 "
                 "install pycuda"}
        raise ShipError(f"{where} lacks {', '.join(missing)} for {python} (Python "
                        f"{info['python']['version']}){' (' + why + ')' if why else ''}: "
                        + "; ".join(hints[m] for m in missing)
                        + ", or pass --remote-python PATH of a venv that has them")
    _check_free(where, info, bundle_bytes)
    return info


def check_space(device: Device, needed: int) -> None:
    """Refuse a bundle of `needed` bytes the probed free space cannot hold."""
    _check_free(device.target.display, device.probe, needed)


def _check_free(where: str, info: dict, needed: int) -> None:
    free = info.get("free_bytes")
    if free is not None and free < needed + SPACE_MARGIN:
        raise ShipError(f"not enough space on {where}: {free / 2**20:.1f} MiB free at "
                        f"{info['free_measured_at']}, the bundle needs {(needed + SPACE_MARGIN) / 2**20:.1f} "
                        "MiB: free space there or pass --remote-dir on a larger disk")


# Imports deploy/ from the bundle and nowhere else: `python -m deploy` would put the current
# folder first on sys.path, and a `deploy` folder there would win. No .pyc is written into the
# verified folder, which must keep holding exactly what its manifest lists. faulthandler puts
# the Python stack of a native crash (a CUDA or TensorRT library) on stderr, which edgekd shows.
LAUNCH = ("import faulthandler, os, sys; faulthandler.enable(); sys.dont_write_bytecode = True; "
          "b = os.path.abspath(sys.argv[1]); "
          "sys.path.insert(0, b); import deploy; "
          "assert os.path.dirname(os.path.dirname(os.path.abspath(deploy.__file__))) == b, deploy.__file__; "
          "from deploy.__main__ import main; sys.exit(main(sys.argv[2:]))")


# A harness killed by a signal (a segfault in a native library, the OOM killer) would make
# ssh exit 255, which reads as a lost link; under sh it exits 128 + the signal number, as a
# shell reports it. The script is a constant and the command's words follow as "$@".
SIGNAL_STATUS = ["sh", "-c", '"$@"; exit $?', "sh"]


def run_command(python: str, bundle_dir: str, result_path: str, opts: DeployOptions,
                engine_cache: str) -> list[str]:
    """The device-side command as an argument list: the bundle's own deploy/ package running
    `run-bundle` on the bundle."""
    s = opts.settings
    argv = [python, "-c", LAUNCH, bundle_dir,
            "run-bundle", bundle_dir, "--out", result_path, "--backend", opts.backend,
            "--engine-cache", engine_cache, "--precision", opts.precision,
            "--warmup-s", repr(s.warmup_s), "--warmup-iters", str(s.warmup_iters),
            "--min-s", repr(s.min_s), "--min-iters", str(s.min_iters),
            "--max-s", repr(s.max_s), "--max-iters", str(s.max_iters)]
    for b in opts.batch_sizes:
        argv += ["--batch", str(b)]
    if opts.sustain_s:
        argv += ["--sustain", repr(float(opts.sustain_s))]
    for m in opts.models or []:
        argv += ["--model", m]
    if opts.backend == "onnxruntime":
        if opts.threads:
            argv += ["--threads", str(opts.threads)]
        for p in opts.providers or []:
            argv += ["--provider", p]
    return argv


def fetch_results(transport: Transport, path: str, manifest: dict) -> dict:
    """The results document from the device, checked against the schema and this bundle; it
    is only ever parsed as JSON (data), never executed."""
    where = transport.target.display
    raw = transport.read(path)
    if raw is None:
        raise ShipError(f"the run on {where} ended without writing its results ({path}): rerun "
                        "the deploy")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ShipError(f"the results from {where} ({path}) are not valid JSON ({e}): rerun the "
                        "deploy") from None
    problem = _results_problem(doc, manifest)
    if problem:
        raise ShipError(f"the results from {where} ({path}) are malformed: {problem}: rerun the "
                        "deploy (a device running another edgekd version needs the same one)")
    return doc


def _results_problem(doc: Any, manifest: dict) -> str | None:
    if not isinstance(doc, dict):
        return "not a JSON object"
    if doc.get("schema") != RESULT_SCHEMA or doc.get("schema_version") != deploy.SCHEMA_VERSION:
        return f"schema {doc.get('schema')!r} v{doc.get('schema_version')!r}, expected {RESULT_SCHEMA} v{deploy.SCHEMA_VERSION}"
    if (doc.get("bundle") or {}).get("id") != manifest["manifest_sha256"]:
        return "they belong to another bundle"
    models = doc.get("models")
    if not isinstance(models, dict) or not models:
        return "no models"
    for key, m in models.items():
        if key not in manifest["models"]:
            return f"unknown model {key!r}"
        if not isinstance(m, dict) or m.get("schema") != deploy.SCHEMA_NAME:
            return f"{key} is not an {deploy.SCHEMA_NAME} document"
        results = m.get("results")
        if not isinstance(results, list) or not results:
            return f"{key} has no results"
        for r in results:
            lat = r.get("latency_ms") if isinstance(r, dict) else None
            if not isinstance(lat, dict) or not all(
                    isinstance(lat.get(k), (int, float)) and math.isfinite(lat[k]) and lat[k] >= 0
                    for k in ("p50", "p90", "p99", "mean")):
                return f"{key} has a result without finite latencies"
        if not isinstance(m.get("accuracy"), dict):
            return f"{key} has no accuracy check"
    return None


def _verify(transport: Transport, python: str, folder: str, bundle_id: str, promote: str | None = None,
            prune: str | None = None, check_only: bool = False) -> bool:
    """Run deploy/verify.py's source (this machine's copy) on the device against `folder`;
    promote it to `promote` when it matches. With check_only a mismatch is just False."""
    argv = [python, "-c", _source("verify"), folder, "--expect", bundle_id]
    if promote:
        argv += ["--promote", promote]
    if prune:
        argv += ["--prune", prune]
    done = transport.run(argv, timeout=PROBE_TIMEOUT_S)
    if done.returncode == 0:
        return True
    if done.returncode == 255 and transport.target.kind == "ssh":
        raise ssh_error(transport.target, done.stderr) or ShipError(
            f"ssh to {transport.target.display} failed: {_tail(done.stderr)}")
    if check_only:
        return False
    # Whatever arrived does not match: remove it, so the next attempt starts clean.
    transport.run(["rm", "-rf", "--", folder], timeout=PROBE_TIMEOUT_S)
    raise ShipError(f"the bundle on {transport.target.display} failed verification after the "
                    f"transfer ({_tail(done.stderr)}); the copy was removed and nothing ran: rerun")


def _check_run(target: Target, done, python: str) -> None:
    if done.returncode == 0:
        return
    if done.returncode == 255 and target.kind == "ssh":
        raise ssh_error(target, done.stderr) or ShipError(
            f"lost {target.display} during the run: {_tail(done.stderr)}")
    if done.returncode in (126, 127) and "deploy" not in done.stderr:
        raise ShipError(f"{python} not found on {target.display}: pass --remote-python PATH")
    errors = [x.strip() for x in done.stderr.splitlines() if x.strip().startswith("error:")]
    if done.returncode == 2 and errors:
        raise ShipError(f"on {target.display}: {errors[-1][len('error:'):].strip()}")
    if done.returncode < 0:
        how = f"signal {-done.returncode}"
    elif target.kind == "ssh" and 128 < done.returncode < 160:
        how = f"signal {done.returncode - 128}"
    else:
        how = f"exit {done.returncode}"
    raise ShipError(f"the harness crashed on {target.display} ({how}); its stderr ends: "
                    f"{_crash_tail(done.stderr)}")


def _crash_tail(stderr: str, lines: int = 6) -> str:
    """The last lines of a crash's stderr; a native crash's headline (faulthandler's "Fatal
    Python error: ...", printed above the stack) is kept in front when the tail misses it."""
    tail = _tail(stderr, lines)
    fatal = next((x.strip() for x in (stderr or "").splitlines() if x.startswith("Fatal Python error")), None)
    return f"{fatal} | ... | {tail}" if fatal and fatal not in tail else tail


def _ok(transport: Transport, argv: list[str], what: str) -> None:
    done = transport.run(argv, timeout=PROBE_TIMEOUT_S)
    if done.returncode == 0:
        return
    if done.returncode == 255 and transport.target.kind == "ssh":
        raise ssh_error(transport.target, done.stderr) or ShipError(
            f"ssh to {transport.target.display} failed: {_tail(done.stderr)}")
    raise ShipError(f"could not {what} on {transport.target.display}: {_tail(done.stderr)}")


def _method(wanted: str, transport: Transport, probe: dict) -> str:
    if transport.target.kind == "local":
        return "copy"
    both = transport.has_local_rsync() and bool(probe.get("rsync"))
    if wanted == "rsync" and not both:
        side = "this machine" if not transport.has_local_rsync() else transport.target.display
        raise ShipError(f"--transfer rsync, but rsync is not installed on {side}: install it or "
                        "use --transfer scp")
    if wanted == "auto":
        return "rsync" if both else "scp"
    return wanted


def _remote_dir(target: Target, given: str | None) -> str:
    if target.kind == "local":
        return str(Path(given or "~/edgekd-bundles").expanduser().resolve())
    return check_remote_path(given or "edgekd-bundles")


def _check_options(opts: DeployOptions) -> None:
    if opts.backend not in ("onnxruntime", "tensorrt"):
        raise ShipError(f"--backend {opts.backend!r}: use onnxruntime or tensorrt")
    if opts.transfer not in ("auto", "rsync", "scp", "tar"):
        raise ShipError(f"--transfer {opts.transfer!r}: use auto, rsync, scp or tar")
    if not opts.batch_sizes or min(opts.batch_sizes) < 1:
        raise ShipError(f"--batch must be >= 1, got {list(opts.batch_sizes)}")
    if opts.backend == "tensorrt" and (opts.threads or opts.providers):
        raise ShipError("--threads and --provider apply to --backend onnxruntime only")
    if opts.sustain_s < 0:
        raise ShipError(f"--sustain {opts.sustain_s:g}: give the seconds to run each model, or 0 for none")


def _source(name: str) -> str:
    # This machine's copy of the checker, sent as `python -c`: what decides whether a
    # transferred folder may run must not be code that arrived in that folder.
    return (Path(deploy.__file__).parent / f"{name}.py").read_text()


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


def _tail(text: str, lines: int = 3) -> str:
    kept = [x.strip() for x in (text or "").strip().splitlines() if x.strip()][-lines:]
    return " | ".join(kept)[-600:] or "no message"

