"""A real Linux for the node scripts: the Debian bookworm VM tests/vm/build.sh builds, booted under
QEMU software emulation (TCG: KVM does not work on these machines, see REFERENCE section 12), reached
over real SSH, with the node steps sent to it exactly as the program sends them."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from harness import ROOT, unavailable

from components.node_provisioning import NodeStep

BUILDER = ROOT / "tests" / "vm" / "build.sh"
VM_DIR = ROOT / ".cache" / "test-vm"
DEBS = VM_DIR / "debs"
# Debian sid's containerd 2.x, unpacked (not installed) by scripts/test.sh, which points
# KATA_MESH_CONTAINERD2 at its containerd; ctr and the runc shim are beside it.
CONTAINERD2_BIN = Path(
    os.environ.get("KATA_MESH_CONTAINERD2", ROOT / ".cache" / "containerd2" / "usr" / "bin" / "containerd")
).parent
USER = "kmtest"
HOST_ALIAS = "kata-mesh-test-vm"
# The host's loopback as the guest sees it through QEMU user networking.
HOST_FROM_GUEST = "10.0.2.2"
BOOT_TIMEOUT_SECONDS = 300
COMMAND_TIMEOUT_SECONDS = 600


def _unavailable(reason: str) -> NoReturn:
    unavailable(f"the test VM is unavailable: {reason}")


def builder_key() -> str:
    return hashlib.sha256(BUILDER.read_bytes()).hexdigest()


def require_vm() -> None:
    """The VM tests need QEMU, ssh, the image built for this very builder, and containerd 2.x."""
    for tool in ("qemu-system-x86_64", "qemu-img", "ssh"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} is missing (run `bash tests/vm/build.sh` as root)")
    key = VM_DIR / "key"
    if not key.is_file():
        _unavailable(f"no image in {VM_DIR} (run `bash tests/vm/build.sh` as root)")
    if key.read_text().strip() != builder_key():
        _unavailable(f"the image in {VM_DIR} is older than tests/vm/build.sh (run it again as root)")
    if not (CONTAINERD2_BIN / "containerd").is_file():
        _unavailable(f"no containerd 2.x in {CONTAINERD2_BIN} (scripts/test.sh unpacks Debian sid's)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """QEMU is killed if the test process dies without shutting it down (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


@dataclass
class VM:
    """One QEMU guest booted from the built image through a qcow2 overlay of its own: the image is
    only ever read (it is the overlay's backing file), so every session starts from the image as
    built, while the guest's writes persist across its reboots within the session."""

    workdir: Path
    memory_mb: int = 2048
    cpus: int = 2
    port: int = 0
    boots: int = 0
    process: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def serial_log(self) -> Path:
        return self.workdir / f"serial-{self.boots}.log"

    @property
    def overlay(self) -> Path:
        return self.workdir / "overlay.qcow2"

    def qemu_command(self) -> list[str]:
        return [
            "qemu-system-x86_64",
            *("-accel", "tcg,thread=multi", "-cpu", "max"),
            *("-m", str(self.memory_mb), "-smp", str(self.cpus)),
            *("-nodefaults", "-no-user-config", "-display", "none"),
            *("-serial", f"file:{self.serial_log}"),
            *("-kernel", str(VM_DIR / "vmlinuz"), "-initrd", str(VM_DIR / "initrd.img")),
            *("-append", "root=/dev/vda rw console=ttyS0 quiet"),
            *("-drive", f"file={self.overlay},if=virtio,format=qcow2"),
            *("-nic", f"user,model=virtio-net-pci,ipv6=off,hostfwd=tcp:127.0.0.1:{self.port}-:22"),
            *("-device", "virtio-rng-pci"),
        ]

    def ssh_command(self, *options: str, remote: str | None = None) -> list[str]:
        """ssh with its options, then the destination, then the remote command line if any."""
        return [
            "ssh",
            *("-p", str(self.port), "-i", str(self.workdir / "id_ed25519")),
            *("-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"),
            *("-o", f"UserKnownHostsFile={VM_DIR / 'known_hosts'}", "-o", f"HostKeyAlias={HOST_ALIAS}"),
            *("-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"),
            # One connection for every command: ~0.3 s a command instead of ~2 s.
            *("-o", "ControlMaster=auto", "-o", f"ControlPath={self.workdir / 'cm-%C'}"),
            *("-o", "ControlPersist=600", "-o", "ServerAliveInterval=15"),
            *options,
            f"{USER}@127.0.0.1",
            *([] if remote is None else ["--", remote]),
        ]

    def boot(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # ssh refuses a private key others can read; the cache's copy may belong to root.
        key = self.workdir / "id_ed25519"
        shutil.copyfile(VM_DIR / "id_ed25519", key)
        key.chmod(0o600)
        image = VM_DIR / "disk.img"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image), str(self.overlay)],
            check=True,
        )
        started = time.monotonic()
        self.start()
        self.wait_for_ssh()
        self.timings["boot"] = time.monotonic() - started

    def start(self) -> None:
        """A new QEMU on the session's overlay: a cold boot that keeps what the guest wrote."""
        self.boots += 1
        self.port = free_port()
        self.process = subprocess.Popen(
            self.qemu_command(),
            stdin=subprocess.DEVNULL,
            stdout=(self.workdir / f"qemu-{self.boots}.log").open("wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )

    def wait_for_ssh(self, not_boot_id: str | None = None) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"QEMU exited ({self.process.returncode}): {self.diagnostics()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                probe = subprocess.run(
                    self.ssh_command(remote="cat /proc/sys/kernel/random/boot_id"),
                    capture_output=True,
                    text=True,
                    timeout=30,
                    stdin=subprocess.DEVNULL,
                )
                if probe.returncode == 0 and probe.stdout.strip() != not_boot_id:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ssh after {BOOT_TIMEOUT_SECONDS} s: {self.diagnostics()}")
            time.sleep(1)

    def diagnostics(self) -> str:
        tails = []
        for log in (self.workdir / f"qemu-{self.boots}.log", self.serial_log):
            if log.exists():
                tails.append(
                    f"--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
                )
        return "\n".join(tails)

    def ssh(
        self, command: str, input: str | bytes | None = None, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Runs one command line in the guest as the test user (the login shell parses it, as it
        parses what pulumi-command sends)."""
        data = input.encode() if isinstance(input, str) else input
        result = subprocess.run(
            self.ssh_command(remote=command),
            input=data if data is not None else b"",
            capture_output=True,
            timeout=timeout or COMMAND_TIMEOUT_SECONDS,
        )
        completed = subprocess.CompletedProcess(
            result.args,
            result.returncode,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )
        if check and completed.returncode != 0:
            raise AssertionError(
                f"`{command}` failed in the VM (exit {completed.returncode}):\n"
                f"{completed.stdout}\n{completed.stderr}"
            )
        return completed

    def sudo(self, command: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return self.ssh(f"sudo -n bash -c {shlex.quote(command)}", **kwargs)

    def run_step(self, step: NodeStep, label: str | None = None) -> subprocess.CompletedProcess[str]:
        """The step exactly as the program sends it: its command line, its script on stdin."""
        started = time.monotonic()
        result = self.ssh(step.command_line, input=step.script_text, check=False)
        self.timings[label or step.name] = time.monotonic() - started
        return result

    def boot_id(self) -> str:
        return self.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()

    def reboot(self) -> None:
        """The guest shuts itself down (`systemctl poweroff`, so systemd stops everything as on
        any reboot), QEMU exits, and a new QEMU boots the same overlay. Not `systemctl reboot`:
        under TCG, a guest booting again after QEMU's reset runs 2-3 times slower than in a fresh
        QEMU (measured here: 64 s against 31 s to sshd; the cause was not investigated)."""
        assert self.process is not None
        before = self.boot_id()
        started = time.monotonic()
        # The connection drops as the guest goes down: the exit status means nothing here.
        self.ssh("sudo -n systemctl poweroff", check=False, timeout=60)
        self.close_connection()
        try:
            self.process.wait(timeout=BOOT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired as error:
            raise TimeoutError(f"the guest did not power off: {self.diagnostics()}") from error
        self.timings["poweroff"] = time.monotonic() - started
        self.start()
        self.wait_for_ssh(not_boot_id=before)
        self.timings["reboot"] = time.monotonic() - started

    def close_connection(self) -> None:
        subprocess.run(self.ssh_command("-O", "exit"), capture_output=True, timeout=30)

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.close_connection()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # What the guest wrote (hundreds of MB) goes with the session.
        self.overlay.unlink(missing_ok=True)
