#!/usr/bin/env bash
# An ARM64 "device" on this x86 machine: a Debian arm64 root file system run under
# qemu-user-static (binfmt_misc), with Python, numpy and the aarch64 onnxruntime wheel inside
# and an OpenSSH server listening on a loopback port. edgekd's device side (deploy/,
# calibration/) then meets aarch64 the way it meets a Jetson: over ssh, with its own Python.
#
#   tools/arm64-device.sh up       build what is missing (resumable), start sshd, print the alias
#   tools/arm64-device.sh down     stop sshd, unmount
#   tools/arm64-device.sh status   say whether it is up (exit 1 if not)
#
# Needs root (debootstrap, chroot, mounts) and Debian's debootstrap + qemu-user-static, which
# `up` installs with apt when missing. Settings (environment):
#   EDGEKD_ARM64_DIR    where it lives       (default: ~/.cache/edgekd/arm64)
#   EDGEKD_ARM64_PORT   loopback ssh port    (default: 2299)
#   EDGEKD_ARM64_SUITE  Debian release       (default: bookworm, Python 3.11)
#   EDGEKD_ARM64_MIRROR Debian mirror        (default: http://deb.debian.org/debian)
# Emulation makes it 5-20x slower than real silicon: use it for correctness, never for speed.
set -euo pipefail

DIR=${EDGEKD_ARM64_DIR:-$HOME/.cache/edgekd/arm64}
PORT=${EDGEKD_ARM64_PORT:-2299}
SUITE=${EDGEKD_ARM64_SUITE:-bookworm}
MIRROR=${EDGEKD_ARM64_MIRROR:-http://deb.debian.org/debian}
ROOT=$DIR/rootfs
ALIAS=edgekd-arm64
PACKAGES=python3,python3-pip,openssh-server,rsync,ca-certificates,procps

say() { printf 'arm64-device: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and mounts): run it with sudo"
}

host_tools() {
    if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
        say "installing debootstrap and qemu-user-static with apt"
        apt-get update -q >&2 && apt-get install -y -q debootstrap qemu-user-static binfmt-support >&2
    fi
    # aarch64 binaries run through binfmt_misc: mount it and register qemu where it is not yet
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc (a container without it cannot run foreign binaries)"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --enable qemu-aarch64 >&2 \
            || die "qemu-aarch64 is not registered with binfmt_misc (update-binfmts --enable qemu-aarch64)"
    fi
}

rootfs() {
    if [ -e "$ROOT/.edgekd-rootfs" ]; then return; fi
    # debootstrap cannot resume a half-made tree: build beside it, move it in when complete
    rm -rf "$ROOT.partial"
    mkdir -p "$DIR"
    say "debootstrap $SUITE arm64 into $ROOT (downloads ~150 MB; 5-20 min under emulation)"
    debootstrap --arch=arm64 --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT.partial" "$MIRROR" >&2
    touch "$ROOT.partial/.edgekd-rootfs"
    mv "$ROOT.partial" "$ROOT"
}

python_packages() {
    if [ -e "$ROOT/.edgekd-python" ]; then return; fi
    local pyver
    pyver=$(chroot "$ROOT" python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')
    # The wheels are fetched on the host (fast), for the device's Python and architecture,
    # then installed inside from that folder, offline; they are what a Jetson gets from PyPI.
    mkdir -p "$ROOT/opt/wheels"
    say "downloading aarch64 wheels for cp$pyver: onnxruntime, numpy"
    python3 -m pip download -q --only-binary=:all: --implementation cp --python-version "$pyver" \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
        --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        -d "$ROOT/opt/wheels" onnxruntime numpy >&2
    say "installing them inside the arm64 root (under emulation)"
    chroot "$ROOT" python3 -m pip install -q --break-system-packages --no-index \
        --find-links /opt/wheels onnxruntime numpy >&2
    touch "$ROOT/.edgekd-python"
}

keys() {
    [ -e "$DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C edgekd-arm64 -f "$DIR/id_ed25519"
    [ -e "$ROOT/etc/ssh/ssh_host_ed25519_key" ] \
        || ssh-keygen -q -t ed25519 -N "" -C edgekd-arm64-host -f "$ROOT/etc/ssh/ssh_host_ed25519_key"
    mkdir -p "$ROOT/root/.ssh"
    chmod 700 "$ROOT/root/.ssh"
    cp "$DIR/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"
    chmod 600 "$ROOT/root/.ssh/authorized_keys"
    local type key
    read -r type key _ < "$ROOT/etc/ssh/ssh_host_ed25519_key.pub"
    printf '[127.0.0.1]:%s %s %s\n' "$PORT" "$type" "$key" > "$DIR/known_hosts"
    cat > "$DIR/ssh_config" <<EOF
Host $ALIAS
  HostName 127.0.0.1
  Port $PORT
  User root
  IdentityFile $DIR/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $DIR/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  PasswordAuthentication no
  ConnectTimeout 30
  LogLevel ERROR
EOF
    cat > "$ROOT/etc/ssh/sshd_config.edgekd" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd-edgekd.pid
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
Subsystem sftp /usr/lib/openssh/sftp-server
MaxStartups 50
LogLevel ERROR
EOF
}

mounted() { mountpoint -q "$ROOT/$1"; }

# Under qemu-user the guest reads the host's /proc/cpuinfo, an x86 one: onnxruntime's cpuinfo
# library finds no ARM processor in it and the import segfaults (seen with ORT 1.32, qemu 7.2).
# The rig shows what an arm64 kernel prints instead (no "model name" line; implementer 0x41,
# part 0xd42: the Cortex-A78AE cores of a Jetson Orin), one entry per host CPU.
arm_cpuinfo() {
    local i n
    n=$(nproc)
    for ((i = 0; i < n; i++)); do
        [ "$i" = 0 ] || printf '\n'
        printf 'processor\t: %d\nBogoMIPS\t: 62.50\n' "$i"
        printf 'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid '
        printf 'asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg\n'
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n'
        printf 'CPU part\t: 0xd42\nCPU revision\t: 1\n'
    done
}

mounts() {
    mounted proc || mount -t proc proc "$ROOT/proc"
    if ! grep -q '^CPU implementer' "$ROOT/proc/cpuinfo"; then
        arm_cpuinfo > "$DIR/cpuinfo"
        mount --bind "$DIR/cpuinfo" "$ROOT/proc/cpuinfo"
    fi
    mounted sys || mount --rbind /sys "$ROOT/sys"
    mounted dev || mount --rbind /dev "$ROOT/dev"
    mkdir -p "$ROOT/run/sshd"
}

unmounts() {
    local m
    if mountpoint -q "$ROOT/proc" && grep -q '^CPU implementer' "$ROOT/proc/cpuinfo"; then
        umount "$ROOT/proc/cpuinfo" || true
    fi
    for m in dev sys proc; do
        if mounted "$m"; then umount -R "$ROOT/$m" || umount -lR "$ROOT/$m"; fi
    done
}

running() {
    [ -e "$ROOT/run/sshd-edgekd.pid" ] && kill -0 "$(cat "$ROOT/run/sshd-edgekd.pid")" 2>/dev/null
}

up() {
    need_root
    host_tools
    rootfs
    mounts
    python_packages
    keys
    if ! running; then
        chroot "$ROOT" /usr/sbin/sshd -f /etc/ssh/sshd_config.edgekd -E /var/log/sshd-edgekd.log
    fi
    local i
    for i in $(seq 1 60); do
        if ssh -F "$DIR/ssh_config" -o BatchMode=yes "$ALIAS" true 2>/dev/null; then
            say "up: $(ssh -F "$DIR/ssh_config" "$ALIAS" 'uname -m; python3 -c "import platform, numpy, onnxruntime as o; print(platform.python_version(), numpy.__version__, o.__version__)"' | tr '\n' ' ')"
            printf 'ssh -F %s %s\n' "$DIR/ssh_config" "$ALIAS"
            say "use it: edgekd deploy RUN --target $ALIAS --ssh-config $DIR/ssh_config"
            return
        fi
        sleep 1
    done
    die "sshd in $ROOT did not answer on 127.0.0.1:$PORT (log: $ROOT/var/log/sshd-edgekd.log)"
}

down() {
    need_root
    if running; then kill "$(cat "$ROOT/run/sshd-edgekd.pid")"; fi
    unmounts
    say "down"
}

status() {
    if running && ssh -F "$DIR/ssh_config" -o BatchMode=yes "$ALIAS" true 2>/dev/null; then
        printf 'ssh -F %s %s\n' "$DIR/ssh_config" "$ALIAS"
    else
        say "not running (tools/arm64-device.sh up)"
        exit 1
    fi
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: $0 up|down|status" ;;
esac
