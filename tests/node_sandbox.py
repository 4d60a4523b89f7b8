"""A sandboxed node for the node scripts: this machine's own root under a copy-on-write overlay,
entered with chroot in a private mount namespace, so a step runs as root, exactly as the program
sends it, and writes where it would on a node, while every write lands in the overlay's upper
folder (what the step changed, readable afterwards) and the host stays untouched.

What would reach the kernel, the package manager or the cluster is a stand-in that records its
call (PATH-injected, ahead of the real tools): systemctl, modprobe, sysctl, swapoff, apt-get,
apt-mark, dpkg-query, gpg, cloud-init, kubeadm, kubectl. Everything else is real: bash, coreutils,
curl (against the test's own server on 127.0.0.1), tar, zstd, sha256sum, openssl, jq. The CPU
flags (/proc/cpuinfo) and /dev/kvm are the test's to choose.

A control plane's etcd (Sandbox.use_etcd): crictl is a stand-in that finds an etcd container and,
for `crictl exec ID etcdctl ...`, runs the real etcdctl against the test's real etcd cluster.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness import unavailable

from components.node_provisioning import NodeStep

# Inside the sandbox: the stand-ins, their state and the call log.
TEST_DIR = "/km-test"
SANDBOX_PATH = f"{TEST_DIR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPUINFO_WITH_VMX = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae mce vmx sse sse2 ssse3\n"
CPUINFO_WITHOUT_VMX = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae mce sse sse2 ssse3\n"

# Each stand-in logs its call, then behaves as its snippet says (none: succeed silently). The
# snippets keep what a real node would remember (packages, sysctls, a cluster) under state/.
STANDIN = """#!/bin/bash
set -uo pipefail
state=/km-test/state
printf '%s\\n' "$(basename "$0")${*:+ $*}" >>/km-test/calls.log
"""
DEFAULT_BEHAVIOUR = {
    "systemctl": 'case "${1:-}" in status) echo "status of ${2:-}";; esac\n'
    "[[ -f $state/systemctl-fails-$1 ]] && exit 1; exit 0\n",
    "modprobe": 'grep -qxF -- "$1" "$state/modules-missing" 2>/dev/null && { echo "modprobe: FATAL: Module $1 not found" >&2; exit 1; }\n'
    'echo "$1" >>"$state/modules-loaded"; exit 0\n',
    # `sysctl --system` applies /etc/sysctl.d as the kernel would; `sysctl -n KEY` reads it back.
    "sysctl": 'mkdir -p "$state/sysctl"\n'
    "if [[ $* == *--system* ]]; then\n"
    "  [[ -f $state/sysctl-ignores-files ]] && exit 0\n"
    "  cat /etc/sysctl.d/*.conf 2>/dev/null | while IFS== read -r key value; do\n"
    '    [[ -z $key || $key == \\#* ]] && continue; printf "%s" "$value" >"$state/sysctl/$key"; done; exit 0\n'
    "fi\n"
    'if [[ $1 == -n ]]; then cat "$state/sysctl/$2" 2>/dev/null || echo 0; fi\n',
    "dpkg-query": "pkg=${*: -1}\n"
    "[[ -f $state/packages/$pkg ]] || exit 1\n"
    'case "$*" in *Status*) echo "install ok installed";; *Version*) cat "$state/packages/$pkg";; esac\n',
    # apt-get install NAME or NAME=VERSION-*: the package is installed at VERSION-1.1 (pkgs.k8s.io's
    # revisions look like that). kubelet pulls in kubernetes-cni, which writes its own plugins.
    "apt-get": 'args=" $* "\n'
    'if [[ $args == *" update "* ]]; then [[ -f $state/apt-update-fails ]] && exit 100; exit 0; fi\n'
    '[[ $args == *" install "* ]] || exit 0\n'
    'mkdir -p "$state/packages"\n'
    'for word in "$@"; do\n'
    "  [[ $word == -* || $word == install ]] && continue\n"
    "  name=${word%%=*}; version=${word#*=}; [[ $word == *=* ]] || version=1.0\n"
    '  printf "%s" "${version%-\\*}-1.1" >"$state/packages/$name"\n'
    '  if [[ $name == kubelet ]]; then printf "1.9.0-1.1" >"$state/packages/kubernetes-cni"\n'
    '    mkdir -p /opt/cni/bin; echo "kubernetes-cni plugin" >/opt/cni/bin/bridge; fi\n'
    "done\n",
    "apt-mark": "exit 0\n",
    "swapoff": "exit 0\n",
    # gpg --batch --yes --dearmor -o OUT IN
    "gpg": 'out=""; while (($#)); do [[ $1 == -o ]] && { out=$2; shift; }; last=$1; shift; done\n'
    'cp "$last" "$out"\n',
    "cloud-init": 'case "$*" in *--wait*) exit "$(cat "$state/cloud-init-exit" 2>/dev/null || echo 0)";;\n'
    '*--long*) echo "status: error (from the stand-in)";; esac\n',
    # Waits are instant: a step's retries and polls run through in milliseconds.
    "sleep": "exit 0\n",
    "kubeadm": "exit 0\n",
    "kubectl": "exit 0\n",
}

# crictl on a control plane (Sandbox.use_etcd): `ps --name ^etcd$` finds the etcd container;
# `exec ID etcdctl ARGS` runs the real etcdctl with ARGS, only the local member's endpoint
# (https://127.0.0.1:2379, where kubeadm's etcd listens) swapped for the test cluster's member.
ETCD_CONTAINER_ID = "3f0c1d2e4b5a69788796a5b4c3d2e1f0"
CRICTL_ETCD = f"""container={ETCD_CONTAINER_ID}
case "${{1:-}}" in
  ps) [[ " $* " == *" --name ^etcd$ "* ]] && echo "$container"; exit 0 ;;
  exec)
    [[ ${{2:-}} == "$container" ]] || {{ echo "crictl: container \"${{2:-}}\" not found" >&2; exit 1; }}
    [[ ${{3:-}} == etcdctl ]] || {{ echo "crictl stand-in: the etcd container only runs etcdctl here" >&2; exit 1; }}
    shift 3
    args=()
    for arg in "$@"; do
      [[ $arg == --endpoints=https://127.0.0.1:2379 ]] && arg=--endpoints=$(<"$state/etcd-endpoint")
      args+=("$arg")
    done
    ETCDCTL_API=3 exec etcdctl "${{args[@]}}" ;;
esac
echo "crictl stand-in: unexpected call: crictl $*" >&2
exit 1
"""


# km_etcdctl's calls as the crictl stand-in records them: finding the etcd container, then
# etcdctl in it as a client of the local member with kubeadm's certificates.
CRICTL_PS = "crictl ps --name ^etcd$ --state Running -q"
ETCDCTL = (
    f"crictl exec {ETCD_CONTAINER_ID} etcdctl --endpoints=https://127.0.0.1:2379"
    " --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt"
    " --key=/etc/kubernetes/pki/etcd/healthcheck-client.key "
)


def etcd_steps(result: Result) -> list[str]:
    """The calls, each `crictl exec <etcd container> etcdctl <client flags> ARGS` (after the
    `crictl ps` that found the container) shown as `etcdctl ARGS`."""
    shown: list[str] = []
    for i, call in enumerate(result.calls):
        if call == CRICTL_PS:
            assert result.calls[i + 1].startswith(ETCDCTL), result.calls
        elif call.startswith(ETCDCTL):
            assert result.calls[i - 1] == CRICTL_PS, result.calls
            shown.append("etcdctl " + call.removeprefix(ETCDCTL))
        else:
            shown.append(call)
    return shown


def step_error(result: Result) -> str:
    """The step's error message (km_die's last line)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("[kata-mesh] ERROR: ")]
    assert lines, result.stderr
    return lines[-1].removeprefix("[kata-mesh] ERROR: ")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    calls: list[str]


@dataclass
class Sandbox:
    """One node: its changes persist from run to run (a second run sees the first's work)."""

    base: Path
    vmx: bool = True
    kvm: bool = True
    behaviour: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_BEHAVIOUR))

    def __post_init__(self) -> None:
        for name in ("upper", "work", "merged", "km/bin", "km/state"):
            (self.base / name).mkdir(parents=True, exist_ok=True)
        (self.base / "km" / "calls.log").touch()

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    @property
    def state(self) -> Path:
        return self.base / "km" / "state"

    def set_state(self, name: str, content: str = "") -> None:
        path = self.state / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)

    def use_etcd(self, client_url: str, ca_cert: str, client_cert: str, client_key: str) -> None:
        """A control plane whose local etcd member is the test's real one at client_url: kubeadm's
        etcd CA and healthcheck-client certificate (the test's) are where kubeadm puts them, and
        crictl runs etcdctl against it (CRICTL_ETCD)."""
        self.seed("/etc/kubernetes/pki/etcd/ca.crt", ca_cert)
        self.seed("/etc/kubernetes/pki/etcd/healthcheck-client.crt", client_cert)
        self.seed("/etc/kubernetes/pki/etcd/healthcheck-client.key", client_key, 0o600)
        self.set_state("etcd-endpoint", client_url)
        self.behaviour["crictl"] = CRICTL_ETCD

    def calls(self) -> list[str]:
        return (self.base / "km" / "calls.log").read_text().splitlines()

    def _write_standins(self) -> None:
        bin_dir = self.base / "km" / "bin"
        for old in bin_dir.iterdir():
            old.unlink()
        for name, snippet in self.behaviour.items():
            path = bin_dir / name
            path.write_text(STANDIN + snippet)
            path.chmod(0o755)
        (self.base / "cpuinfo").write_text(CPUINFO_WITH_VMX if self.vmx else CPUINFO_WITHOUT_VMX)

    def run(self, step: NodeStep, stdin: str | None = None, timeout: float = 120) -> Result:
        """Runs the step as the program does (its command line, its script on stdin), as root."""
        self._write_standins()
        (self.base / "km" / "calls.log").write_text("")
        command = step.command_line.removeprefix("sudo -n ")
        merged = self.base / "merged"
        kvm = f"mknod {merged}/dev/kvm c 10 232" if self.kvm else "true"
        setup = f"""
            set -e
            mount -t overlay overlay -o lowerdir=/,upperdir={self.upper},workdir={self.base / "work"} {merged}
            mount --bind /proc {merged}/proc
            mount --bind {self.base / "cpuinfo"} {merged}/proc/cpuinfo
            mount -t tmpfs -o mode=755 tmpfs {merged}/dev
            for node in null zero random urandom; do
              touch {merged}/dev/$node; mount --bind /dev/$node {merged}/dev/$node
            done
            ln -s /proc/self/fd {merged}/dev/fd
            {kvm}
            mkdir -p {merged}{TEST_DIR}
            mount --bind {self.base / "km"} {merged}{TEST_DIR}
            exec chroot {merged} /usr/bin/env -i PATH={SANDBOX_PATH} HOME=/root LANG=C.UTF-8 \\
              bash -c {shlex.quote(command)}
        """
        completed = subprocess.run(
            ["unshare", "--mount", "--fork", "bash", "-c", setup],
            input=step.script_text if stdin is None else stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(completed.returncode, completed.stdout, completed.stderr, self.calls())

    # --- what the runs changed ----------------------------------------------------------------

    def path(self, absolute: str) -> Path:
        """Where a node path's new content is (the upper folder; unchanged files are not there)."""
        return self.upper / absolute.lstrip("/")

    def seed(self, absolute: str, content: str, mode: int = 0o644) -> None:
        """A file the node already has before the first run."""
        target = self.path(absolute)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)

    def changes(self) -> dict[str, tuple[str, int, float]]:
        """Every path the runs wrote or deleted: (kind and content digest, mode, mtime)."""
        found = {}
        for p in sorted(self.upper.rglob("*")):
            rel = "/" + str(p.relative_to(self.upper))
            if rel == TEST_DIR or rel.startswith(("/tmp/", "/dev/", "/proc/")):
                continue
            st = p.lstat()
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                found[rel] = ("deleted", 0, st.st_mtime)
            elif p.is_symlink():
                found[rel] = (f"-> {os.readlink(p)}", 0, st.st_mtime)
            elif p.is_file():
                found[rel] = (p.read_text(errors="replace"), stat.S_IMODE(st.st_mode), st.st_mtime)
        return found

    def files(self) -> dict[str, str]:
        return {path: content for path, (content, _, _) in self.changes().items()}


def require_sandbox() -> None:
    """Root, unshare and overlayfs; CI must have them, elsewhere the tests are skipped."""
    problem = None
    if os.geteuid() != 0:
        problem = "the node sandbox needs root (mount namespaces and overlayfs)"
    elif shutil.which("unshare") is None or shutil.which("chroot") is None:
        problem = "the node sandbox needs unshare and chroot (util-linux, coreutils)"
    elif "overlay" not in Path("/proc/filesystems").read_text():
        problem = "the node sandbox needs overlayfs"
    if problem:
        unavailable(problem)
