"""99-seal-image.sh, the node image builder's last step, run for real with plain bash as the program
sends it (components.node_image.seal_step: lib.sh + the script on stdin, its arguments on the
command line), against a scratch root file system laid out like a builder after the node steps:
the builder's own identity, keys, logs, caches and state beside what the node steps installed.

Checked on the whole tree (every path with its kind, mode and content hash): exactly what must go
is gone, everything else is byte-identical, a few logs are emptied in place, the manifest holds
exactly the rendered text; a second run leaves the same tree. A refused run (a bad root, path or
manifest) changes nothing; a run that dies midway leaves no manifest, old or new, and the builder's
SSH identity (removed last) in place for a second try. With a scratch
root the running system is never touched (systemctl is a stand-in that fails and records).

The live root (--root /) runs in the sandboxed node (tests/node_sandbox.py): the writers are
stopped before anything is removed, units the VM does not have are skipped, kubelet is disabled."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from node_sandbox import Sandbox, require_sandbox

from components.node_image import IMAGE_MANIFEST, seal_step
from components.node_provisioning import NodeStep

INPUTS = "0123456789abcdef" * 4
MANIFEST = f"inputs-hash={INPUTS}\nkubernetes-version=1.36.4\nkata-version=3.32.0\ncontainerd-version=2.3.4\n"
OLD_MANIFEST = f"inputs-hash={'f' * 64}\nkubernetes-version=1.36.3\n"
# containerd's image store: a blob named by its digest, and its metadata database.
BLOB = b"layer tarball bytes"
BLOB_PATH = (
    f"var/lib/containerd/io.containerd.content.v1.content/blobs/sha256/{hashlib.sha256(BLOB).hexdigest()}"
)

# What the node steps left on the builder, which every node needs: must stay byte for byte.
STAYS: dict[str, bytes | str] = {
    "usr/local/bin/containerd": "#!/bin/sh\necho containerd\n",
    "usr/local/bin/containerd-shim-runc-v2": "#!/bin/sh\necho shim\n",
    "usr/local/bin/ctr": "#!/bin/sh\necho ctr\n",
    "usr/local/sbin/runc": "#!/bin/sh\necho runc\n",
    "opt/kata/bin/kata-runtime": "#!/bin/sh\necho kata\n",
    "opt/kata/bin/containerd-shim-kata-v2": "#!/bin/sh\necho kata shim\n",
    "opt/kata/.kata-mesh-release": "1449ecea50bd91fa73a94648db195d18950fe869ba4b1f12d05f55f1fa7c1b01\n",
    "opt/kata/share/defaults/kata-containers/configuration-qemu.toml": "[hypervisor.qemu]\n",
    "opt/kata/share/defaults/kata-containers/config.d/50-kata-mesh-nested.toml": "[hypervisor.qemu]\n",
    "opt/cni/bin/bridge": "#!/bin/sh\necho bridge\n",
    "opt/cni/bin/host-local": "#!/bin/sh\necho host-local\n",
    "etc/containerd/config.toml": "version = 3\n",
    "etc/systemd/system/containerd.service": "[Service]\nExecStart=/usr/local/bin/containerd\n",
    "usr/bin/kubelet": "#!/bin/sh\necho kubelet\n",
    "usr/bin/kubeadm": "#!/bin/sh\necho kubeadm\n",
    "usr/bin/kubectl": "#!/bin/sh\necho kubectl\n",
    "usr/bin/crictl": "#!/bin/sh\necho crictl\n",
    "usr/sbin/nft": "#!/bin/sh\necho nft\n",
    "usr/lib/systemd/system/kubelet.service": "[Service]\nExecStart=/usr/bin/kubelet\n",
    "usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf": "[Service]\n",
    "etc/modules-load.d/kata-mesh.conf": "overlay\nbr_netfilter\nkvm_intel\n",
    "etc/sysctl.d/99-kata-mesh.conf": "net.ipv4.ip_forward=1\n",
    BLOB_PATH: BLOB,
    "var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db": b"\x00bolt\xff" * 64,
    "var/cache/kata-mesh/containerd-2.3.4-linux-amd64.tar.gz": b"\x1f\x8b tarball" * 32,
    "var/cache/kata-mesh/kata-static-3.32.0-amd64.tar.zst": b"(\xb5/\xfd zst" * 32,
    "etc/apt/sources.list.d/kubernetes.list": "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] "
    "https://pkgs.k8s.io/core:/stable:/v1.36/deb/ /\n",
    "etc/apt/keyrings/kubernetes-apt-keyring.gpg": b"\x99\x01\x0dkeyring",
    "etc/crictl.yaml": "runtime-endpoint: unix:///run/containerd/containerd.sock\n",
    "var/lib/kata-mesh/installed/containerd": "9d68969855fbf676cdb8ed758e420fb048d61f984f61de3e53eddfebe484d168\n",
    "var/lib/kata-mesh/installed/kubelet-restarted": "1.36.4\n",
    "var/lib/kata-mesh/installed/kubeadm-upgrade-node": "1.36.4\n",
    "var/lib/dpkg/status": "Package: kubelet\nStatus: install ok installed\n",
    "etc/ssh/sshd_config": "Include /etc/ssh/sshd_config.d/*.conf\n",
    "etc/ssh/sshd_config.d/50-cloud-init.conf": "PasswordAuthentication no\n",
    "etc/ssh/ssh_config": "Host *\n",
    "etc/passwd": "root:x:0:0:root:/root:/bin/bash\nubuntu:x:1000:1000::/home/ubuntu:/bin/bash\n",
    "etc/fstab": "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n",
    "root/.profile": "# root's profile\n",
    "home/ubuntu/.bashrc": "# ubuntu's bashrc\n",
    "home/ubuntu/.ssh/known_hosts": "github.com ssh-ed25519 AAAA\n",
    "var/cache/apt/archives/lock": "",
    "var/lib/apt/lists/lock": "",
}
EXECUTABLES = {p for p, c in STAYS.items() if isinstance(c, str) and c.startswith("#!")}
STAY_LINKS = {
    "usr/local/bin/kata-runtime": "/opt/kata/bin/kata-runtime",
    "usr/local/bin/containerd-shim-kata-v2": "/opt/kata/bin/containerd-shim-kata-v2",
    "opt/kata/share/defaults/kata-containers/configuration.toml": "configuration-qemu.toml",
    "etc/systemd/system/multi-user.target.wants/containerd.service": "/etc/systemd/system/containerd.service",
    # Ubuntu's: dbus's machine ID is the system's, which stays (emptied).
    "var/lib/dbus/machine-id": "/etc/machine-id",
    "var/log/README": "../../usr/share/doc/systemd/README.logs",
}
# Folders that stay, possibly emptied.
STAY_DIRS = (
    "var/lib/cloud",
    "var/log/journal",
    "var/log/containers",
    "var/lib/apt/lists/partial",
    "var/cache/apt/archives/partial",
    "tmp",
    "var/tmp",
    "etc/systemd/system/multi-user.target.wants",
    "root/.ssh",
    "home/ubuntu/.ssh",
)

# The builder's own: must go.
GOES: dict[str, bytes | str] = {
    IMAGE_MANIFEST.lstrip("/"): OLD_MANIFEST,
    "var/lib/cloud/instances/i-0123/obj.pkl": b"\x80\x04pickle",
    "var/lib/cloud/instances/i-0123/user-data.txt": "#cloud-config\nssh_keys: {}\n",
    "var/lib/cloud/instances/i-0123/sem/config_ssh": "",
    "var/lib/cloud/data/instance-id": "i-0123\n",
    "var/lib/cloud/data/result.json": "{}\n",
    "var/lib/cloud/.hidden-state": "x\n",
    "var/log/cloud-init.log": "cloud-init ran\n",
    "var/log/cloud-init-output.log": "cloud-init output\n",
    "etc/ssh/ssh_host_ed25519_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA builder\n",
    "etc/ssh/ssh_host_rsa_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    "etc/ssh/ssh_host_rsa_key.pub": "ssh-rsa AAAA builder\n",
    "etc/ssh/ssh_host_ecdsa_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    "etc/ssh/kata-mesh/ssh_host_ed25519_key": "-----BEGIN OPENSSH PRIVATE KEY----- pinned\n",
    "etc/ssh/kata-mesh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA pinned\n",
    "etc/ssh/sshd_config.d/00-kata-mesh-host-key.conf": "HostKey /etc/ssh/kata-mesh/ssh_host_ed25519_key\n",
    "root/.ssh/authorized_keys": "ssh-ed25519 AAAA root\n",
    "root/.bash_history": "sudo -i\n",
    "home/ubuntu/.ssh/authorized_keys": "ssh-ed25519 AAAA deployer\n",
    "home/ubuntu/.bash_history": "ls\n",
    "home/kata-mesh/.ssh/authorized_keys": "ssh-ed25519 AAAA stack key\n",
    "home/kata-mesh/.ssh/authorized_keys2": "ssh-ed25519 AAAA stack key\n",
    "home/kata-mesh/.zsh_history": ": 1:0;ls\n",
    "var/cache/apt/pkgcache.bin": b"\x00pkgcache",
    "var/cache/apt/srcpkgcache.bin": b"\x00srcpkgcache",
    "var/cache/apt/archives/kubelet_1.36.4-1.1_amd64.deb": b"!<arch>\nkubelet",
    "var/cache/apt/archives/jq_1.7.1_amd64.deb": b"!<arch>\njq",
    "var/cache/apt/archives/partial/socat_1.8_amd64.deb.FAILED": b"partial",
    "var/lib/apt/lists/archive.ubuntu.com_ubuntu_dists_noble_InRelease": "Origin: Ubuntu\n",
    "var/lib/apt/lists/archive.ubuntu.com_ubuntu_dists_noble_main_binary-amd64_Packages.lz4": b"\x04\x22M\x18",
    "var/lib/apt/lists/pkgs.k8s.io_core:_stable:_v1.36_deb_Packages": "Package: kubelet\n",
    "var/lib/apt/lists/auxfiles/readme": "x\n",
    "var/lib/apt/lists/partial/pkgs.k8s.io_InRelease.part": "half\n",
    "var/log/journal/3d1219c7c4c5404aaa1f6d2a48adfda4/system.journal": b"LPKSHHRH" * 16,
    "var/log/journal/3d1219c7c4c5404aaa1f6d2a48adfda4/user-1000.journal": b"LPKSHHRH" * 8,
    "var/log/syslog.1": "yesterday\n",
    "var/log/auth.log.2.gz": b"\x1f\x8bold",
    "var/log/apt/history.log.1.gz": b"\x1f\x8bolder",
    "tmp/kata-mesh-etcd-image.abc123/file": "x\n",
    "tmp/.hidden": "x\n",
    "tmp/.X11-unix/X0": "",
    "var/tmp/systemd-private-0123-chrony.service-abc/tmp/f": "x\n",
    "var/tmp/cloud-init/cloud-init-dhcp-abc/lease": "x\n",
    "var/lib/kata-mesh/rollout": f"{'a' * 64}\n",
    "var/lib/systemd/random-seed": b"\x12\x34random",
}
GOES_LINKS = {
    "var/lib/cloud/instance": "/var/lib/cloud/instances/i-0123",
    "etc/systemd/system/multi-user.target.wants/kubelet.service": "/usr/lib/systemd/system/kubelet.service",
    "tmp/dangling": "/nonexistent",
}
# Folders that go with everything in them; any other folder stays, emptied or not.
GOES_TREES = (
    "var/lib/cloud/instances",
    "var/lib/cloud/data",
    "var/lib/cloud/handlers",
    "etc/ssh/kata-mesh",
    "var/lib/apt/lists/auxfiles",
    "var/log/journal/3d1219c7c4c5404aaa1f6d2a48adfda4",
    "tmp/kata-mesh-etcd-image.abc123",
    "tmp/.X11-unix",
    "var/tmp/systemd-private-0123-chrony.service-abc",
    "var/tmp/cloud-init",
    "var/tmp/empty-dir",
)
# Emptied in place: same path, mode and kind, no content.
TRUNCATED: dict[str, bytes | str] = {
    "etc/machine-id": "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
    "var/log/syslog": "Nov 27 builder kernel: booted\n",
    "var/log/auth.log": "sshd: Accepted publickey for kata-mesh\n",
    "var/log/kern.log": "kernel\n",
    "var/log/dpkg.log": "install kubelet\n",
    "var/log/apt/history.log": "Commandline: apt-get install kubelet\n",
    "var/log/apt/term.log": "Setting up kubelet\n",
    "var/log/wtmp": b"\x07\x00\x00\x00login",
    "var/log/lastlog": b"\x00\x01lastlog",
    "var/log/private/secret.log": "0700 folder\n",
}


def write(path: Path, content: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)


def populate(root: Path) -> None:
    """A builder's root after the node steps: what stays, what goes, what is emptied."""
    for rel, content in STAYS.items():
        write(root / rel, content, 0o755 if rel in EXECUTABLES else 0o644)
    for rel, content in GOES.items():
        private = ("ssh_host_" in rel and not rel.endswith(".pub")) or "authorized_keys" in rel
        write(root / rel, content, 0o600 if private else 0o644)
    for rel, content in TRUNCATED.items():
        write(root / rel, content, 0o640 if rel.startswith("var/log/") else 0o444)
    (root / "var/log/private").chmod(0o700)
    for rel in (*STAY_DIRS, *GOES_TREES):
        (root / rel).mkdir(parents=True, exist_ok=True)
    for rel, target in {**STAY_LINKS, **GOES_LINKS}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)


def listing(root: Path) -> dict[str, tuple]:
    """Every path under root (links not followed): its kind, mode, and content hash or target."""
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            info = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                assert stat.S_ISREG(info.st_mode), rel
                found[rel] = (
                    "file",
                    stat.S_IMODE(info.st_mode),
                    hashlib.sha256(path.read_bytes()).hexdigest(),
                )
    return found


def expected_after(before: dict[str, tuple], manifest: bytes) -> dict[str, tuple]:
    """The tree a seal must leave: what goes, gone; what is emptied, empty; the manifest new; and
    everything else as it was."""

    def goes(rel: str) -> bool:
        return (
            rel in GOES or rel in GOES_LINKS or any(rel == t or rel.startswith(f"{t}/") for t in GOES_TREES)
        )

    after = {rel: entry for rel, entry in before.items() if not goes(rel)}
    empty = hashlib.sha256(b"").hexdigest()
    for rel in TRUNCATED:
        after[rel] = ("file", before[rel][1], empty)
    after[IMAGE_MANIFEST.lstrip("/")] = ("file", 0o644, hashlib.sha256(manifest).hexdigest())
    return after


def program_seal(root: str, manifest_text: str = MANIFEST, **changes: str) -> NodeStep:
    """The program's own seal step, with --root (and any other argument given) replaced."""
    step = seal_step(manifest_text)
    replaced = {"root": root, **{k.replace("_", "-"): v for k, v in changes.items()}}
    assert set(replaced) <= {k for k, _ in step.args}, replaced
    return dataclasses.replace(step, args=tuple((k, replaced.get(k, v)) for k, v in step.args))


@pytest.fixture
def standins(tmp_path: Path) -> Path:
    """systemctl (and a few more that must never run against a scratch root) that record their
    call and fail: a scratch root leaves the running system alone."""
    directory = tmp_path / "standins"
    directory.mkdir()
    for name in ("systemctl", "journalctl", "cloud-init", "apt-get", "shutdown"):
        path = directory / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >>"{tmp_path}/live-calls.log"\nexit 1\n')
        path.chmod(0o755)
    return directory


def run(step: NodeStep, standins: Path, cwd: Path | None = None, wrap: str | None = None):
    """Runs the step as the program does: its command line (without sudo), the script on stdin."""
    command = step.command_line.removeprefix("sudo -n ")
    if wrap is not None:
        command = wrap.format(command=shlex.quote(command))
    env = {**os.environ, "PATH": f"{standins}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", command], input=step.script_text, capture_output=True, text=True, env=env, cwd=cwd
    )


def live_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "live-calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def root(tmp_path: Path) -> Path:
    scratch = tmp_path / "root"
    populate(scratch)
    return scratch


def test_seal_removes_the_builders_own_keeps_the_nodes_and_writes_the_manifest_last(root, standins, tmp_path):
    host_machine_id = Path("/etc/machine-id").read_bytes() if Path("/etc/machine-id").exists() else None
    before = listing(root)
    result = run(program_seal(str(root)), standins)
    assert result.returncode == 0, result.stderr

    after = listing(root)
    assert after == expected_after(before, MANIFEST.encode())
    # The same, spelled out for the kinds of things that go and stay.
    manifest = root / IMAGE_MANIFEST.lstrip("/")
    assert manifest.read_bytes() == MANIFEST.encode()
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o644
    for gone in (
        "root/.ssh/authorized_keys",
        "home/ubuntu/.ssh/authorized_keys",
        "home/kata-mesh/.ssh/authorized_keys",
        "etc/ssh/ssh_host_ed25519_key",
        "etc/ssh/kata-mesh",
        "etc/ssh/sshd_config.d/00-kata-mesh-host-key.conf",
        "var/lib/cloud/instance",
        "var/lib/cloud/instances",
        "var/log/cloud-init.log",
        "var/lib/kata-mesh/rollout",
        "etc/systemd/system/multi-user.target.wants/kubelet.service",
        "var/cache/apt/pkgcache.bin",
        "var/lib/apt/lists/pkgs.k8s.io_core:_stable:_v1.36_deb_Packages",
        "var/log/journal/3d1219c7c4c5404aaa1f6d2a48adfda4",
        "root/.bash_history",
    ):
        assert not os.path.lexists(root / gone), gone
    assert (root / "etc/machine-id").is_file() and not (root / "etc/machine-id").is_symlink()
    assert (root / "etc/machine-id").stat().st_size == 0
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert (root / BLOB_PATH).read_bytes() == BLOB
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/containerd.service") == (
        "/etc/systemd/system/containerd.service"
    )
    assert sorted(p.name for p in (root / "var/lib/apt/lists").iterdir()) == ["lock", "partial"]
    assert list((root / "var/log/journal").iterdir()) == []
    assert list((root / "tmp").iterdir()) == [] and list((root / "var/tmp").iterdir()) == []
    assert not list(manifest.parent.glob("*.new"))

    # A scratch root: nothing asked of the running system, whose own machine ID is untouched.
    assert live_calls(tmp_path) == []
    if host_machine_id is not None:
        assert Path("/etc/machine-id").read_bytes() == host_machine_id
    assert f"sealed {root}: wrote {manifest} (inputs-hash={INPUTS})" in result.stderr


def test_a_second_seal_leaves_the_same_tree(root, standins, tmp_path):
    assert run(program_seal(str(root)), standins).returncode == 0
    first = listing(root)
    second = run(program_seal(str(root)), standins)
    assert second.returncode == 0, second.stderr
    assert listing(root) == first
    assert live_calls(tmp_path) == []


def test_the_manifest_is_written_byte_for_byte_and_replaces_another(root, standins):
    # Whatever the program renders, without a final newline too: the file is exactly that.
    text = f"inputs-hash={INPUTS}\nkata-version=3.32.0"
    result = run(program_seal(str(root), text), standins)
    assert result.returncode == 0, result.stderr
    assert (root / IMAGE_MANIFEST.lstrip("/")).read_bytes() == text.encode()


def test_a_regular_dbus_machine_id_goes_and_a_linked_machine_id_becomes_an_empty_file(tmp_path, standins):
    root = tmp_path / "other"
    write(root / "var/lib/dbus/machine-id", "3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").symlink_to("/var/lib/dbus/machine-id")
    result = run(program_seal(str(root)), standins)
    assert result.returncode == 0, result.stderr
    assert not os.path.lexists(root / "var/lib/dbus/machine-id")
    machine_id = root / "etc/machine-id"
    assert not machine_id.is_symlink() and machine_id.is_file() and machine_id.stat().st_size == 0
    # A bare root (no var/log, no apt, no homes) is sealed all the same.
    assert (root / IMAGE_MANIFEST.lstrip("/")).read_bytes() == MANIFEST.encode()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"root": "root"}, "--root must be an absolute path, not: root"),
        ({"root": "MISSING"}, "--root MISSING is no directory"),
        ({"root": "ROOT/../root"}, "--root must not hold . or .. parts: ROOT/../root"),
        (
            {"manifest": "etc/kata-mesh/node-image"},
            "not an absolute path in a folder (taken inside --root): etc/kata-mesh/node-image",
        ),
        (
            {"manifest": "/etc/../../outside"},
            "not an absolute path in a folder (taken inside --root): /etc/../../outside",
        ),
        ({"host_key_dir": "/etc"}, "not an absolute path in a folder (taken inside --root): /etc"),
        (
            {"rollout_marker": "/var/lib/kata-mesh/"},
            "not an absolute path in a folder (taken inside --root): /var/lib/kata-mesh/",
        ),
        ({"manifest": "/etc/kata-mesh"}, "ROOT/etc/kata-mesh is a directory, not a manifest"),
        ({"manifest_b64": "not base64!"}, "--manifest-b64 is not base64"),
        (
            {"manifest_b64": base64.b64encode(b"kubernetes-version=1.36.4\n").decode()},
            "the manifest must start with inputs-hash=<sha256>, not: kubernetes-version=1.36.4",
        ),
        (
            {"manifest_b64": base64.b64encode(f"inputs-hash={INPUTS}\nnot a setting\n".encode()).decode()},
            "the manifest has a line that is not key=value: not a setting",
        ),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_removed(root, standins, tmp_path, changes, message):
    def fill(value: str) -> str:
        return value.replace("ROOT", str(root)).replace("MISSING", str(tmp_path / "missing"))

    before = listing(root)
    step = program_seal(fill(changes.pop("root", "ROOT")), **{k: fill(v) for k, v in changes.items()})
    # Relative paths would name the populated root from here.
    result = run(step, standins, cwd=tmp_path)
    assert result.returncode == 1
    assert f"[kata-mesh] ERROR: {fill(message)}" in result.stderr
    assert listing(root) == before
    assert live_calls(tmp_path) == []


def test_a_root_with_a_link_out_of_it_is_refused_before_anything_is_removed(root, standins, tmp_path):
    outside = tmp_path / "outside-home"
    write(outside / "someone/.ssh/authorized_keys", "ssh-ed25519 AAAA outside\n")
    for child in (root / "home").iterdir():
        for path in sorted(child.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() or path.is_symlink() else path.rmdir()
        child.rmdir()
    (root / "home").rmdir()
    (root / "home").symlink_to(outside)
    before = listing(root)
    result = run(program_seal(str(root)), standins)
    assert result.returncode == 1
    assert f"{root}/home is a link; refusing to follow it out of --root" in result.stderr
    assert listing(root) == before
    assert (outside / "someone/.ssh/authorized_keys").exists()


def test_a_seal_that_dies_midway_leaves_no_manifest_and_a_rerun_completes(root, standins, tmp_path):
    """var/tmp cannot be emptied (read-only): the seal dies there, after removing the old manifest
    and what comes before var/tmp, before the rollout marker, the SSH identity and the new
    manifest."""
    stuck = root / "var/tmp"
    if os.geteuid() == 0:
        # Root may write anywhere, but not on a read-only mount (a private mount namespace).
        wrap = (
            f"unshare --mount --propagation private bash -c "
            f"'mount --bind {stuck} {stuck} && mount -o remount,bind,ro {stuck} && exec bash -c \"$0\"' {{command}}"
        )
    else:
        stuck.chmod(0o555)
        wrap = None
    before = listing(root)
    try:
        result = run(program_seal(str(root)), standins, wrap=wrap)
    finally:
        stuck.chmod(0o755)
    assert result.returncode != 0
    manifest = root / IMAGE_MANIFEST.lstrip("/")
    assert not manifest.exists(), "the old manifest survived a seal that failed"
    assert not list(manifest.parent.glob("*")), "a new or staged manifest was left"
    # Removed before var/tmp: gone; after it: still there, the SSH identity among them, so that the
    # builder can still be reached to run the seal again.
    assert not (root / "var/lib/cloud/instances").exists()
    assert not (root / "var/lib/apt/lists/pkgs.k8s.io_core:_stable:_v1.36_deb_Packages").exists()
    assert (root / "var/tmp/cloud-init/cloud-init-dhcp-abc/lease").exists()
    assert (root / "var/lib/kata-mesh/rollout").exists()
    assert (root / "home/ubuntu/.ssh/authorized_keys").exists()
    assert (root / "etc/ssh/kata-mesh/ssh_host_ed25519_key").exists()
    assert (root / "etc/ssh/sshd_config.d/00-kata-mesh-host-key.conf").exists()

    rerun = run(program_seal(str(root)), standins)
    assert rerun.returncode == 0, rerun.stderr
    assert listing(root) == expected_after(before, MANIFEST.encode())


# --- the live root, in the sandboxed node -----------------------------------------------------------

# systemctl on a VM with the kubelet, containerd and the guest agent, not its newer manager unit:
# `show -p LoadState --value UNIT` says whether a unit exists; `stop` records whether the old
# manifest and an authorized_keys file were still there (nothing may be removed before the stops).
SYSTEMCTL = r"""if [[ ${1:-} == show ]]; then
  unit=${*: -1}
  if grep -qxF -- "$unit" "$state/units" 2>/dev/null; then echo loaded; else echo not-found; fi
  exit 0
fi
if [[ ${1:-} == stop ]]; then
  grep -qxF -- "$2" "$state/stop-fails" 2>/dev/null && exit 1
  [[ -e /etc/kata-mesh/node-image ]] && m=present || m=gone
  [[ -e /root/.ssh/authorized_keys ]] && k=present || k=gone
  echo "stop $2: manifest $m, authorized_keys $k" >>"$state/stops"
fi
exit 0
"""
# The sandbox is this machine's root under an overlay: the seal's /tmp and /var/tmp are fresh
# tmpfs mounts of its own (the mount namespace is the sandbox's), so it never walks this
# machine's /tmp (where the sandbox itself lives).
PRIVATE_TMP = "mount -t tmpfs tmpfs /tmp\nmount -t tmpfs tmpfs /var/tmp\n"


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    require_sandbox()
    sandbox = Sandbox(tmp_path / "node")
    sandbox.behaviour["systemctl"] = SYSTEMCTL
    sandbox.set_state("units", "kubelet.service\ncontainerd.service\ngoogle-guest-agent.service\n")
    sandbox.seed(IMAGE_MANIFEST, OLD_MANIFEST)
    sandbox.seed("/root/.ssh/authorized_keys", "ssh-ed25519 AAAA root\n", 0o600)
    sandbox.seed("/var/lib/kata-mesh/rollout", f"{'a' * 64}\n")
    sandbox.seed("/var/lib/kata-mesh/installed/containerd", "sha\n")
    sandbox.seed("/etc/ssh/kata-mesh/ssh_host_ed25519_key", "pinned\n", 0o600)
    wants = sandbox.path("/etc/systemd/system/multi-user.target.wants")
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "kubelet.service").symlink_to("/usr/lib/systemd/system/kubelet.service")
    (wants / "containerd.service").symlink_to("/etc/systemd/system/containerd.service")
    return sandbox


def test_a_live_seal_stops_the_writers_first_skips_missing_units_and_disables_kubelet(node):
    result = node.run(program_seal("/"), stdin=PRIVATE_TMP + program_seal("/").script_text)
    assert result.returncode == 0, result.stderr
    stops = (node.state / "stops").read_text().splitlines()
    # Every stop came before the first removal; the guest agent's manager unit is not on this VM.
    assert stops == [
        f"stop {unit}.service: manifest present, authorized_keys present"
        for unit in ("kubelet", "containerd", "google-guest-agent")
    ]
    systemctl = [c for c in result.calls if c.startswith("systemctl ") and not c.startswith("systemctl show")]
    assert systemctl == [
        "systemctl stop kubelet.service",
        "systemctl stop containerd.service",
        "systemctl stop google-guest-agent.service",
        "systemctl disable --now --quiet kubelet.service",
    ]
    assert "systemctl show -p LoadState --value google-guest-agent-manager.service" in result.calls
    files = node.files()
    assert files[IMAGE_MANIFEST] == MANIFEST
    for gone in (
        "/root/.ssh/authorized_keys",
        "/var/lib/kata-mesh/rollout",
        "/etc/ssh/kata-mesh",
        "/etc/systemd/system/multi-user.target.wants/kubelet.service",
    ):
        assert not os.path.lexists(node.path(gone)) or files.get(gone) == "deleted", gone
    assert files["/etc/systemd/system/multi-user.target.wants/containerd.service"] == (
        "-> /etc/systemd/system/containerd.service"
    )
    assert files["/var/lib/kata-mesh/installed/containerd"] == "sha\n"


def test_a_live_seal_that_cannot_stop_a_writer_removes_nothing(node):
    node.set_state("stop-fails", "containerd.service\n")
    before = node.changes()
    result = node.run(program_seal("/"), stdin=PRIVATE_TMP + program_seal("/").script_text)
    assert result.returncode == 1
    assert "[kata-mesh] ERROR: could not stop containerd" in result.stderr
    assert node.changes() == before
    assert "systemctl disable --now --quiet kubelet.service" not in result.calls


@pytest.mark.parametrize(
    ("root", "message"),
    [
        (
            "/srv/kata-mesh-root",
            "--root /srv/kata-mesh-root is the running system's root: pass --root / to seal it",
        ),
        ("/srv/..", "--root must not hold . or .. parts: /srv/.."),
        ("//", None),
    ],
)
def test_a_root_that_leads_to_the_running_systems_is_refused_unless_named_slash(node, root, message):
    link = node.path("/srv/kata-mesh-root")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("/")
    before = node.changes()
    result = node.run(program_seal(root), stdin=PRIVATE_TMP + program_seal(root).script_text)
    if message is None:
        # "//" names the root too: sealed as the live system, its writers stopped first.
        assert result.returncode == 0, result.stderr
        assert "systemctl stop kubelet.service" in result.calls
        return
    assert result.returncode == 1
    assert f"[kata-mesh] ERROR: {message}" in result.stderr
    assert result.calls == []
    assert node.changes() == before
