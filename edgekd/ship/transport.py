"""Where a bundle goes and how: `local` (a folder on this machine) or a device over the user's
own OpenSSH client (ssh, rsync over ssh, scp), so ~/.ssh/config aliases, keys, the agent,
ProxyJump and known_hosts all apply exactly as they do for the user.

Every command is an argument list. A command for the device is one string only because ssh
sends one: it is built with shlex.join from an argument list, never by pasting user text
into a shell line. Host keys are checked by ssh as configured (BatchMode: an unknown or
changed key fails instead of prompting); edgekd never turns that checking off.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import ShipError

# ssh://[user@]host[:port] with an optional [IPv6] host.
_URL = re.compile(r"^ssh://(?:(?P<user>[^@/]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/@\[\]]+)(?::(?P<port>\d+))?/?$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._%-]*$")  # a host, alias or user; never an ssh option
# Remote paths travel through rsync's and (legacy) scp's remote shell as well; a plain
# character set keeps them the same word on both ends.
_REMOTE_PATH = re.compile(r"^[A-Za-z0-9._/+-]+$")

OUTPUT_LIMIT = 64 << 20  # the most a results file from a device may weigh


@dataclass(frozen=True)
class Target:
    """A parsed --target: kind 'local' or 'ssh'; for ssh the destination as ssh takes it."""

    kind: str
    display: str
    slug: str  # file-name-safe, for bench-<slug>.json
    user: str | None = None
    host: str | None = None
    port: int | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else str(self.host)

    @property
    def remote_host(self) -> str:
        # rsync and scp need brackets around an IPv6 literal before the ':path'.
        host = f"[{self.host}]" if self.host and ":" in self.host else str(self.host)
        return f"{self.user}@{host}" if self.user else host


def parse_target(spec: str) -> Target:
    """'local', 'ssh://user@host[:port]', 'user@host' or an ssh config alias."""
    spec = spec.strip()
    if spec == "local":
        return Target("local", "local", "local")
    m = _URL.match(spec)
    if m:
        user, host, port = m.group("user"), m.group("host").strip("[]"), m.group("port")
    elif spec.startswith("ssh://"):
        raise ShipError(f"--target {spec!r} is not ssh://user@host[:port]")
    else:
        user, _, host = spec.rpartition("@")
        user, port = user or None, None
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ShipError(f"--target {spec!r}: give a port as ssh://user@host:PORT, or set Port "
                            "for the host in your ssh config")
    if not host or not (_NAME.match(host) or ":" in host and re.match(r"^[0-9A-Fa-f:.]+$", host)):
        raise ShipError(f"--target {spec!r}: {host!r} is not a host name, address or ssh alias")
    if user is not None and not _NAME.match(user):
        raise ShipError(f"--target {spec!r}: {user!r} is not a user name")
    if port is not None and not 0 < int(port) < 65536:
        raise ShipError(f"--target {spec!r}: port {port} is out of range")
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", host) + (f"-{port}" if port else "")
    return Target("ssh", spec, slug, user, host, int(port) if port else None)


def check_remote_path(path: str) -> str:
    """A remote folder as given, minus a leading '~/' (ssh, rsync and scp all start in the
    home folder); refused when it holds characters a remote shell could read differently."""
    if path.startswith("~/"):
        path = path[2:]
    if not path or not _REMOTE_PATH.match(path) or path.startswith("-") or ".." in path.split("/"):
        raise ShipError(f"--remote-dir {path!r}: use letters, digits and . _ - + / only "
                        "(relative paths are under the device user's home)")
    return path.rstrip("/") or "/"


class Transport:
    """Runs commands on the target and moves files to and from it."""

    target: Target

    def run(self, argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def push(self, local_dir: Path, remote_dir: str, method: str) -> str:
        """Copy `local_dir` to `remote_dir` with `method`; return the transfer actually used."""
        raise NotImplementedError

    def read(self, remote_path: str) -> bytes | None:
        raise NotImplementedError

    def has_local_rsync(self) -> bool:
        return shutil.which("rsync") is not None


class LocalTransport(Transport):
    """The `local` target: the same bundle flow in a folder on this machine."""

    def __init__(self, target: Target):
        self.target = target

    def run(self, argv, timeout=None):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: not found")

    def push(self, local_dir, remote_dir, method):
        if os.path.exists(remote_dir):
            shutil.rmtree(remote_dir)
        try:
            shutil.copytree(local_dir, remote_dir)
        except OSError as e:
            shutil.rmtree(remote_dir, ignore_errors=True)
            raise transfer_error(self.target, str(e), local=True) from None
        return "copy"

    def read(self, remote_path):
        try:
            with open(remote_path, "rb") as f:
                return f.read(OUTPUT_LIMIT + 1)
        except FileNotFoundError:
            return None


class SshTransport(Transport):
    """A device over the user's OpenSSH: ssh for commands, rsync (over ssh) or scp for files."""

    def __init__(self, target: Target, ssh_config: str | None = None, connect_timeout_s: int = 20,
                 bwlimit_kbps: int | None = None):
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise ShipError(f"{tool} is not installed here: install OpenSSH's client "
                                "(apt install openssh-client)")
        if ssh_config and not Path(ssh_config).is_file():
            raise ShipError(f"--ssh-config {ssh_config} not found")
        self.target = target
        self.ssh_config = ssh_config
        self.connect_timeout_s = connect_timeout_s
        self.bwlimit_kbps = bwlimit_kbps

    def options(self, port_flag: str = "-p") -> list[str]:
        """Options for ssh/scp: the user's config file (-F) if given, the port if the target
        names one, no prompts (BatchMode), and keep-alives so a dead link fails within ~30 s."""
        opts = ["-F", self.ssh_config] if self.ssh_config else []
        if self.target.port:
            opts += [port_flag, str(self.target.port)]
        return opts + ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}",
                       "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3"]

    def run(self, argv, timeout=None):
        command = ["ssh", *self.options(), "--", self.target.destination, shlex.join(argv)]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ShipError(f"{self.target.display} did not answer within {timeout:.0f} s: check "
                            "the link and rerun") from None

    def push(self, local_dir, remote_dir, method):
        """Copy `local_dir` to `remote_dir`; return the transfer actually used.

        `scp` uses OpenSSH's default (SFTP protocol since OpenSSH 9.0). A device whose sshd has
        no sftp subsystem (minimal images, dropbear) refuses it with only "Connection closed",
        which no rerun fixes: then the legacy SCP protocol (`scp -O`) is used, and where the
        device has no scp program either, a tar stream over ssh (`tar`)."""
        # Absolute: rsync and scp would read a relative "a:b/bundle" as host "a".
        src = str(Path(local_dir).resolve())
        if method == "rsync":
            # --checksum: a file cut short by a dropped link can match in size and time, so
            # compare contents; --partial keeps what arrived, so a retry resumes; --delete
            # clears debris of an earlier attempt.
            command = ["rsync", "-rlpt", "--partial", "--checksum", "--delete",
                       "-e", shlex.join(["ssh", *self.options()])]
            if self.bwlimit_kbps:
                command += [f"--bwlimit={self.bwlimit_kbps}"]
            command += ["--", src + "/", f"{self.target.remote_host}:{remote_dir}/"]
            self._check(subprocess.run(command, capture_output=True, text=True,
                                       stdin=subprocess.DEVNULL), remote_dir)
            return "rsync"
        if method == "tar":
            self._check(self._tar(src, remote_dir), remote_dir)
            return "tar"
        proc = self._scp(src, remote_dir, legacy=False)
        if proc.returncode == 0:
            return "scp"
        if no_space(proc.stderr) or self.has_sftp():
            self._check(proc, remote_dir)
        proc = self._scp(src, remote_dir, legacy=True)
        if proc.returncode == 0:
            return "scp -O"
        if no_space(proc.stderr) or not _matching_line(proc.stderr, _NO_PROGRAM):
            self._check(proc, remote_dir)
        self._check(self._tar(src, remote_dir), remote_dir)
        return "tar"

    def has_sftp(self) -> bool:
        """Whether the device's sshd serves the sftp subsystem (what plain scp needs)."""
        command = ["ssh", *self.options(), "-s", "--", self.target.destination, "sftp"]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=self.connect_timeout_s + 30)
        except subprocess.TimeoutExpired:
            return True  # no answer either way: keep the original error
        return "subsystem request failed" not in proc.stderr

    def _clear(self, remote_dir: str) -> None:
        # scp and tar cannot resume: the staging folder is removed first and copied whole.
        done = self.run(["rm", "-rf", "--", remote_dir], timeout=self.connect_timeout_s + 60)
        if done.returncode != 0:
            raise ssh_error(self.target, done.stderr) or ShipError(
                f"cannot clear {remote_dir} on {self.target.display}: {_tail(done.stderr)}")

    def _scp(self, src: str, remote_dir: str, legacy: bool) -> subprocess.CompletedProcess:
        self._clear(remote_dir)
        command = ["scp", "-r", "-p", "-q", *(["-O"] if legacy else []), *self.options("-P")]
        if self.bwlimit_kbps:
            command += ["-l", str(self.bwlimit_kbps * 8)]  # scp takes Kbit/s
        command += ["--", src, f"{self.target.remote_host}:{remote_dir}"]
        return subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    def _tar(self, src: str, remote_dir: str) -> subprocess.CompletedProcess:
        """tar on this side, piped into `tar -x` on the device over one ssh session."""
        self._clear(remote_dir)
        remote = shlex.join(["mkdir", "-p", "--", remote_dir]) + " && " + shlex.join(
            ["tar", "-x", "-f", "-", "-C", remote_dir])
        with subprocess.Popen(["tar", "-c", "-f", "-", "-C", src, "."], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as pack:
            proc = subprocess.run(["ssh", *self.options(), "--", self.target.destination, remote],
                                  stdin=pack.stdout, capture_output=True, text=True)
            pack.stdout.close()
            pack.wait()
        if pack.returncode != 0 and proc.returncode == 0:
            return subprocess.CompletedProcess(pack.args, pack.returncode, "",
                                               pack.stderr.read().decode(errors="replace"))
        return proc

    def _check(self, proc: subprocess.CompletedProcess, remote_dir: str) -> None:
        if proc.returncode != 0:
            if no_space(proc.stderr):
                # Resuming into a full disk cannot succeed: free what arrived instead.
                self.run(["rm", "-rf", "--", remote_dir], timeout=self.connect_timeout_s + 60)
            raise transfer_error(self.target, proc.stderr)

    def read(self, remote_path):
        command = ["ssh", *self.options(), "--", self.target.destination,
                   shlex.join(["cat", "--", remote_path])]
        proc = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL)
        if proc.returncode == 0:
            return proc.stdout[: OUTPUT_LIMIT + 1]
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode == 255:
            raise ssh_error(self.target, stderr) or ShipError(
                f"lost {self.target.display} while fetching results: {_tail(stderr)}")
        return None


def make_transport(target: Target, ssh_config: str | None = None, connect_timeout_s: int = 20,
                   bwlimit_kbps: int | None = None) -> Transport:
    if target.kind == "local":
        if ssh_config:
            raise ShipError("--ssh-config applies to ssh targets, not local")
        return LocalTransport(target)
    return SshTransport(target, ssh_config, connect_timeout_s, bwlimit_kbps)


# ---- what went wrong, in one line ----------------------------------------------------------
_UNREACHABLE = ("Connection refused", "Connection timed out", "No route to host",
                "Network is unreachable", "Operation timed out", "Could not resolve hostname",
                "Name or service not known", "connect to host")
_DROPPED = ("Connection reset", "Broken pipe", "closed by remote host", "Timeout, server",
            "Connection closed", "connection unexpectedly closed", "client_loop: send disconnect",
            "lost connection", "Killed by signal")


def ssh_error(target: Target, stderr: str) -> ShipError | None:
    """The ShipError for an ssh-level failure in `stderr`, or None if it shows none."""
    line = _matching_line(stderr, ("REMOTE HOST IDENTIFICATION HAS CHANGED",))
    if line:
        return ShipError(f"the host key of {target.display} has CHANGED since it was recorded in "
                         "known_hosts, so ssh refused to connect: if the device was reinstalled, "
                         "check its new fingerprint, remove the old key (ssh-keygen -R HOST) and "
                         "rerun; edgekd never accepts host keys by itself")
    line = _matching_line(stderr, ("Host key verification failed", "host key is known",
                                   "No matching host key"))
    if line:
        return ShipError(f"the host key of {target.display} is not in known_hosts (ssh: "
                         f"{line}): connect once with plain ssh, check the fingerprint and accept "
                         "it, then rerun; edgekd never accepts host keys by itself")
    line = _matching_line(stderr, ("Permission denied", "Too many authentication failures"))
    if line:
        return ShipError(f"{target.display} refused authentication ({line}): load your key "
                         "(ssh-add) or set IdentityFile for this host in ~/.ssh/config (or "
                         "--ssh-config); password prompts are off")
    line = _matching_line(stderr, _UNREACHABLE)
    if line:
        return ShipError(f"cannot reach {target.display} ({line}): is the device on and its sshd "
                         "running, and are the host name and port right?")
    line = _matching_line(stderr, _DROPPED)
    if line:
        return ShipError(f"the connection to {target.display} dropped ({line}): rerun; the "
                         "transfer resumes, and nothing unverified ever runs on the device")
    return None


_NO_SPACE = ("No space left on device", "Disk quota exceeded")


# A remote program that is not there (the legacy SCP protocol runs `scp -t` on the device).
_NO_PROGRAM = ("command not found", "not found", "No such file or directory")


def no_space(stderr: str) -> bool:
    """Whether a failed transfer ran out of disk (or inodes, or quota) on the receiving end."""
    return _matching_line(stderr, _NO_SPACE) is not None


def transfer_error(target: Target, stderr: str, local: bool = False) -> ShipError:
    line = _matching_line(stderr, _NO_SPACE)
    if line:
        return ShipError(f"no space left on {target.display} during the transfer ({line}): the "
                         "partial copy was removed; free space there or pass --remote-dir on a "
                         "larger disk, then rerun")
    if not local:
        found = ssh_error(target, stderr)
        if found:
            return found
    return ShipError(f"copying the bundle to {target.display} failed ({_tail(stderr)}): rerun; a "
                     "partial copy is never run")


def _matching_line(text: str, needles: tuple[str, ...]) -> str | None:
    for line in text.splitlines():
        if any(n.lower() in line.lower() for n in needles):
            return line.strip().strip("@ ").rstrip(".")[:160]
    return None


def _tail(text: str, lines: int = 3) -> str:
    kept = [x.strip() for x in text.strip().splitlines() if x.strip()][-lines:]
    return " | ".join(kept)[-400:] or "no message"

