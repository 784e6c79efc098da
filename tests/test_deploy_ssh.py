"""`edgekd deploy` end to end against a real OpenSSH server on 127.0.0.1 (throwaway host and
user keys, a non-default port, host keys checked through a known_hosts file) and against the
`local` target: real bundles, rsync/scp, verification on arrival, ONNX Runtime runs on the
"device", and the faults a real link and device produce."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgekd.cli import cli
from tests import sshd

pytestmark = pytest.mark.skipif(sshd.missing() is not None, reason=str(sshd.missing()))

FAST = ["--warmup-s", "0", "--warmup-iters", "2", "--min-s", "0.02", "--min-iters", "5", "--max-s", "600"]  # ended by iterations, not the clock
RUN_FILES = ("config.yaml", "report.json", "teacher.onnx", "student.onnx", "samples.npy", "samples_labels.npy")
BENCH_KEYS = {"schema", "schema_version", "created", "environment", "model", "inputs", "runner", "settings",
              "results", "accuracy", "precision"}
RESULT_KEYS = {"batch_size", "iterations", "duration_s", "warmup", "stop_reason", "latency_ms",
               "throughput_ips", "timings_ms"}
LATENCY_KEYS = {"mean", "sd", "min", "p50", "p90", "p95", "p99", "max", "median_ci95", "p90_ci95", "p99_ci95"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = sshd.LoopbackSshd(tmp_path_factory.mktemp("sshd"))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def run(tiny_run, tmp_path):
    """A private copy of the shared run (deploy writes bundle/ and bench-*.json into it)."""
    copy = tmp_path / "digits"
    copy.mkdir()
    for f in RUN_FILES:
        shutil.copy(tiny_run / f, copy / f)
    return copy


def _deploy(run, target, *args, ssh_config=None, python=sys.executable, remote_dir=None):
    argv = ["deploy", str(run), "--target", target, *FAST]
    if ssh_config:
        argv += ["--ssh-config", str(ssh_config)]
    if python:
        argv += ["--remote-python", str(python)]
    if remote_dir:
        argv += ["--remote-dir", str(remote_dir)]
    return CliRunner().invoke(cli, argv + list(args))


def _url(server, port=None):
    return f"ssh://{server.user}@127.0.0.1:{port or server.port}"


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    last = r.stderr.strip().splitlines()[-1]
    lines = r.stderr.strip().splitlines()
    assert last.startswith("error: ") and sum(x.startswith("error:") for x in lines) == 1, r.stderr
    for n in needles:
        assert n in last, last
    return last


def _results(remote_dir: Path) -> list[Path]:
    return sorted((remote_dir / "results").glob("*.json")) if (remote_dir / "results").is_dir() else []


def _verify(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy", "verify", str(folder)], capture_output=True, text=True)


def test_deploy_over_ssh_runs_onnxruntime_remotely_and_writes_documented_json(server, run, tmp_path):
    device = tmp_path / "device" / "bundles"
    r = _deploy(run, _url(server), "--batch", "1", "--batch", "8", ssh_config=server.config, remote_dir=device)
    assert r.exit_code == 0, r.output
    out = run / f"bench-127.0.0.1-{server.port}.json"
    doc = json.loads(out.read_text())

    # The run-bench document (deploy/SCHEMA.md) about this very bundle, measured over ssh.
    assert doc["schema"] == "edgekd.run-bench" and doc["schema_version"] == 1
    assert doc["backend"] == "onnxruntime" and doc["where"] == _url(server)
    bundle_id = hashlib.sha256((run / "bundle" / "manifest.json").read_bytes()).hexdigest()
    assert doc["bundle"]["id"] == bundle_id == doc["transfer"]["bundle_id"]
    assert doc["transfer"] == {"method": "rsync", "reused": False, "bundle_id": bundle_id}
    assert doc["target"]["kind"] == "ssh" and doc["target"]["python"] == sys.executable
    final = Path(doc["bundle"]["path"])
    assert final.parent == device and final.name == f"digits-{bundle_id[:12]}"
    assert _verify(final).returncode == 0
    assert not list(device.glob(".staging-*"))  # promoted, not copied
    assert Path(doc["target"]["results"]) in _results(device)
    assert doc["environment"]["hostname"] and doc["environment"]["cpu"]["logical_cores"] >= 1

    x = np.load(run / "samples.npy")
    y = np.load(run / "samples_labels.npy")
    assert set(doc["models"]) == {"teacher", "student"}
    for key, m in doc["models"].items():
        assert BENCH_KEYS <= set(m) and m["schema"] == "edgekd.bench" and m["precision"] == "fp32"
        assert m["runner"]["backend"] == "onnxruntime" and m["runner"]["providers"] == ["CPUExecutionProvider"]
        # measured on the device's copy, fed the bundle's real images
        assert m["model"]["path"] == str(final / "models" / f"{key}.onnx")
        assert m["model"]["sha256"] == hashlib.sha256((run / f"{key}.onnx").read_bytes()).hexdigest()
        assert m["inputs"]["source"] == "file" and m["inputs"]["shape"] == list(x.shape)
        assert [res["batch_size"] for res in m["results"]] == [1, 8]
        for res in m["results"]:
            assert RESULT_KEYS <= set(res) and LATENCY_KEYS <= set(res["latency_ms"])
            assert len(res["timings_ms"]) == res["iterations"] >= 5
            assert 0 < res["latency_ms"]["p50"] <= res["latency_ms"]["p90"] <= res["latency_ms"]["max"]
        assert m["results"][0]["scenario"] == "SingleStream"
        assert m["results"][0]["p90_ms"] == m["results"][0]["latency_ms"]["p90"]
        # the accuracy check agrees with ONNX Runtime here, on the same labelled images
        sess = ort.InferenceSession(str(run / f"{key}.onnx"), providers=["CPUExecutionProvider"])
        logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        expected = round(100.0 * float(np.mean(np.argmax(logits, axis=1) == y)), 4)
        assert m["accuracy"] == {"samples": len(y), "top1": expected, "workstation_top1": expected,
                                 "agreement": 100.0}
    assert "teacher/student at batch 8" in r.stdout and "student" in r.stdout and "agree" in r.stdout
    assert "rsync" in r.stderr and "checksums match" in r.stderr


@pytest.mark.skipif(not os.environ.get("EDGEKD_DEVICE_PYTHON"),
                    reason="set EDGEKD_DEVICE_PYTHON to another Python with numpy + onnxruntime (e.g. a "
                           "3.8, as on JetPack 5) to run the device side under it")
def test_device_side_under_another_python(server, run, tmp_path):
    python = os.environ["EDGEKD_DEVICE_PYTHON"]
    r = _deploy(run, sshd.ALIAS, "--batch", "1", "--batch", "8", ssh_config=server.config, python=python,
                remote_dir=tmp_path / "device")
    assert r.exit_code == 0, r.output
    doc = json.loads((run / f"bench-{sshd.ALIAS}.json").read_text())
    version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True).stdout.strip()
    assert doc["environment"]["python"]["version"] == version
    assert all(m["accuracy"]["agreement"] == 100.0 for m in doc["models"].values())


def test_ssh_config_alias_with_scp_then_the_verified_bundle_is_reused(server, run, tmp_path):
    device = tmp_path / "device"
    # The alias: host, port, user, key and known_hosts all come from the ssh config file.
    first = _deploy(run, sshd.ALIAS, "--batch", "1", "--transfer", "scp", ssh_config=server.config,
                    remote_dir=device)
    assert first.exit_code == 0, first.output
    doc = json.loads((run / f"bench-{sshd.ALIAS}.json").read_text())
    assert doc["transfer"] == {"method": "scp", "reused": False, "bundle_id": doc["bundle"]["id"]}
    assert _verify(Path(doc["bundle"]["path"])).returncode == 0

    again = _deploy(run, sshd.ALIAS, "--batch", "1", ssh_config=server.config, remote_dir=device)
    assert again.exit_code == 0, again.output
    redo = json.loads((run / f"bench-{sshd.ALIAS}.json").read_text())
    assert redo["transfer"] == {"method": None, "reused": True, "bundle_id": doc["bundle"]["id"]}
    assert redo["bundle"]["path"] == doc["bundle"]["path"] and "nothing to send" in again.stderr
    assert len(_results(device)) == 2


def test_local_target_and_a_tampered_bundle_is_replaced_before_it_runs(run, tmp_path):
    device = tmp_path / "local-device"
    r = _deploy(run, "local", "--batch", "1", python=None, remote_dir=device)
    assert r.exit_code == 0, r.output
    doc = json.loads((run / "bench-local.json").read_text())
    assert doc["schema"] == "edgekd.run-bench" and doc["target"]["kind"] == "local"
    assert doc["transfer"]["method"] == "copy" and set(doc["models"]) == {"teacher", "student"}
    assert doc["models"]["student"]["accuracy"]["agreement"] == 100.0

    # Someone edits the model in the deployed folder: the next deploy does not trust it.
    final = Path(doc["bundle"]["path"])
    with open(final / "models" / "student.onnx", "ab") as f:
        f.write(b"\0")
    again = _deploy(run, "local", "--batch", "1", python=None, remote_dir=device)
    assert again.exit_code == 0, again.output
    doc = json.loads((run / "bench-local.json").read_text())
    assert doc["transfer"] == {"method": "copy", "reused": False, "bundle_id": doc["bundle"]["id"]}
    assert (final / "models" / "student.onnx").read_bytes() == (run / "student.onnx").read_bytes()

    # Another selection of models is another bundle; the run's older bundle is pruned.
    student = _deploy(run, "local", "--batch", "1", "--model", "student", python=None, remote_dir=device)
    assert student.exit_code == 0, student.output
    doc = json.loads((run / "bench-local.json").read_text())
    assert set(doc["models"]) == {"student"}
    assert sorted(p.name for p in device.iterdir()) == sorted(["results", Path(doc["bundle"]["path"]).name])


def test_transfer_killed_midway_then_next_deploy_succeeds_and_no_partial_bundle_ran(server, run, tmp_path):
    device = tmp_path / "device"
    staging = None
    dropped = []

    def drop_when_models_arrive():
        # Kill the link while rsync is inside models/ (the largest files, sent last).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for folder in device.glob(".staging-*") if device.is_dir() else ():
                if (folder / "models").is_dir() and any((folder / "models").iterdir()):
                    dropped.append((folder, server.drop_connections()))
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=drop_when_models_arrive)
    watcher.start()
    # ~1.4 MB at 256 KiB/s: about 5 s to send, so the drop lands mid-transfer.
    first = _deploy(run, _url(server), "--batch", "1", "--bwlimit", "256", ssh_config=server.config,
                    remote_dir=device)
    watcher.join()
    assert dropped and dropped[0][1] > 0, "the transfer was never interrupted"
    staging = dropped[0][0]
    _one_line_error(first, "dropped", "rerun")
    # Nothing ran: no final bundle, no results there or here; what arrived does not verify,
    # and the device-side runner refuses it too.
    assert [p for p in device.iterdir() if not p.name.startswith(".staging-")] == []
    assert not list(run.glob("bench-*.json"))
    assert staging.is_dir() and _verify(staging).returncode == 3
    refused = subprocess.run([sys.executable, "-m", "deploy", "run-bundle", str(staging), "--out",
                              str(tmp_path / "x.json")], capture_output=True, text=True)
    assert refused.returncode == 2 and "refusing to run" in refused.stderr
    assert not (tmp_path / "x.json").exists()

    second = _deploy(run, _url(server), "--batch", "1", ssh_config=server.config, remote_dir=device)
    assert second.exit_code == 0, second.output
    doc = json.loads((run / f"bench-127.0.0.1-{server.port}.json").read_text())
    assert doc["transfer"]["method"] == "rsync" and not doc["transfer"]["reused"]
    assert len(_results(device)) == 1 and not staging.exists()
    assert _verify(Path(doc["bundle"]["path"])).returncode == 0


# ---- faults: each a one-line error naming the fix, nothing written that looks valid -------
def _config(server, tmp_path, known_hosts=None, identity=None, port=None):
    path = tmp_path / "ssh_config"
    server.write_config(path, known_hosts or server.known_hosts, identity or server.root / "user_key", port)
    return path


def test_unreachable_host(server, run, tmp_path):
    r = _deploy(run, _url(server, sshd.free_port()), ssh_config=server.config, remote_dir=tmp_path / "d")
    _one_line_error(r, "cannot reach", "is the device on")
    assert not list(run.glob("bench-*.json"))


def test_auth_refused(server, run, tmp_path):
    sshd.keygen(tmp_path / "stranger")  # a key the device does not authorize
    cfg = _config(server, tmp_path, identity=tmp_path / "stranger")
    r = _deploy(run, sshd.ALIAS, ssh_config=cfg, remote_dir=tmp_path / "d")
    _one_line_error(r, "refused authentication", "ssh-add")
    assert not (tmp_path / "d").exists()


def test_unknown_host_key_is_never_accepted(server, run, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    r = _deploy(run, sshd.ALIAS, ssh_config=_config(server, tmp_path, known_hosts=known), remote_dir=tmp_path / "d")
    _one_line_error(r, "not in known_hosts", "never accepts host keys")
    assert known.read_text() == ""


def test_changed_host_key_is_refused(server, run, tmp_path):
    known = tmp_path / "known_hosts"
    server.trust(sshd.keygen(tmp_path / "impostor"), known)  # a recorded key that is not the server's
    r = _deploy(run, sshd.ALIAS, ssh_config=_config(server, tmp_path, known_hosts=known), remote_dir=tmp_path / "d")
    _one_line_error(r, "CHANGED", "ssh-keygen -R")


def test_missing_python_on_the_device(server, run, tmp_path):
    r = _deploy(run, sshd.ALIAS, ssh_config=server.config, python=tmp_path / "no" / "python3",
                remote_dir=tmp_path / "d")
    _one_line_error(r, "not found on edgekd-test", "--remote-python")


def test_python_without_onnxruntime_on_the_device(server, run, tmp_path):
    env = tmp_path / "bare-venv"  # a real Python with none of deploy/'s libraries
    venv.create(env, with_pip=False, symlinks=True)
    r = _deploy(run, sshd.ALIAS, ssh_config=server.config, python=env / "bin" / "python",
                remote_dir=tmp_path / "d")
    line = _one_line_error(r, "edgekd-test lacks numpy, onnxruntime", "pip3 install onnxruntime", "--remote-python")
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in line


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """One device folder for the fault tests: after the first, the verified bundle is reused."""
    return tmp_path_factory.mktemp("shared-device")


def test_tensorrt_backend_names_what_the_device_lacks(run, tmp_path, without_tensorrt):
    # The `local` device's Python is a child process: the PYTHONPATH it inherits hides TensorRT
    # and pycuda from it (conftest), so this runs where they are installed too.
    r = _deploy(run, "local", "--backend", "tensorrt", python=None, remote_dir=tmp_path / "d")
    _one_line_error(r, "local lacks tensorrt, pycuda", "python3-libnvinfer", "pip3 install pycuda")


def _wrapper(tmp_path, on_run: str) -> Path:
    """A device Python that behaves normally except for the harness run (`run-bundle`)."""
    script = tmp_path / "python-wrapper"
    script.write_text(f"""#!/bin/sh
out=""; run=""; prev=""
for a in "$@"; do
  [ "$a" = run-bundle ] && run=1
  [ "$prev" = --out ] && out="$a"
  prev="$a"
done
if [ -n "$run" ]; then
{on_run}
fi
exec {sys.executable} "$@"
""")
    script.chmod(0o755)
    return script


def test_harness_crash_on_the_device_shows_its_stderr_tail(server, run, tmp_path, device):
    broken = tmp_path / "broken"
    broken.mkdir()
    # A native crash inside the harness process (as a faulty CUDA library would crash it).
    (broken / "numpy.py").write_text("import ctypes\nctypes.string_at(0)\n")
    python = _wrapper(tmp_path, f"  export PYTHONPATH={broken}")
    r = _deploy(run, sshd.ALIAS, ssh_config=server.config, python=python, remote_dir=device)
    line = _one_line_error(r, "the harness crashed on edgekd-test (signal 11)", "Fatal Python error: Segmentation fault")
    assert 'deploy/__main__.py", line' in line  # the stack, from the device's stderr
    assert not list(run.glob("bench-*.json"))


@pytest.mark.parametrize("on_run, message", ids=["no-results", "truncated-json", "other-bundle"], argvalues=[
    ("  exit 0", "ended without writing its results"),
    ('  printf \'{"schema": "edgekd.run-bench", "schema_version": 1, "mod\' > "$out"; exit 0', "not valid JSON"),
    ('  exec ' + sys.executable + ' -c "import json,sys; json.dump({\'schema\': \'edgekd.run-bench\', '
     '\'schema_version\': 1, \'models\': {}}, open(sys.argv[1], \'w\'))" "$out"', "malformed: they belong to another bundle"),
])
def test_missing_or_malformed_results_are_refused(server, run, tmp_path, device, on_run, message):
    python = _wrapper(tmp_path, on_run)
    r = _deploy(run, sshd.ALIAS, ssh_config=server.config, python=python, remote_dir=device)
    _one_line_error(r, message, "rerun")
    assert not list(run.glob("bench-*.json"))


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mount (root only): (path, options) -> a tiny, real file system to fill."""
    mounted = []

    def mount(options):
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


def test_too_little_space_on_the_device_is_refused_before_sending(server, run, small_disk):
    disk = small_disk("size=1m")
    r = _deploy(run, sshd.ALIAS, ssh_config=server.config, remote_dir=disk)
    _one_line_error(r, "not enough space on edgekd-test", "--remote-dir")
    assert os.listdir(disk) == []


def test_disk_full_during_the_transfer_removes_the_partial_copy(server, run, small_disk):
    disk = small_disk("size=64m,nr_inodes=12")  # room for bytes, not for the bundle's files
    r = _deploy(run, sshd.ALIAS, ssh_config=server.config, remote_dir=disk)
    _one_line_error(r, "no space left on edgekd-test during the transfer", "partial copy was removed")
    assert os.listdir(disk) == []


@pytest.mark.parametrize("args, message", [
    (["--target", "-oProxyCommand=touch /tmp/x"], "is not a host name"),
    (["--target", "ssh://-oProxyCommand=x@h"], "is not a user name"),
    (["--target", "ssh://u@h:99999"], "out of range"),
    (["--target", "host:22"], "ssh://user@host:PORT"),
    (["--target", "dev", "--remote-dir", "$(reboot)"], "--remote-dir"),
    (["--target", "dev", "--remote-dir", "../etc"], "--remote-dir"),
    (["--target", "dev", "--batch", "0"], "--batch must be >= 1"),
    (["--target", "dev", "--backend", "tensorrt", "--threads", "2"], "onnxruntime only"),
])
def test_bad_targets_and_options_are_refused_before_connecting(run, tmp_path, args, message):
    r = CliRunner().invoke(cli, ["deploy", str(run), *args])
    _one_line_error(r, message)
    assert not (run / "bundle").exists()


def test_results_checks_refuse_anything_but_a_complete_document_for_this_bundle(run, tmp_path):
    """fetch_results parses what the device sent as data only and checks it against the
    bundle; a document from the real device-side runner passes, every damaged variant fails."""
    from deploy.harness import MeasureSettings
    from deploy.run_bundle import run_bundle
    from edgekd.errors import ShipError
    from edgekd.ship.remote import build_run_bundle, fetch_results
    from edgekd.ship.transport import LocalTransport, parse_target

    manifest = build_run_bundle(run, ["student"])
    good = run_bundle(str(run / "bundle"), batch_sizes=[1], power="off",
                      settings=MeasureSettings(warmup_s=0, warmup_iters=1, min_s=0, min_iters=3))
    transport = LocalTransport(parse_target("local"))
    path = tmp_path / "r.json"

    def fetch(doc):
        path.write_text(json.dumps(doc))
        return fetch_results(transport, str(path), manifest)

    assert fetch(good)["models"]["student"]["accuracy"]["agreement"] == 100.0

    def damaged(change):
        doc = json.loads(json.dumps(good))
        change(doc)
        return doc

    for change, message in [
        (lambda d: d.update(schema_version=2), "schema"),
        (lambda d: d["bundle"].update(id="0" * 64), "another bundle"),
        (lambda d: d.update(models={}), "no models"),
        (lambda d: d["models"].update(teacher=d["models"]["student"]), "unknown model 'teacher'"),
        (lambda d: d["models"]["student"].pop("accuracy"), "no accuracy check"),
        (lambda d: d["models"]["student"]["results"][0]["latency_ms"].update(p50=float("nan")), "finite latencies"),
        (lambda d: d["models"]["student"].update(results=[]), "no results"),
    ]:
        with pytest.raises(ShipError, match=message):
            fetch(damaged(change))
    with pytest.raises(ShipError, match="not a JSON object"):
        fetch([good])
    path.unlink()
    with pytest.raises(ShipError, match="ended without writing"):
        fetch_results(transport, str(path), manifest)



def _bin_without(folder: Path, *missing: str) -> Path:
    """A PATH folder with every program of this machine's but `missing`."""
    folder.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin", str(Path(sys.executable).parent)):
        for exe in Path(d).iterdir() if Path(d).is_dir() else ():
            if exe.name not in missing and not (folder / exe.name).exists():
                (folder / exe.name).symlink_to(exe)
    return folder


def test_device_without_sftp_gets_legacy_scp_and_one_without_scp_a_tar_stream(run, tmp_path):
    """OpenSSH's scp speaks SFTP: a device whose sshd has no sftp subsystem (dropbear, minimal
    images) fails it with only "Connection closed". deploy falls back to `scp -O`, and where
    the device has no scp (nor rsync), to a tar stream over ssh, and says which it used."""
    for name in ("plain", "bare"):
        (tmp_path / name).mkdir()
    plain = sshd.LoopbackSshd(tmp_path / "plain", sftp=False)
    bare = sshd.LoopbackSshd(tmp_path / "bare", sftp=False,
                             path=_bin_without(tmp_path / "bin", "scp", "rsync"))
    for server, want in ((plain, "scp -O"), (bare, "tar")):
        server.start()
        try:
            device = tmp_path / f"device-{want.replace(' ', '')}"
            transfer = ["--transfer", "scp"] if want == "scp -O" else []  # bare: auto, no rsync there
            r = _deploy(run, sshd.ALIAS, "--batch", "1", *transfer, ssh_config=server.config,
                        remote_dir=device)
            assert r.exit_code == 0, r.output
            assert f"refused scp (no sftp subsystem): sent with {want}" in r.stderr
            doc = json.loads((run / f"bench-{sshd.ALIAS}.json").read_text())
            assert doc["transfer"]["method"] == want and not doc["transfer"]["reused"]
            assert _verify(Path(doc["bundle"]["path"])).returncode == 0
            assert all(m["accuracy"]["agreement"] == 100.0 for m in doc["models"].values())
        finally:
            server.stop()
