"""deploy/ and calibration/ run on the device: without torch or edgekd, on Python 3.8."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE_PACKAGES = ("deploy", "calibration")
PY38_HINT = ("no Python 3.8 interpreter found (looked at $EDGEKD_PYTHON38, python3.8 on PATH, "
             "pyenv's versions/3.8.* and uv's managed pythons): install one with "
             "`uv python install 3.8` or `pyenv install 3.8`, or point EDGEKD_PYTHON38 at one")


def _is_python_3_8(exe: str) -> bool:
    """Whether `exe` runs and is CPython 3.8 (a pyenv shim for a version that is not active
    exists on PATH but fails)."""
    try:
        r = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and r.stdout.strip() == "True"


def _candidates():
    if os.environ.get("EDGEKD_PYTHON38"):
        yield os.environ["EDGEKD_PYTHON38"]
    which = shutil.which("python3.8")
    if which:
        yield which
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        try:
            roots.insert(0, subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                                           timeout=30).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    for root in filter(None, roots):
        yield from sorted(glob.glob(os.path.join(root, "versions", "3.8*", "bin", "python3.8")),
                          reverse=True)
    if shutil.which("uv"):
        try:  # `uv python find` only looks at installed interpreters, it downloads nothing
            r = subprocess.run(["uv", "python", "find", "3.8"], capture_output=True, text=True,
                               timeout=60)
            if r.returncode == 0 and r.stdout.strip():
                yield r.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    uv_dir = os.environ.get("UV_PYTHON_INSTALL_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share"), "uv", "python")
    yield from sorted(glob.glob(os.path.join(uv_dir, "cpython-3.8*", "bin", "python3.8")),
                      reverse=True)


def find_python_3_8():
    """The first working Python 3.8 interpreter on this machine, or None."""
    return next((exe for exe in _candidates() if _is_python_3_8(exe)), None)

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


def test_python_3_8_compiles_every_file(tmp_path):
    py38 = find_python_3_8()
    if py38 is None:
        pytest.skip(PY38_HINT)
    files = [str(p) for pkg in DEVICE_PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))]
    # compile() without writing .pyc files into the tree
    code = "import sys\nfor f in sys.argv[1:]:\n    compile(open(f).read(), f, 'exec')\n"
    r = subprocess.run([py38, "-c", code, *files], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
