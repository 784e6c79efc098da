"""edgekd's device side on aarch64.

What an arm64 device reports is checked everywhere from real file contents (an arm64 kernel's
/proc/cpuinfo has no "model name"; an emulated one is told apart by /proc/sys/kernel/arch).
`edgekd deploy` and `edgekd select` against the emulated ARM64 device of
tools/arm64-device.sh run only where it is up, and skip saying how to start it otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploy.envinfo import capture
from deploy.probe import cpu_model_from
from edgekd.cli import cli

# What an arm64 Linux kernel prints (a Jetson Orin's Cortex-A78AE; AWS Graviton2's Neoverse-N1).
ORIN = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd42
CPU revision\t: 1
"""


def test_the_cpu_of_an_arm64_device_is_named_without_a_model_name_line(tmp_path):
    assert cpu_model_from(ORIN) == "ARM Cortex-A78AE"
    assert cpu_model_from(ORIN.replace("0xd42", "0xd0c")) == "ARM Neoverse-N1"
    assert cpu_model_from(ORIN.replace("0x41", "0x61").replace("0xd42", "0x022")) == "implementer 0x61 part 0x022"
    assert cpu_model_from("processor\t: 0\nHardware\t: BCM2835\n") == "BCM2835"  # 32-bit ARM boards
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(ORIN)
    info = capture(root=str(tmp_path))
    assert info["cpu"]["model"] == "ARM Cortex-A78AE" and info["cpu"]["int8_isa"] == ["asimddp"]


def test_an_emulated_architecture_is_reported_with_a_warning(tmp_path):
    import platform

    here = platform.machine()
    other = "aarch64" if not here.startswith(("aarch64", "arm")) else "x86_64"
    (tmp_path / "proc" / "sys" / "kernel").mkdir(parents=True)
    (tmp_path / "proc" / "sys" / "kernel" / "arch").write_text(other + "\n")
    info = capture(root=str(tmp_path))
    assert info["os"]["kernel_arch"] == other and info["os"]["emulated"] is True
    assert any("emulated (qemu-user)" in w for w in info["warnings"])
    (tmp_path / "proc" / "sys" / "kernel" / "arch").write_text(here + "\n")
    info = capture(root=str(tmp_path))
    assert info["os"]["emulated"] is False and not any("emulated" in w for w in info["warnings"])


# ---- against the ARM64 device (tools/arm64-device.sh) ------------------------------------------
RIG = Path(os.environ.get("EDGEKD_ARM64_DIR", Path.home() / ".cache/edgekd/arm64"))
ALIAS = "edgekd-arm64"


def rig_missing() -> str | None:
    config = RIG / "ssh_config"
    if not config.exists():
        return f"no ARM64 device ({config} absent): sudo tools/arm64-device.sh up"
    try:
        ok = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                             ALIAS, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return None if ok else "the ARM64 device is not answering: sudo tools/arm64-device.sh up"


needs_rig = pytest.mark.skipif(bool(rig_missing()), reason=rig_missing() or "")


@needs_rig
def test_deploy_to_the_arm64_device(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    r = CliRunner().invoke(cli, ["deploy", str(run), "--target", ALIAS, "--ssh-config", str(RIG / "ssh_config"),
                                 "--model", "student", "--batch", "1", "--remote-dir", "edgekd-test-bundles",
                                 "--warmup-s", "0", "--warmup-iters", "1", "--min-s", "0", "--min-iters", "3"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads((run / f"bench-{ALIAS}.json").read_text())
    env = doc["environment"]
    assert env["os"]["machine"] == "aarch64" and env["os"]["emulated"] is True
    assert env["cpu"]["model"].startswith("ARM ") and env["libraries"]["onnxruntime"]
    student = doc["models"]["student"]
    assert student["accuracy"]["agreement"] == 100.0  # aarch64 ORT predicts what x86 ORT does


@needs_rig
def test_select_on_the_arm64_device(tmp_path):
    r = CliRunner().invoke(cli, ["select", "--target", ALIAS, "--ssh-config", str(RIG / "ssh_config"),
                                 "--speedup", "4", "--budget-batch", "1", "--input-size", "16",
                                 "--candidates", "resnet8_cifar_w0.5", "--budget-precision", "fp32",
                                 "--budget-input-sizes", "16", "--remote-dir", "edgekd-test-bundles",
                                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "select")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "select" / "select.json").read_text())
    assert doc["target"]["cpu"].startswith("ARM ") and doc["chosen"] == "resnet8_cifar_w0.5"
