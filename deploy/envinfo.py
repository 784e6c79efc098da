"""Record the machine a latency figure came from: CPU, cores, governor, library versions and,
on a Jetson, the L4T release, power mode, clock locking and temperatures.

Standard library only. Every probe returns None for what it cannot find and never raises: a
benchmark must not fail because a device lacks a file. `root` relocates /proc, /sys, /etc
and the nvpmodel / jetson_clocks binaries, so tests can describe a Jetson from a folder.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import socket
import subprocess
from typing import Any, Callable, Dict, List, Optional

from . import probe

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# library -> (distribution names to look up, module to import when no distribution is found;
# JetPack's apt-installed TensorRT, for one, may carry no pip metadata).
LIBRARIES = {
    "numpy": (("numpy",), "numpy"),
    "onnxruntime": (("onnxruntime", "onnxruntime-gpu"), "onnxruntime"),
    "tensorrt": (("tensorrt", "tensorrt-cu12", "tensorrt-cu11"), "tensorrt"),
    "pycuda": (("pycuda",), "pycuda"),
    "cuda-python": (("cuda-python",), None),
}

_HOT_C = 85.0  # Jetson modules start throttling in the high 80s to 90s C


def capture(root: str = "/") -> Dict[str, Any]:
    """A JSON-ready description of this machine, with a `warnings` list of conditions that
    make latency figures unreliable (unlocked clocks, a power-saving governor, heat)."""
    info: Dict[str, Any] = {
        "hostname": _safe(socket.gethostname),
        "os": _safe(_os_info, root),
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation()},
        "cpu": _safe(_cpu_info, root),
        "thread_env": {k: os.environ.get(k) for k in THREAD_ENV_VARS},
        "libraries": {name: _safe(library_version, name) for name in LIBRARIES},
        "jetson": _safe(_jetson_info, root),
        "thermal": _safe(_thermal_zones, root),
    }
    info["warnings"] = _safe(_warnings, info) or []
    return info


def library_version(name: str) -> Optional[str]:
    """Installed version of a library from LIBRARIES, or None; imports it only as a last resort."""
    dists, module = LIBRARIES[name]
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        metadata = None
    if metadata is not None:
        for dist in dists:
            try:
                return metadata.version(dist)
            except Exception:
                pass
    if module is None:
        return None
    try:
        import importlib

        return str(getattr(importlib.import_module(module), "__version__", None) or "") or None
    except Exception:  # a broken CUDA install may raise anything on import
        return None


def _safe(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:
        return None


def _path(root: str, rel: str) -> str:
    return os.path.join(root, rel.lstrip("/"))


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "r", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _cpu_list(text: Optional[str]) -> Optional[List[int]]:
    """'0-3,6,8-9' -> [0, 1, 2, 3, 6, 8, 9]."""
    if not text:
        return None
    cpus: List[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def _os_info(root: str) -> Dict[str, Any]:
    distro = None
    for line in (_read(_path(root, "etc/os-release")) or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            distro = line.split("=", 1)[1].strip().strip('"')
    machine = platform.machine()
    # The kernel's own architecture (Linux 6.1+): qemu-user makes uname() say the guest's, but
    # not this file, so an emulated "device" tells itself apart from real silicon.
    kernel_arch = (_read(_path(root, "proc/sys/kernel/arch")) or "").strip() or None
    emulated = None
    if kernel_arch and machine:
        emulated = _arch_family(kernel_arch) != _arch_family(machine)
    return {"system": platform.system(), "kernel": platform.release(), "machine": machine,
            "kernel_arch": kernel_arch, "emulated": emulated, "distro": distro}


def _arch_family(arch: str) -> str:
    """x86 for x86_64 / i686, arm for aarch64 / armv7l / arm64, else the name itself: a 32-bit
    user space on a 64-bit kernel of the same family is compatibility, not emulation."""
    arch = arch.lower()
    for family, prefixes in (("x86", ("x86", "i386", "i486", "i586", "i686", "amd64")),
                             ("arm", ("aarch64", "arm"))):
        if arch.startswith(prefixes):
            return family
    return arch


def _cpu_info(root: str) -> Dict[str, Any]:
    sysfs = _path(root, "sys/devices/system/cpu")
    online = _cpu_list(_read(os.path.join(sysfs, "online")))
    if online is None:
        online = sorted(int(p.rsplit("cpu", 1)[1]) for p in glob.glob(os.path.join(sysfs, "cpu[0-9]*")))
    governors: Dict[str, int] = {}
    cores = set()
    fixed_freq = []
    for cpu in online:
        d = os.path.join(sysfs, "cpu%d" % cpu)
        gov = _read(os.path.join(d, "cpufreq/scaling_governor"))
        if gov:
            governors[gov] = governors.get(gov, 0) + 1
        lo, hi = (_read(os.path.join(d, "cpufreq/scaling_%s_freq" % k)) for k in ("min", "max"))
        if lo and hi:
            fixed_freq.append(lo == hi)
        siblings = (_read(os.path.join(d, "topology/core_cpus_list"))
                    or _read(os.path.join(d, "topology/thread_siblings_list")))
        if siblings:
            cores.add(siblings)
    affinity = None
    if root == "/" and hasattr(os, "sched_getaffinity"):
        affinity = len(os.sched_getaffinity(0))
    return {
        "model": _cpu_model(root),
        "logical_cores": len(online) or (os.cpu_count() if root == "/" else None),
        "physical_cores": len(cores) or None,
        "usable_cores": affinity,  # what this process may run on (taskset, cgroups)
        "governor": governors or None,  # governor -> number of CPUs using it
        "frequency_fixed": all(fixed_freq) if fixed_freq else None,  # min == max on every CPU
        "int8_isa": int8_isa(root),
    }


# CPU features that decide how INT8 runs: x86 VNNI / AMX accumulate u8 x s8 products in 32
# bits; AVX2 alone (vpmaddubsw) sums pairs in 16 bits and saturates; ARM's dot product
# (asimddp) and matrix (i8mm) instructions accumulate in 32 bits.
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_model(root: str = "/") -> Optional[str]:
    """The CPU's model name (x86 model name, or the ARM core from its implementer/part)."""
    return _cpu_model(root)


def int8_isa(root: str = "/") -> Optional[List[str]]:
    """The INT8-relevant CPU flags of /proc/cpuinfo present on this machine (None: unknown)."""
    text = _read(_path(root, "proc/cpuinfo"))
    if not text:
        return None
    flags = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return [f for f in INT8_FLAGS if f in flags]


def _cpu_model(root: str) -> Optional[str]:
    if root == "/":
        return probe.cpu_model()
    return probe.cpu_model_from(_read(_path(root, "proc/cpuinfo")))


def _which(name: str, root: str) -> Optional[str]:
    dirs = ["usr/sbin", "usr/bin", "sbin", "bin"]
    if root == "/":  # nvpmodel lives in /usr/sbin, often outside a user's PATH
        path = os.pathsep.join([os.environ.get("PATH", "")] + ["/" + d for d in dirs])
    else:
        path = os.pathsep.join(_path(root, d) for d in dirs)
    return shutil.which(name, path=path)


def _run(argv: List[str], timeout: float = 5.0) -> Optional[str]:
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout, universal_newlines=True)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _jetson_info(root: str) -> Optional[Dict[str, Any]]:
    release = _read(_path(root, "etc/nv_tegra_release"))
    if release is None:
        return None
    first = release.splitlines()[0] if release else ""
    # "# R35 (release), REVISION: 4.1, GCID: ..." -> L4T 35.4.1
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
    return {
        "l4t_release": "%s.%s" % (m.group(1), m.group(2).rstrip(".")) if m else None,
        "nv_tegra_release": first.lstrip("# ").strip() or None,
        "model": (_read(_path(root, "proc/device-tree/model")) or "").strip("\x00 ") or None,
        "nvpmodel": _safe(_nvpmodel, root),
        "jetson_clocks": _safe(_jetson_clocks, root),
    }


def _nvpmodel(root: str) -> Optional[Dict[str, Any]]:
    exe = _which("nvpmodel", root)
    out = _run([exe, "-q"]) if exe else None
    if out is None:
        return None
    m = re.search(r"NV Power Mode:\s*(.+)", out)
    ids = [line.strip() for line in out.splitlines() if line.strip().isdigit()]
    return {"mode": m.group(1).strip() if m else None, "id": int(ids[0]) if ids else None}


def _jetson_clocks(root: str) -> Dict[str, Any]:
    """Whether CPU, GPU and memory clocks are pinned: from `jetson_clocks --show` (needs root),
    else from sysfs min/max frequencies, which any user can read."""
    exe = _which("jetson_clocks", root)
    out = _run([exe, "--show"]) if exe else None
    if out is not None:
        parts = {}
        for line in out.splitlines():
            m = re.match(r"\s*(cpu\d+|GPU|EMC)\b.*?MinFreq=(\d+)\s+MaxFreq=(\d+)", line)
            if m:
                unit = "cpu" if m.group(1).startswith("cpu") else m.group(1).lower()
                # jetson_clocks pins EMC with an override and leaves its min/max range alone.
                pinned = m.group(2) == m.group(3) or "FreqOverride=1" in line
                parts[unit] = parts.get(unit, True) and pinned
        if parts:
            return {"locked": all(parts.values()), "parts": parts, "source": "jetson_clocks --show"}
    parts = {}
    cpu = _safe(_cpu_info, root)
    if cpu and cpu["frequency_fixed"] is not None:
        parts["cpu"] = cpu["frequency_fixed"]
    for d in glob.glob(_path(root, "sys/class/devfreq/*")):
        if re.search(r"gpu|gp10b|gv11b|ga10b|gb10b", os.path.basename(d)):
            lo, hi = _read(os.path.join(d, "min_freq")), _read(os.path.join(d, "max_freq"))
            if lo and hi:
                parts["gpu"] = lo == hi
    return {"locked": all(parts.values()) if parts else None, "parts": parts, "source": "sysfs"}


def max_temperature(root: str = "/") -> Optional[float]:
    """The hottest thermal zone in degrees C, or None where none can be read."""
    temps = [z["temp_c"] for z in _thermal_zones(root) or [] if z["temp_c"] is not None]
    return max(temps) if temps else None


def _thermal_zones(root: str) -> Optional[List[Dict[str, Any]]]:
    zones = []
    paths = glob.glob(_path(root, "sys/class/thermal/thermal_zone*"))
    for d in sorted(paths, key=lambda p: int(re.sub(r"\D", "", os.path.basename(p)) or 0)):
        raw = _read(os.path.join(d, "temp"))
        try:
            temp = int(raw) / 1000.0 if raw else None  # millidegrees C
        except ValueError:
            temp = None
        zones.append({"zone": os.path.basename(d), "type": _read(os.path.join(d, "type")),
                      "temp_c": temp})
    return zones or None


def _warnings(info: Dict[str, Any]) -> List[str]:
    warnings = []
    system = info.get("os") or {}
    if system.get("emulated"):
        warnings.append("%s code runs emulated (qemu-user) on the %s kernel: latencies measured "
                        "here say nothing about %s hardware"
                        % (system.get("machine"), system.get("kernel_arch"), system.get("machine")))
    jetson = info.get("jetson")
    locked = ((jetson or {}).get("jetson_clocks") or {}).get("locked")
    if jetson is not None and locked is False:
        warnings.append("clocks not locked: run `sudo jetson_clocks` (after choosing the power "
                        "mode with `sudo nvpmodel -m N`) so DVFS does not move the latency")
    elif jetson is not None and locked is None:
        warnings.append("could not tell whether clocks are locked (`jetson_clocks --show` "
                        "needs root): run `sudo jetson_clocks` before measuring")
    governors = (info.get("cpu") or {}).get("governor") or {}
    slow = sorted(g for g in governors if g != "performance")
    if slow and not (jetson is not None and locked):
        warnings.append("CPU governor is %s, not performance: latency depends on frequency "
                        "scaling (sudo cpupower frequency-set -g performance)" % "/".join(slow))
    for zone in info.get("thermal") or []:
        if zone["temp_c"] is not None and zone["temp_c"] >= _HOT_C:
            warnings.append("%s (%s) at %.1f C: the device may be throttling"
                            % (zone["zone"], zone["type"], zone["temp_c"]))
    return warnings
