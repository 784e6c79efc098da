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


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model"):
                    return value.strip()
    except (OSError, UnicodeDecodeError):
        pass
    return platform.processor() or None


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
        "cpu": _cpu_model(),
        "usable_cores": _usable_cores(),
        "l4t": _first_line("/etc/nv_tegra_release"),
        "nvpmodel": _first_line("/var/lib/nvpmodel/status"),
    }


if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if a != "probe"]
    sys.stdout.write(json.dumps(probe(argv[0] if argv else ".")) + "\n")
