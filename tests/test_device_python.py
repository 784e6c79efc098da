"""deploy/ and calibration/ run on the device: without torch or edgekd, on Python 3.8."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY38 = Path("/root/.pyenv/versions/3.8.18/bin/python")
DEVICE_PACKAGES = ("deploy", "calibration")

# Importing every module with torch (and edgekd, torchvision) made unimportable, as on a
# Jetson that has only numpy, onnxruntime and TensorRT.
BLOCKED_IMPORT = r"""
import importlib, pkgutil, sys

BLOCKED = ("torch", "torchvision", "edgekd", "captum")

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: device code must not import it")
        return None

sys.meta_path.insert(0, Blocker())
imported = []
for package in sys.argv[1:]:
    pkg = importlib.import_module(package)
    imported.append(package)
    for info in pkgutil.iter_modules(pkg.__path__, package + "."):
        importlib.import_module(info.name)
        imported.append(info.name)
import calibration
calibration.quantize_static_qdq  # the lazily loaded ONNX Runtime half too
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print(" ".join(imported))
"""


def test_deploy_and_calibration_import_without_torch():
    r = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT, *DEVICE_PACKAGES], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported = set(r.stdout.split())
    # every module, including the TensorRT engine builder and the INT8 code
    assert {"deploy.trt_build", "deploy.runners", "calibration.ort_int8",
            "calibration.trt_int8", "calibration.calibset"} <= imported


def test_the_blocker_really_blocks_torch():
    r = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT, "edgekd"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "edgekd is blocked" in r.stderr


@pytest.mark.skipif(shutil.which("vermin") is None, reason="vermin is not installed (dev extra)")
def test_vermin_says_python_3_8_is_enough():
    r = subprocess.run(["vermin", "--target=3.8-", "--violations", "--eval-annotations",
                        "--no-tips", *DEVICE_PACKAGES], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not PY38.exists(), reason=f"no Python 3.8 interpreter at {PY38}")
def test_python_3_8_compiles_every_file(tmp_path):
    files = [str(p) for pkg in DEVICE_PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))]
    # compile() without writing .pyc files into the tree
    code = "import sys\nfor f in sys.argv[1:]:\n    compile(open(f).read(), f, 'exec')\n"
    r = subprocess.run([str(PY38), "-c", code, *files], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
