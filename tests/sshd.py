"""A real OpenSSH server on 127.0.0.1 for tests: throwaway host and user keys, a free
non-default port, running as the current user, and an ssh client config (what a user would
pass with --ssh-config) that trusts exactly this server's host key."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
                                     if os.path.exists(p)), None)
ALIAS = "edgekd-test"


def missing() -> str | None:
    """Why a loopback sshd cannot run here, or None."""
    tools = {"sshd": SSHD, "ssh": shutil.which("ssh"), "ssh-keygen": shutil.which("ssh-keygen"),
             "scp": shutil.which("scp"), "rsync": shutil.which("rsync")}
    absent = [name for name, path in tools.items() if not path]
    if absent:
        return (f"{', '.join(absent)} not installed (Debian: apt-get install openssh-server "
                "openssh-client rsync; .ci/run does this)")
    return None


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekd-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackSshd:
    """Start with `start()`, stop with `stop()`; `config` is the client config file."""

    def __init__(self, root: Path, sftp: bool = True, path: Path | None = None):
        """`sftp=False`: no sftp subsystem (minimal images, dropbear); `path`: the PATH of the
        device's sessions (a folder without scp or rsync makes a device that lacks them)."""
        self.root = root
        self.user = getpass.getuser()
        self.port = free_port()
        self.host_pub = keygen(root / "host_key")
        self.user_pub = keygen(root / "user_key")
        (root / "authorized_keys").write_text(self.user_pub + "\n")
        self.known_hosts = root / "known_hosts"
        self.trust(self.host_pub)
        self.config = root / "ssh_config"
        self.write_config(self.config, self.known_hosts, root / "user_key")
        (root / "sshd_config").write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {root / 'host_key'}
PidFile {root / 'sshd.pid'}
AuthorizedKeysFile {root / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
{"Subsystem sftp internal-sftp" if sftp else "# no sftp subsystem (minimal images, dropbear)"}
{f"SetEnv PATH={path}" if path else ""}
MaxStartups 100
LogLevel ERROR
""")
        self.proc: subprocess.Popen | None = None

    def trust(self, host_pub: str, known_hosts: Path | None = None) -> None:
        key_type, key = host_pub.split()[:2]
        (known_hosts or self.known_hosts).write_text(f"[127.0.0.1]:{self.port} {key_type} {key}\n")

    def write_config(self, path: Path, known_hosts: Path, identity: Path, port: int | None = None) -> None:
        path.write_text(f"""\
Host {ALIAS}
  HostName 127.0.0.1
  Port {port or self.port}
Host *
  User {self.user}
  IdentityFile {identity}
  IdentitiesOnly yes
  UserKnownHostsFile {known_hosts}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  PasswordAuthentication no
  LogLevel ERROR
""")

    def start(self) -> None:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
        self.log = open(self.root / "sshd.log", "wb")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("sshd exited: " + (self.root / "sshd.log").read_text())
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("sshd did not listen within 15 s: " + (self.root / "sshd.log").read_text())

    def sessions(self) -> list[int]:
        """Process ids of everything this sshd has started (per-connection sshd processes and
        the commands they run), children before their own children."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # the process ended while being read
            parents[int(stat.parent.name)] = int(fields[1])
        found, frontier = [], [self.proc.pid]
        while frontier:
            children = [pid for pid, ppid in parents.items() if ppid in frontier]
            found += children
            frontier = children
        return found

    def drop_connections(self) -> int:
        """Kill every session of this server at once, as a dropped link or a device losing
        power would end them; the listener stays up. Returns how many processes were killed."""
        import signal

        killed = 0
        for pid in self.sessions():
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        return killed

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
