"""The run directory: config.yaml, a stage ledger (state.json) and the artefacts.

A stage is done when the ledger holds its key (a hash of everything its output depends on)
and each recorded output file still has the recorded sha256. Anything else reruns it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import yaml

from edgekd.config import RunConfig, recipe_record
from edgekd.errors import RunDirError
from edgekd.io import sha256_file, sha256_json, write_json, write_text
from edgekd.runfiles import CONFIG, REPORT, STATE
from edgekd.version import __version__

_HELD: dict[str, int] = {}  # run directories this process holds the lock of -> the lock's fd


def _versions() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch
    import torchvision

    versions = {
        "edgekd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }
    return {k: str(v) for k, v in versions.items()}  # torch's version is a str subclass


def _with_defaults(old: dict, defaults: dict) -> dict:
    """`old` with the keys it lacks taken from `defaults`, recursively."""
    out = dict(old)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_defaults(out[k], v)
    return out


def _canonical(settings: dict) -> dict:
    """Settings with equivalent spellings made equal: a teacher trained here normalises with
    the data's statistics whether teacher.norm says `data` or nothing (the default before
    and after teachers could be given by state_dict)."""
    t = settings.get("teacher") or {}
    if not t.get("checkpoint") and t.get("norm") == "data":
        settings = {**settings, "teacher": {**t, "norm": None}}
    return settings


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ---- opening -------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the run directory for this process, or refuse in one line naming the process
        that holds it. An advisory lock on `.<name>.lock` beside the folder (so `--force` cannot
        delete it), released by the kernel when the holder ends, however it ends: a lock left
        by a dead process is simply taken over."""
        import fcntl

        key = str(self.path.resolve())
        if key in _HELD:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.parent / f".{self.path.name}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"{self.path} is in use by another edgekd process (PID {holder}): "
                              "wait for it to finish or stop it, then rerun") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _HELD[key] = fd  # kept open for the life of the process

    def open(self, cfg: RunConfig, resume: bool = False, force: bool = False) -> str:
        """Create or reopen the run for `cfg`. Returns 'new', 'resumed' or 'complete'."""
        self.lock()
        p = self.path
        if p.exists() and not p.is_dir():
            raise RunDirError(f"{p} exists and is not a directory: choose another --out")
        existing = self.read_config() if (p / CONFIG).exists() else None
        nonempty = p.is_dir() and any(p.iterdir())
        if nonempty and existing is None:
            raise RunDirError(f"{p} is not empty and holds no edgekd run: choose another --out")
        if force and existing is not None:
            shutil.rmtree(p)
            existing = None
        if existing is not None:
            # Settings added to edgekd after the run was made take their defaults.
            changes = _diff(_canonical(_with_defaults(existing["settings"], RunConfig().to_dict())),
                            _canonical(cfg.to_dict()))
            if changes:
                shown = "; ".join(changes[:3]) + (" ..." if len(changes) > 3 else "")
                if resume:
                    raise RunDirError(
                        f"cannot resume {p}: it was made with different settings ({shown}): "
                        "resume with the same settings, or use --force or another --out"
                    )
                raise RunDirError(
                    f"{p} already holds a different run ({shown}): use another --out, or --force "
                    "to overwrite it"
                )
            if (p / REPORT).exists() and self.all_recorded_outputs_valid():
                return "complete"
            if not resume:
                raise RunDirError(
                    f"{p} holds an unfinished run with these settings: pass --resume to continue "
                    "it or --force to start over"
                )
            return "resumed"
        p.mkdir(parents=True, exist_ok=True)
        doc = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
            "settings": cfg.to_dict(),
            # What differs from the named recipe (edgekd.recipes), for readers of the run.
            "recipe": recipe_record(cfg),
        }
        write_text(p / CONFIG, yaml.safe_dump(doc, sort_keys=False))
        return "new"

    def read_config(self) -> dict:
        try:
            doc = yaml.safe_load((self.path / CONFIG).read_text())
        except yaml.YAMLError:
            doc = None
        if not isinstance(doc, dict) or "settings" not in doc:
            raise RunDirError(f"{self.path / CONFIG} is not an edgekd run config: use --force to start over")
        return doc

    # ---- the stage ledger ----------------------------------------------------------------
    def _ledger(self) -> dict:
        f = self.path / STATE
        if not f.exists():
            return {}
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError:
            return {}  # a damaged ledger only costs recomputation

    def stage_valid(self, name: str, key: str) -> bool:
        entry = self._ledger().get(name)
        if not entry or entry.get("key") != key:
            return False
        return self._outputs_valid(entry)

    def _outputs_valid(self, entry: dict) -> bool:
        for rel, digest in entry.get("outputs", {}).items():
            f = self.path / rel
            if not f.is_file() or sha256_file(f) != digest:
                return False
        return True

    def all_recorded_outputs_valid(self) -> bool:
        return all(self._outputs_valid(e) for e in self._ledger().values())

    def stage_info(self, name: str) -> dict:
        return self._ledger().get(name, {}).get("info", {})

    def mark_done(self, name: str, key: str, outputs: list[str], info: dict | None = None) -> None:
        ledger = self._ledger()
        ledger[name] = {
            "key": key,
            "outputs": {rel: sha256_file(self.path / rel) for rel in outputs},
            "info": info or {},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(self.path / STATE, ledger)

    def output_hash(self, rel: str) -> str:
        return sha256_file(self.path / rel)


def stage_key(*parts) -> str:
    return sha256_json(parts)
