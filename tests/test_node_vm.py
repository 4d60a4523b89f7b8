"""The node steps on a real Linux: a Debian bookworm VM under QEMU software emulation (tests/vm.py,
built by tests/vm/build.sh) with real systemd, kernel modules, sysctls and cgroup v2. The
prerequisites, containerd and Kata steps run in it for real over real SSH, exactly as the program
sends them (command line, script on stdin), twice, then the VM reboots. The release files are
served from this test's own HTTP server on 127.0.0.1, which the guest reaches at 10.0.2.2; they are
Debian's binaries repacked in the upstream layouts (and a Kata-shaped tarball), with their real
sha256. The guest has no default route: it can reach the test's server and nothing else.

Every test here is marked `vm`: `pytest -m vm` runs them (a plain `pytest` leaves them out)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from seed import SEED_LINKS, SEED_MODULES, SEED_SYSCTLS
from test_node_config import assert_both_runtimes
from test_node_scripts import CAN_CREATE, CAPABLE, Server, fake_kata_release
from vm import CONTAINERD2_BIN, DEBS, HOST_FROM_GUEST, VM, require_vm

from components import node_config, versions
from components.node_provisioning import (
    CACHE_DIR,
    KERNEL_MODULES,
    NodeStep,
    ProvisioningSpec,
    node_steps,
)

pytestmark = pytest.mark.vm

STEPS = ("prerequisites", "containerd", "kata")
CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")
KATA_MARKER = "kata-mesh-vm-test"
IMAGE = "docker.io/kata-mesh/busybox:vm-test"
SOCKET = node_config.CONTAINERD_SOCKET.removeprefix("unix://")
CTR = f"/usr/local/bin/ctr --address {SOCKET}"
# Everything the three steps write; the second run must leave all of it as it was.
WRITTEN = (
    "/etc/fstab",
    "/etc/modules-load.d",
    "/etc/sysctl.d",
    "/etc/systemd/system",
    "/etc/containerd",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/opt/cni",
    "/opt/kata",
    "/var/lib/kata-mesh",
    CACHE_DIR,
)


# --- Release files in the upstream layouts, from Debian's binaries -----------------------------


def _tar_entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o755, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, mode, size
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = int(time.time())
    return info


def _add_file(tar: tarfile.TarFile, name: str, source: Path) -> None:
    with source.open("rb") as data:
        tar.addfile(_tar_entry(name, size=source.stat().st_size), data)


def containerd_release(path: Path) -> None:
    """Like containerd-X-linux-amd64.tar.gz (unpacked into /usr/local): bin/containerd, bin/ctr,
    bin/containerd-shim-runc-v2; here Debian sid's containerd 2.x binaries."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.addfile(_tar_entry("bin", tarfile.DIRTYPE))
        for name in CONTAINERD_BINARIES:
            _add_file(tar, f"bin/{name}", CONTAINERD2_BIN / name)


def cni_release(path: Path) -> None:
    """Like cni-plugins-linux-amd64-vX.tgz (unpacked into /opt/cni/bin): ./bridge, ./loopback, ...;
    here Debian bookworm's containernetworking-plugins."""
    plugins = sorted((DEBS / "containernetworking-plugins" / "usr" / "lib" / "cni").iterdir())
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.addfile(_tar_entry(".", tarfile.DIRTYPE))
        for plugin in plugins:
            _add_file(tar, f"./{plugin.name}", plugin)


def _blob(blobs: dict[str, bytes], data: bytes, media_type: str) -> dict[str, object]:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def busybox_image(path: Path) -> None:
    """An OCI image archive for `ctr image import`: one layer with Debian's static busybox as
    /bin/busybox and /bin/sh, so containers run without any registry."""
    busybox = DEBS / "busybox-static" / "bin" / "busybox"
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        tar.addfile(_tar_entry("bin", tarfile.DIRTYPE))
        _add_file(tar, "bin/busybox", busybox)
        link = _tar_entry("bin/sh", tarfile.SYMTYPE, mode=0o777)
        link.linkname = "busybox"
        tar.addfile(link)
    blobs: dict[str, bytes] = {}
    layer_desc = _blob(blobs, layer.getvalue(), "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = _blob(blobs, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc = _blob(blobs, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                **manifest_desc,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": IMAGE,
                    "org.opencontainers.image.ref.name": "vm-test",
                },
            }
        ],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
        **{f"blobs/sha256/{digest.removeprefix('sha256:')}": data for digest, data in blobs.items()},
    }
    with tarfile.open(path, "w") as tar:
        tar.addfile(_tar_entry("blobs", tarfile.DIRTYPE))
        tar.addfile(_tar_entry("blobs/sha256", tarfile.DIRTYPE))
        for name, data in files.items():
            tar.addfile(_tar_entry(name, mode=0o644, size=len(data)), io.BytesIO(data))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Release:
    server: Server
    steps: dict[str, NodeStep]
    image: Path

    def requests(self) -> list[str]:
        return list(self.server.requests)


def _replace_args(step: NodeStep, **values: str) -> NodeStep:
    names = {key.replace("_", "-"): value for key, value in values.items()}
    assert set(names) <= {key for key, _ in step.args}, names
    return dataclasses.replace(step, args=tuple((key, names.get(key, value)) for key, value in step.args))


@pytest.fixture(scope="session")
def release(tmp_path_factory) -> Iterator[Release]:
    """The program's own steps (node_steps), pointed at this test's server through the program's
    artifact mirror setting, with the repacked files' real checksums; nothing else changed."""
    require_vm()
    served = tmp_path_factory.mktemp("served")
    containerd_release(served / versions.CONTAINERD.filename)
    shutil.copyfile(DEBS / "runc" / "usr" / "sbin" / "runc", served / versions.RUNC.filename)
    cni_release(served / versions.CNI_PLUGINS.filename)
    kata = versions.KATA_RELEASES["3.32.0"]
    kata = dataclasses.replace(kata, sha256=fake_kata_release(served / kata.filename, KATA_MARKER))
    image = tmp_path_factory.mktemp("image") / "busybox-oci.tar"
    busybox_image(image)

    server = Server(served)
    mirror = server.url.replace("127.0.0.1", HOST_FROM_GUEST)
    steps = {step.name: step for step in node_steps(ProvisioningSpec("1.36.4", kata, mirror))}
    steps["containerd"] = _replace_args(
        steps["containerd"],
        containerd_sha256=sha256_of(served / versions.CONTAINERD.filename),
        runc_sha256=sha256_of(served / versions.RUNC.filename),
        cni_sha256=sha256_of(served / versions.CNI_PLUGINS.filename),
    )
    yield Release(server, steps, image)
    server.httpd.shutdown()


@pytest.fixture(scope="session")
def vm(tmp_path_factory, request) -> Iterator[VM]:
    """One VM for the whole session: the tests below share its state, in file order."""
    require_vm()
    machine = VM(tmp_path_factory.mktemp("vm"))
    try:
        machine.boot()
        yield machine
    finally:
        machine.shutdown()
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None and machine.timings:
            times = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in machine.timings.items())
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\ntest VM timings: {times}")


def test_the_guest_reaches_the_host_and_nothing_else(vm: VM):
    """No default route and no DNS: whatever a step tried to fetch from elsewhere would fail at once
    (and no test sends a packet beyond this machine)."""
    routes = vm.ssh("ip -4 route show").stdout.splitlines()
    assert routes and all(route.startswith("10.0.2.0/24 ") for route in routes), routes
    assert vm.ssh("ip -6 route show default").stdout == ""
    assert "nameserver" not in vm.ssh("cat /etc/resolv.conf").stdout


# --- What the emulated CPU lacks ----------------------------------------------------------------


def test_prerequisites_as_sent_fail_on_a_cpu_without_vtx(vm: VM, release: Release):
    """The program's prerequisites step, unchanged, on TCG's emulated CPU: it fails in its VT-x
    check, on a real kernel, with its own message, before writing anything.

    The CPU, as measured: QEMU's `max` model under TCG is an AMD CPU (AuthenticAMD) with svm and no
    vmx; udev loads kvm_amd for it at boot, so /dev/kvm is real, while kvm_intel cannot load."""
    assert vm.ssh("findmnt --noheadings /proc/cpuinfo", check=False).stdout == "", (
        "the VT-x fake is already in place: this test must run before the others"
    )
    flags = vm.ssh("grep -m1 '^flags' /proc/cpuinfo").stdout.split()
    assert "vmx" not in flags and "svm" in flags
    assert "kvm_amd" in vm.ssh("cat /proc/modules").stdout
    assert vm.ssh("test -c /dev/kvm", check=False).returncode == 0

    result = vm.run_step(release.steps["prerequisites"], "prerequisites (no VT-x)")
    assert result.returncode == 1, result.stderr
    assert "[kata-mesh] ERROR: this CPU exposes no VT-x (vmx flag missing)" in result.stderr
    assert "enableNestedVirtualization" in result.stderr
    absent = vm.ssh("ls /etc/modules-load.d/kata-mesh.conf /etc/sysctl.d/99-kata-mesh.conf", check=False)
    assert absent.returncode != 0 and absent.stdout == ""

    # Why the later runs load kvm_amd in its place: kvm_intel cannot load on this CPU. (With
    # kvm_amd loaded, the kernel refuses it with EEXIST, which modprobe reports as success.)
    vm.sudo("modprobe kvm_intel", check=False)
    assert "kvm_intel" not in vm.ssh("cat /proc/modules").stdout


# --- The first run, for real ---------------------------------------------------------------------

# Gives the guest the flag the prerequisites step checks for, without touching the step: a copy
# of /proc/cpuinfo with `vmx` added to every flags line, bind-mounted over /proc/cpuinfo. Gone
# after a reboot (/run is a tmpfs, the mount is not persisted).
FAKE_VMX = r"""
set -euo pipefail
sed -E 's/^(flags[[:space:]]*:)/\1 vmx/' /proc/cpuinfo >/run/kata-mesh-test-cpuinfo
mount --bind /run/kata-mesh-test-cpuinfo /proc/cpuinfo
"""

# A swap file in use and in /etc/fstab: the prerequisites step must turn it off for good.
SWAP = """
set -euo pipefail
fallocate -l 32M /swapfile
chmod 0600 /swapfile
mkswap --quiet /swapfile
swapon /swapfile
echo '/swapfile none swap sw 0 0' >>/etc/fstab
"""


# The program's modules, with this CPU's KVM module in place of kvm_intel (what the step is given),
# and what the test expects from the seed's list (REFERENCE 4 and 6), with the same swap.
MODULES = tuple("kvm_amd" if module == "kvm_intel" else module for module in KERNEL_MODULES)
EXPECTED_MODULES = ["kvm_amd" if module == "kvm_intel" else module for module in SEED_MODULES]


@dataclass
class FirstRun:
    results: dict[str, subprocess.CompletedProcess[str]]
    requests: list[str]
    steps: dict[str, NodeStep]


@pytest.fixture(scope="session")
def first_run(vm: VM, release: Release) -> FirstRun:
    """The three steps, each as the program sends it, on a guest with a swap file in use.

    Faked, and only this, because the emulated CPU has no VT-x: (1) /proc/cpuinfo is replaced by a
    copy with `vmx` added to its flags (a bind mount), and (2) the prerequisites step gets the
    program's modules with kvm_intel replaced by kvm_amd, the KVM module of this AMD (svm) CPU:
    kvm_intel cannot load on it, and with kvm_amd loaded `modprobe kvm_intel` exits 0 without
    loading it, so keeping it would pass for the wrong reason. /dev/kvm is not faked: kvm_amd
    makes a real one. Every other argument is the program's own; the URLs are the program's
    artifact mirror setting pointed at the test's server, the checksums the served files' own.
    """
    # The guest cannot reach a package mirror: a node package the image lacks would have the step
    # retry apt-get update for minutes before failing.
    packages = dict(release.steps["prerequisites"].args)["packages"].split()
    query = vm.ssh(f"dpkg-query -W -f '${{Package}} ${{Status}}\\n' {' '.join(packages)}", check=False)
    installed = {line.split()[0] for line in query.stdout.splitlines() if line.endswith(" installed")}
    if missing := sorted(set(packages) - installed):
        pytest.fail(f"the test VM image lacks node packages {missing}: add them to tests/vm/build.sh")
    steps = dict(release.steps)
    steps["prerequisites"] = _replace_args(steps["prerequisites"], modules=" ".join(MODULES))
    vm.sudo(SWAP)
    vm.sudo(FAKE_VMX)
    results = {name: vm.run_step(steps[name]) for name in STEPS}
    return FirstRun(results, release.requests(), steps)


def _ok(run: FirstRun | SecondRun, name: str) -> str:
    """The step's log (stderr), once it is known to have succeeded."""
    result = run.results[name]
    assert result.returncode == 0, f"{name} failed (exit {result.returncode}):\n{result.stderr}"
    return result.stderr


def test_prerequisites_load_modules_set_sysctls_and_turn_swap_off(vm: VM, first_run: FirstRun):
    log = _ok(first_run, "prerequisites")
    # Every node package was already there: the step ran no apt (the guest could not reach one).
    assert log.splitlines() == [
        "[kata-mesh] commented out swap in /etc/fstab",
        "[kata-mesh] wrote /etc/modules-load.d/kata-mesh.conf",
        "[kata-mesh] wrote /etc/sysctl.d/99-kata-mesh.conf",
        "[kata-mesh] prerequisites in place",
    ]

    loaded = {line.split()[0] for line in vm.ssh("lsmod").stdout.splitlines()[1:]}
    assert set(EXPECTED_MODULES) <= loaded
    assert vm.ssh("cat /etc/modules-load.d/kata-mesh.conf").stdout.split() == EXPECTED_MODULES
    written = vm.ssh("cat /etc/sysctl.d/99-kata-mesh.conf").stdout.split()
    assert dict(line.split("=") for line in written) == SEED_SYSCTLS
    for key, value in SEED_SYSCTLS.items():
        assert vm.ssh(f"/sbin/sysctl -n {key}").stdout.strip() == value, key
    assert vm.ssh("tail -n +2 /proc/swaps").stdout == ""
    assert "# /swapfile none swap sw 0 0" in vm.ssh("cat /etc/fstab").stdout.splitlines()
    assert vm.ssh("test -c /dev/kvm", check=False).returncode == 0


def test_containerd_runs_under_systemd_with_the_rendered_config(vm: VM, first_run: FirstRun):
    log = _ok(first_run, "containerd")
    args = dict(first_run.steps["containerd"].args)
    assert log.splitlines() == [
        f"[kata-mesh] downloading {args['containerd-url']}",
        f"[kata-mesh] downloading {args['runc-url']}",
        f"[kata-mesh] downloading {args['cni-url']}",
        "[kata-mesh] wrote /etc/systemd/system/containerd.service",
        "[kata-mesh] wrote /etc/containerd/config.toml",
        "[kata-mesh] containerd ready",
    ]
    assert vm.ssh("systemctl is-active containerd").stdout.strip() == "active"
    assert vm.ssh("systemctl is-enabled containerd").stdout.strip() == "enabled"
    rendered = node_config.render_containerd_config(2)
    assert vm.ssh("cat /etc/containerd/config.toml").stdout == rendered.rstrip("\n") + "\n"
    unit = vm.ssh("cat /etc/systemd/system/containerd.service").stdout
    assert unit == node_config.render_containerd_unit().rstrip("\n") + "\n"
    main_pid = vm.ssh("systemctl show -p MainPID --value containerd").stdout.strip()
    # The running daemon is the release's binary with its default config path, i.e. this file.
    assert vm.sudo(f"readlink /proc/{main_pid}/exe").stdout.strip() == "/usr/local/bin/containerd"
    assert vm.sudo(f"tr '\\0' ' ' </proc/{main_pid}/cmdline").stdout.split() == ["/usr/local/bin/containerd"]
    for name in CONTAINERD_BINARIES:
        local = sha256_of(CONTAINERD2_BIN / name)
        assert vm.ssh(f"sha256sum /usr/local/bin/{name}").stdout.split()[0] == local, name
    runc = sha256_of(DEBS / "runc" / "usr" / "sbin" / "runc")
    assert vm.ssh("sha256sum /usr/local/sbin/runc").stdout.split()[0] == runc
    cni = sorted(p.name for p in (DEBS / "containernetworking-plugins" / "usr" / "lib" / "cni").iterdir())
    assert vm.ssh("ls /opt/cni/bin").stdout.split() == cni

    # The CRI runtime plugin loaded in the running daemon (it would not with a config it rejects),
    # with the two runtimes as rendered.
    plugins = vm.sudo(f"{CTR} plugins ls").stdout
    assert any(
        line.split()[:2] == ["io.containerd.cri.v1", "runtime"] and line.split()[-1] == "ok"
        for line in plugins.splitlines()
    ), plugins
    assert_running_cri_runtimes(vm)


def assert_running_cri_runtimes(vm: VM) -> None:
    """The CRI config the running daemon logged as it started ("starting cri plugin"): runc by
    default with systemd cgroups, and kata beside it, as the program rendered them."""
    invocation = vm.ssh("systemctl show -p InvocationID --value containerd").stdout.strip()
    journal = vm.sudo(f"journalctl -o cat _SYSTEMD_INVOCATION_ID={invocation}").stdout
    line = next(line for line in journal.splitlines() if 'msg="starting cri plugin"' in line)
    quoted = re.search(r' config="((?:[^"\\]|\\.)*)"', line)
    assert quoted, line
    config = json.loads(json.loads(f'"{quoted.group(1)}"'))["containerd"]
    assert config["defaultRuntimeName"] == "runc"
    runc, kata = config["runtimes"]["runc"], config["runtimes"]["kata"]
    assert runc["runtimeType"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is True
    assert kata["runtimeType"] == "io.containerd.kata.v2"
    assert kata["privileged_without_host_devices"] is True
    assert not kata.get("PodAnnotations"), "no pod annotation reaches Kata"
    assert kata["options"] == {"ConfigPath": node_config.KATA_CONFIG_PATH}


def test_config_dump_lists_runc_with_systemd_cgroups_and_kata(vm: VM, first_run: FirstRun):
    _ok(first_run, "containerd")
    dump = tomllib.loads(vm.sudo("/usr/local/bin/containerd config dump").stdout)
    assert dump["version"] == 3
    assert_both_runtimes(dump["plugins"]["io.containerd.cri.v1.runtime"]["containerd"])


def test_a_container_runs_with_runc_in_a_systemd_slice(vm: VM, release: Release, first_run: FirstRun):
    """A busybox image imported from an archive (no registry), run by the release's runc with the
    systemd cgroup driver: the container's cgroup is a systemd scope under system.slice."""
    _ok(first_run, "containerd")
    vm.ssh("cat >/tmp/busybox-oci.tar", input=release.image.read_bytes())
    vm.sudo(f"{CTR} image import /tmp/busybox-oci.tar")
    hello = vm.sudo(
        f"{CTR} run --rm --runc-systemd-cgroup --cgroup system.slice:kata-mesh:hello {IMAGE} hello"
        " /bin/busybox echo hello from runc"
    )
    assert hello.stdout.strip() == "hello from runc"

    vm.sudo(
        f"{CTR} run -d --runc-systemd-cgroup --cgroup system.slice:kata-mesh:sleeper {IMAGE} sleeper"
        " /bin/busybox sleep 600"
    )
    try:
        tasks = vm.sudo(f"{CTR} task ls").stdout.splitlines()
        pid = next(line.split()[1] for line in tasks if line.split()[0] == "sleeper")
        assert vm.ssh(f"cat /proc/{pid}/cgroup").stdout.strip() == "0::/system.slice/kata-mesh-sleeper.scope"
        assert vm.ssh("systemctl is-active kata-mesh-sleeper.scope").stdout.strip() == "active"
        state = json.loads(
            vm.sudo("/usr/local/sbin/runc --root /run/containerd/runc/default state sleeper").stdout
        )
        assert state["status"] == "running" and str(state["pid"]) == pid
        shim = vm.sudo(f"readlink /proc/$(ps -o ppid= -p {pid} | tr -d ' ')/exe").stdout.strip()
        assert shim == "/usr/local/bin/containerd-shim-runc-v2"
    finally:
        vm.sudo(
            f"{CTR} task kill -s KILL sleeper; sleep 1; {CTR} task delete sleeper; {CTR} container delete sleeper"
        )


def test_kata_installs_its_tree_links_and_dropin(vm: VM, first_run: FirstRun):
    log = _ok(first_run, "kata")
    prefix = node_config.KATA_PREFIX
    dropin = f"{prefix}/share/defaults/kata-containers/config.d/{node_config.KATA_DROPIN_NAME}"
    assert log.splitlines() == [
        f"[kata-mesh] downloading {dict(first_run.steps['kata'].args)['kata-url']}",
        f"[kata-mesh] installed Kata into {prefix}",
        *(f"[kata-mesh] linked /usr/local/bin/{name}" for name in SEED_LINKS),
        f"[kata-mesh] wrote {dropin}",
        "[kata-mesh] kata-runtime check passed",
    ]
    assert vm.ssh(f"cat {prefix}/only-in-{KATA_MARKER}").stdout == KATA_MARKER
    for name in SEED_LINKS:
        assert vm.ssh(f"readlink /usr/local/bin/{name}").stdout.strip() == f"{prefix}/bin/{name}"
    assert vm.ssh(f"cat {dropin}").stdout == node_config.render_kata_dropin().rstrip("\n") + "\n"
    report = vm.sudo("kata-runtime check --no-network-checks").stdout
    assert CAPABLE in report and CAN_CREATE in report


# --- The second run changes nothing; a reboot keeps it all -------------------------------------

# Every file and link the steps write, with its inode, mtime and ctime (a file unpacked again
# from the same tarball gets its old mtime back, but a new inode and ctime) and its sha256;
# directories by mode only, as a step writes each file through a temporary file beside it, so a
# directory's mtime moves even when no file in it changes; and containerd's process.
SNAPSHOT = f"""
set -euo pipefail
find {" ".join(WRITTEN)} \\( -type d -printf '%p %y %m\\n' \\) -o -printf '%p %y %m %i %T@ %C@ %l\\n' | sort
find {" ".join(WRITTEN)} -type f -print0 | sort -z | xargs -0 sha256sum
systemctl show -p MainPID -p ExecMainStartTimestamp -p ActiveEnterTimestamp -p NRestarts containerd
"""


@dataclass
class SecondRun:
    results: dict[str, subprocess.CompletedProcess[str]]
    requests: list[str]
    before: str
    after: str


@pytest.fixture(scope="session")
def second_run(vm: VM, release: Release, first_run: FirstRun) -> SecondRun:
    for name in STEPS:
        _ok(first_run, name)
    before = vm.sudo(SNAPSHOT).stdout
    results = {name: vm.run_step(first_run.steps[name], f"{name} (again)") for name in STEPS}
    after = vm.sudo(SNAPSHOT).stdout
    return SecondRun(results, release.requests(), before, after)


def test_a_second_run_changes_nothing_and_downloads_nothing(second_run: SecondRun, first_run: FirstRun):
    logs = {name: _ok(second_run, name).splitlines() for name in STEPS}
    assert logs == {
        "prerequisites": ["[kata-mesh] prerequisites in place"],
        "containerd": ["[kata-mesh] containerd ready"],
        "kata": [
            f"[kata-mesh] Kata release {dict(first_run.steps['kata'].args)['kata-sha256']} already in /opt/kata",
            "[kata-mesh] kata-runtime check passed",
        ],
    }
    served = (versions.CONTAINERD, versions.RUNC, versions.CNI_PLUGINS, versions.KATA_RELEASES["3.32.0"])
    assert first_run.requests == [f"/{artifact.filename}" for artifact in served]
    assert second_run.requests == first_run.requests, "the second run downloaded again"
    assert second_run.after == second_run.before


def test_after_a_reboot_modules_sysctls_and_containerd_come_back(
    vm: VM, first_run: FirstRun, second_run: SecondRun
):
    _ok(second_run, "containerd")
    vm.reboot()
    loaded = {line.split()[0] for line in vm.ssh("lsmod").stdout.splitlines()[1:]}
    assert set(EXPECTED_MODULES) <= loaded
    for key, value in SEED_SYSCTLS.items():
        assert vm.ssh(f"/sbin/sysctl -n {key}").stdout.strip() == value, key
    assert vm.ssh("tail -n +2 /proc/swaps").stdout == ""
    # The VT-x fake did not survive the reboot; what came back is the node's own configuration.
    assert vm.ssh("findmnt --noheadings /proc/cpuinfo", check=False).stdout == ""
    assert vm.ssh("systemctl is-active containerd").stdout.strip() == "active"
    assert_running_cri_runtimes(vm)
    hello = vm.sudo(
        f"{CTR} run --rm --runc-systemd-cgroup --cgroup system.slice:kata-mesh:again {IMAGE} again /bin/busybox echo back"
    )
    assert hello.stdout.strip() == "back"
