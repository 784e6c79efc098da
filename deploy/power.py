"""Optional power sampling while the harness measures: tegrastats (on every Jetson image) or
jtop (jetson-stats) when installed. Off a Jetson neither exists and nothing is sampled.

A sampler runs in a background thread and reads the rails' instantaneous power every
`interval_ms`; it starts after the warm-up and stops after the timed loop (see
deploy.harness.measure), so its summary covers the measured phase only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

# "VDD_IN 5034mW/5034mW" (JetPack 5/6), "POM_5V_IN 1834/1834" (Nano), "GPU 0/0" (Xavier, JP4):
# name, instantaneous power, running average, in mW. RAM and SWAP end in MB, which \b rejects.
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?\b")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "LFB"}
# The rail that measures the whole module's input, first match wins (Orin, Xavier, Nano, TX2).
INPUT_RAILS = ("VDD_IN", "VIN_SYS_5V0", "POM_5V_IN", "SYS5V", "VDD_SYS_5V0")

SOURCES = ("auto", "tegrastats", "jtop", "off")


def parse_tegrastats(line: str) -> Dict[str, float]:
    """Instantaneous power per rail (mW) from one tegrastats line; {} when it has none."""
    return {m.group(1): float(m.group(2)) for m in _RAIL.finditer(line)
            if m.group(1) not in _NOT_RAILS}


def summarize_power(samples: List[Tuple[float, Dict[str, float]]], source: str,
                    interval_ms: int) -> Dict[str, Any]:
    """Mean and max per rail over the samples, and which rail is the module's input."""
    rails: Dict[str, List[float]] = {}
    for _, reading in samples:
        for name, mw in reading.items():
            rails.setdefault(name, []).append(mw)
    per_rail = {name: {"mean": sum(v) / len(v), "max": max(v)} for name, v in sorted(rails.items())}
    input_rail = next((r for r in INPUT_RAILS if r in per_rail), None)
    return {
        "source": source,
        "interval_ms": interval_ms,
        "samples": len(samples),
        "rails_mw": per_rail,
        "input_rail": input_rail,
        "input_mean_mw": per_rail[input_rail]["mean"] if input_rail else None,
    }


class PowerSampler:
    """Samples power rails between `start()` and `stop()`; `stop()` returns the summary
    (summarize_power) or None when no source could be started."""

    def __init__(self, source: str = "auto", interval_ms: int = 100,
                 tegrastats: Optional[str] = None) -> None:
        if source not in SOURCES:
            raise ValueError("power source must be one of %s, got %r" % (", ".join(SOURCES), source))
        self.interval_ms = int(interval_ms)
        self._wanted = source
        self._exe = tegrastats
        self._samples: List[Tuple[float, Dict[str, float]]] = []
        self._proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self.source: Optional[str] = None

    def available(self) -> Optional[str]:
        """The source `start()` would use, or None."""
        if self._wanted == "off":
            return None
        if self._wanted in ("auto", "tegrastats") and self._tegrastats() is not None:
            return "tegrastats"
        if self._wanted in ("auto", "jtop") and _jtop_class() is not None:
            return "jtop"
        return None

    def _tegrastats(self) -> Optional[str]:
        # tegrastats lives in /usr/bin on JetPack 5+, in the L4T home on older images.
        return self._exe or shutil.which("tegrastats") or shutil.which(
            "tegrastats", path="/usr/bin:/usr/sbin:/home/nvidia")

    def start(self) -> bool:
        self.source = self.available()
        self._samples = []
        self._stop.clear()
        if self.source == "tegrastats":
            try:
                self._proc = subprocess.Popen(
                    [self._tegrastats(), "--interval", str(self.interval_ms)],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                    universal_newlines=True, bufsize=1)
            except OSError:
                self.source = None
                return False
            self._thread = threading.Thread(target=self._read_tegrastats, daemon=True)
        elif self.source == "jtop":
            self._thread = threading.Thread(target=self._read_jtop, daemon=True)
        else:
            return False
        self._thread.start()
        return True

    def stop(self) -> Optional[Dict[str, Any]]:
        if self.source is None:
            return None
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        return summarize_power(list(self._samples), self.source, self.interval_ms)

    def _read_tegrastats(self) -> None:
        proc = self._proc
        for line in proc.stdout:  # ends when stop() terminates the process
            reading = parse_tegrastats(line)
            if reading and not self._stop.is_set():
                self._samples.append((time.monotonic(), reading))

    def _read_jtop(self) -> None:
        jtop = _jtop_class()
        try:
            with jtop(interval=self.interval_ms / 1000.0) as jetson:
                while not self._stop.is_set() and jetson.ok():
                    reading = _jtop_reading(jetson.power)
                    if reading:
                        self._samples.append((time.monotonic(), reading))
        except Exception:  # the jtop service down or an API change: no power figures, no crash
            return


def _jtop_class() -> Any:
    try:
        from jtop import jtop  # jetson-stats; talks to the jtop systemd service
    except Exception:
        return None
    return jtop


def _jtop_reading(power: Any) -> Dict[str, float]:
    """jetson-stats 4.x: {'rail': {name: {'power': mW, ...}}, 'tot': {'power': mW, 'name': ...}}."""
    reading: Dict[str, float] = {}
    if not isinstance(power, dict):
        return reading
    for name, rail in (power.get("rail") or {}).items():
        if isinstance(rail, dict) and isinstance(rail.get("power"), (int, float)):
            reading[str(name)] = float(rail["power"])
    total = power.get("tot")
    if isinstance(total, dict) and isinstance(total.get("power"), (int, float)):
        name = str(total.get("name") or "VDD_IN")
        reading.setdefault(name, float(total["power"]))
    return reading
