"""What a device offers before a bundle is sent: Python version, the libraries deploy/ needs,
rsync, and the free space where the bundle will go. Prints one JSON object.

Standard library only, no package-relative imports and old syntax: the workstation sends this
source as `python3 -c SOURCE DIR`, before anything else is on the device, and it must report
an old Python instead of failing to parse.

    python3 -m deploy probe [DIR]
"""

import json
import os
import platform
import shutil
import sys

MODULES = ("numpy", "onnxruntime", "tensorrt", "pycuda")


def _module(name):
    try:
        module = __import__(name)
    except Exception as e:  # a broken CUDA install raises OSError and friends, not ImportError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, "%s: %s" % (type(e).__name__, first[:200])
    return str(getattr(module, "__version__", "") or "unknown"), None


def _free_bytes(path):
    # The folder may not exist yet: measure on its nearest existing ancestor.
    path = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None, path
    return st.f_bavail * st.f_frsize, path


# /proc/cpuinfo on arm64 names no model (no "model name" line): decode the cores Jetsons and
# common arm64 boards use from the implementer and part fields.
ARM_CORES = {
    ("0x41", "0xd07"): "ARM Cortex-A57",
    ("0x41", "0xd08"): "ARM Cortex-A72",
    ("0x41", "0xd0b"): "ARM Cortex-A76",
    ("0x41", "0xd0c"): "ARM Neoverse-N1",
    ("0x41", "0xd42"): "ARM Cortex-A78AE",
    ("0x41", "0xd4f"): "ARM Neoverse-V2",
    ("0x4e", "0x003"): "NVIDIA Denver 2",
    ("0x4e", "0x004"): "NVIDIA Carmel",
}


def cpu_model_from(text):
    """The CPU's name from /proc/cpuinfo's text: x86's model name, an ARM core decoded from
    its implementer and part, the board's Hardware/Model line, else None."""
    fields = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    if fields.get("model name"):
        return fields["model name"]
    implementer = fields.get("CPU implementer", "").lower()
    part = fields.get("CPU part", "").lower()
    if part:
        return ARM_CORES.get((implementer, part), "implementer %s part %s" % (implementer, part))
    return fields.get("Hardware") or fields.get("Model") or None


def cpu_model():
    """This machine's CPU name: /proc/cpuinfo decoded, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        text = None
    return cpu_model_from(text) or platform.processor() or platform.machine() or None


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _first_line(path):
    try:
        with open(path) as f:
            return f.readline().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def probe(folder="."):
    modules, errors = {}, {}
    for name in MODULES:
        modules[name], err = _module(name)
        if err:
            errors[name] = err
    providers = None
    if modules.get("onnxruntime"):
        try:
            import onnxruntime
            providers = list(onnxruntime.get_available_providers())
        except Exception:
            providers = None
    free, measured_at = _free_bytes(folder)
    return {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "modules": modules,
        "import_errors": errors,
        "ort_providers": providers,
        "rsync": shutil.which("rsync") if hasattr(shutil, "which") else None,
        "free_bytes": free,
        "free_measured_at": measured_at,
        "machine": platform.machine(),
        "jetson": os.path.exists("/etc/nv_tegra_release"),
        # What a latency figure depends on besides the model: which machine, how many cores
        # this process may use, the L4T release (edgekd.selection's cache key).
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "usable_cores": _usable_cores(),
        "l4t": _first_line("/etc/nv_tegra_release"),
        "nvpmodel": _first_line("/var/lib/nvpmodel/status"),
    }


if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if a != "probe"]
    sys.stdout.write(json.dumps(probe(argv[0] if argv else ".")) + "\n")
