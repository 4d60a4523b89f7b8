"""A baked node's first step (12-node-image.sh) and the image builder's image pull (42-pull-images.sh),
run as root in a sandboxed node (tests/node_sandbox.py) exactly as the program sends them
(components.node_image.node_image_step and pull_images_step).

The node image is laid out in the sandbox as the builder leaves it: the manifest, the packages
(dpkg-query's stand-in state), the executables, Kata's release marker and links, the modules and
sysctls files, the kernel's sysctls as applied at boot. The image's own kubeadm, kubelet, ctr and
kata-runtime are fakes that record their calls and answer as the real ones do (`kubeadm version -o
short`: v1.36.4; `kubelet --version`: Kubernetes v1.36.4). curl, wget, apt-get, apt and gpg are
stand-ins that fail: a baked node downloads nothing.

For 42, kubeadm lists and pulls images (into the stand-in's state) and crictl answers `inspecti`
from that state, as containerd's CRI would."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest
from node_sandbox import Result, Sandbox, require_sandbox, step_error
from seed import SEED_LINKS, SEED_MODULES, SEED_SYSCTLS

from components import versions
from components.node_image import (
    IMAGE_MANIFEST,
    ImageInputs,
    inputs_hash,
    node_image_step,
    pull_images_step,
    render_manifest,
)
from components.node_provisioning import NodeStep, ProvisioningSpec

KUBERNETES_VERSION = "1.36.4"
KATA = versions.KATA_RELEASES["3.32.0"]
SPEC = ProvisioningSpec(KUBERNETES_VERSION, KATA)
INPUTS = ImageInputs(KUBERNETES_VERSION, KATA)
DIGEST = inputs_hash(INPUTS)
STEP = node_image_step(SPEC, DIGEST)
ARGS = dict(STEP.args)
ROLLOUT = ARGS["rollout"]
PREFIX = "/opt/kata"
ROLLOUT_MARKER = "/var/lib/kata-mesh/rollout"
INSTALLED = "/var/lib/kata-mesh/installed"
SOCKET = "unix:///run/containerd/containerd.sock"
FIX = (
    'Rebuild the node image (pulumi up in images/, README "Node images"), or set kata-mesh:nodeImage to stock'
)
DOES_NOT_FIT = "[kata-mesh] ERROR: this VM's node image does not fit this stack; nothing was changed:"
# What a baked node must never run: everything that downloads or installs.
FORBIDDEN = ("curl", "wget", "apt-get", "apt", "apt-mark", "gpg")
FAILING = 'echo "$(basename "$0") must not run on a baked node" >&2\nexit 97\n'


def fake(name: str, answer: str = "") -> str:
    """One of the image's executables: records its call like the stand-ins, then answers."""
    return f"#!/bin/bash\nprintf '%s\\n' \"{name}${{*:+ $*}}\" >>/km-test/calls.log\n{answer}"


KUBEADM = (
    'if [[ $* == "version -o short" ]]; then echo "v{version}"; exit 0; fi\n'
    'if [[ $* == "config images list --kubernetes-version v{version}" ]]; then\n'
    "  cat /km-test/state/kubeadm-images; exit 0; fi\nexit 1\n"
)
# The image's crictl: every image is in containerd but those in state/images-missing.
CRICTL = (
    'if [[ $* == "--runtime-endpoint unix:///run/containerd/containerd.sock --image-endpoint '
    'unix:///run/containerd/containerd.sock inspecti "* ]]; then\n'
    '  grep -qxF -- "${*: -1}" /km-test/state/images-missing 2>/dev/null && exit 1; exit 0; fi\nexit 1\n'
)
KUBELET = 'if [[ $* == "--version" ]]; then echo "Kubernetes v{version}"; exit 0; fi\nexit 1\n'
# ctr --address SOCKET version: answers while containerd runs (no containerd-down in the state).
CTR = '[[ -f /km-test/state/containerd-down ]] && { echo "ctr: connection refused" >&2; exit 1; }\necho "Server: v2.3.4"\n'
KATA_RUNTIME = 'echo "System is capable of running Kata Containers"\necho "System can currently create Kata Containers"\n'


def test_the_step_asks_for_what_a_node_needs():
    """The image the tests below lay out is the step's own lists; these are what they must hold."""
    assert STEP.script == "12-node-image.sh"
    assert set(ARGS) == {
        "manifest", "inputs-hash", "packages", "files", "kubernetes-version", "prefix", "kata-sha256",
        "bin-dir", "links", "modules", "sysctls", "rollout", "marker", "cri-socket",
    }  # fmt: skip
    assert ARGS["cri-socket"] == SOCKET
    assert ARGS["manifest"] == IMAGE_MANIFEST and ARGS["inputs-hash"] == DIGEST
    assert ARGS["links"].split() == list(SEED_LINKS)
    assert ARGS["modules"].split() == list(SEED_MODULES)
    assert dict(s.split("=") for s in ARGS["sysctls"].split()) == SEED_SYSCTLS
    assert {"nftables", "zstd", "conntrack", "socat", "jq"} <= set(ARGS["packages"].split())
    files = set(ARGS["files"].split())
    assert {
        "/usr/local/bin/containerd",
        "/usr/local/sbin/runc",
        "/usr/bin/kubelet",
        "/usr/bin/kubeadm",
    } <= files
    assert {"/usr/bin/kubectl", "/usr/bin/crictl", "/opt/cni/bin/bridge", "/usr/sbin/nft"} <= files
    assert ARGS["kubernetes-version"] == KUBERNETES_VERSION and ARGS["kata-sha256"] == KATA.sha256
    assert (ARGS["prefix"], ARGS["bin-dir"], ARGS["marker"]) == (PREFIX, "/usr/local/bin", ROLLOUT_MARKER)


def remove(node: Sandbox, absolute: str) -> None:
    """The image lacks this path: gone from the overlay's upper folder, and hidden (a whiteout)
    where this machine's own root has it."""
    path = node.path(absolute)
    if path.is_symlink() or path.exists():
        path.unlink()
    if os.path.lexists(absolute):
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(path, stat.S_IFCHR | 0o000, 0)


def link(node: Sandbox, absolute: str, target: str) -> None:
    path = node.path(absolute)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def lay_out_image(node: Sandbox, version: str = KUBERNETES_VERSION) -> None:
    """The builder's disk as the seal left it, booted on a VM with nested virtualization."""
    node.seed(IMAGE_MANIFEST, render_manifest(INPUTS))
    for package in ARGS["packages"].split():
        node.set_state(f"packages/{package}", "1.0")
    for file in ARGS["files"].split():
        node.seed(file, fake(Path(file).name), 0o755)
    node.seed("/usr/bin/kubeadm", fake("kubeadm", KUBEADM.format(version=version)), 0o755)
    node.seed("/usr/bin/kubelet", fake("kubelet", KUBELET.format(version=version)), 0o755)
    node.seed("/usr/local/bin/ctr", fake("ctr", CTR), 0o755)
    node.seed("/usr/bin/crictl", fake("crictl", CRICTL), 0o755)
    node.set_state("kubeadm-images", "".join(f"{image}\n" for image in IMAGES))
    node.seed(f"{PREFIX}/.kata-mesh-release", f"{KATA.sha256}\n")
    for name in SEED_LINKS:
        node.seed(f"{PREFIX}/bin/{name}", fake(name), 0o755)
        link(node, f"/usr/local/bin/{name}", f"{PREFIX}/bin/{name}")
    node.seed(f"{PREFIX}/bin/kata-runtime", fake("kata-runtime", KATA_RUNTIME), 0o755)
    node.seed("/etc/modules-load.d/kata-mesh.conf", "".join(f"{m}\n" for m in SEED_MODULES))
    node.seed("/etc/sysctl.d/99-kata-mesh.conf", "".join(f"{k}={v}\n" for k, v in SEED_SYSCTLS.items()))
    node.seed("/etc/fstab", "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n")
    # systemd-sysctl applied the image's file at boot.
    for key, value in SEED_SYSCTLS.items():
        node.set_state(f"sysctl/{key}", value)


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    require_sandbox()
    sandbox = Sandbox(tmp_path / "node")
    # The image's own kubeadm answers, not the sandbox's stand-in.
    del sandbox.behaviour["kubeadm"]
    sandbox.behaviour.update({name: FAILING for name in FORBIDDEN})
    lay_out_image(sandbox)
    return sandbox


def contents(node: Sandbox) -> dict[str, tuple[str, int]]:
    return {path: (content, mode) for path, (content, mode, _) in node.changes().items()}


def written(before: dict[str, tuple[str, int]], node: Sandbox) -> dict[str, tuple[str, int]]:
    after = contents(node)
    assert set(before) <= set(after), set(before) - set(after)
    return {path: entry for path, entry in after.items() if before.get(path) != entry}


def assert_downloads_nothing(result: Result) -> None:
    assert not [c for c in result.calls if c.split()[0] in FORBIDDEN], result.calls


def first_index(calls: list[str], prefix: str) -> int:
    return next(i for i, call in enumerate(calls) if call.startswith(prefix))


# --- 12 node-image: a complete image ---------------------------------------------------------------


def test_a_complete_image_passes_enables_kubelet_without_starting_it_and_writes_the_markers(node):
    before = contents(node)
    result = node.run(STEP)
    assert result.returncode == 0, result.stderr

    # Exactly the markers, as 40-kubernetes.sh leaves them; nothing else on the disk changed.
    assert written(before, node) == {
        f"{INSTALLED}/kubelet-restarted": (f"{KUBERNETES_VERSION}\n", 0o644),
        f"{INSTALLED}/kubeadm-upgrade-node": (f"{KUBERNETES_VERSION}\n", 0o644),
        ROLLOUT_MARKER: (f"{ROLLOUT}\n", 0o644),
    }
    calls = result.calls
    assert "systemctl enable --quiet kubelet" in calls
    assert not [
        c for c in calls if c.startswith("systemctl") and "kubelet" in c and "enable --quiet" not in c
    ]
    # containerd runs already (the image has it enabled): asked, not started.
    assert "systemctl is-active --quiet containerd" in calls
    assert not [c for c in calls if c.startswith(("systemctl start", "systemctl restart"))]
    assert [c.split()[1] for c in calls if c.startswith("modprobe ")] == list(SEED_MODULES)
    assert "sysctl --quiet --system" not in calls
    assert_downloads_nothing(result)
    # In order: the image checked, then the kernel, containerd, Kata, and kubelet last.
    order = [
        first_index(calls, "kubeadm version -o short"),
        first_index(calls, "kubelet --version"),
        first_index(calls, "swapoff -a"),
        first_index(calls, "modprobe "),
        first_index(calls, "systemctl is-active --quiet containerd"),
        first_index(calls, "ctr --address /run/containerd/containerd.sock version"),
        first_index(calls, "kata-runtime check --no-network-checks"),
        first_index(calls, "systemctl enable --quiet kubelet"),
    ]
    assert order == sorted(order), calls
    assert f"the node image fits this stack (inputs {DIGEST})" in result.stderr
    # Every image kubeadm runs was asked for in containerd, after it came up.
    asked = [c.split()[-1] for c in calls if c.startswith("crictl ") and " inspecti " in c]
    assert asked == IMAGES
    assert first_index(calls, "ctr --address") < first_index(calls, "crictl ")
    assert "kata-runtime check passed" in result.stderr


def test_a_second_run_changes_nothing(node):
    first = node.run(STEP)
    assert first.returncode == 0, first.stderr
    after_first = node.changes()
    second = node.run(STEP)
    assert second.returncode == 0, second.stderr
    # Same content, mode and modification time: nothing written again.
    assert node.changes() == after_first
    assert_downloads_nothing(second)
    assert "sysctl --quiet --system" not in second.calls


def test_containerd_not_running_is_enabled_and_started_then_waited_for(node):
    node.set_state("systemctl-fails-is-active")
    result = node.run(STEP)
    assert result.returncode == 0, result.stderr
    calls = result.calls
    start = calls.index("systemctl start containerd")
    assert calls.index("systemctl enable --quiet containerd") < start
    assert start < first_index(calls, "ctr --address /run/containerd/containerd.sock version")


def test_containerd_that_never_answers_fails_the_step_before_the_markers(node):
    node.set_state("containerd-down")
    before = contents(node)
    result = node.run(STEP)
    assert result.returncode == 1
    assert step_error(result).startswith("containerd did not come up: status of containerd")
    assert not [c for c in result.calls if c.startswith("kata-runtime")]
    assert written(before, node) == {}


def test_a_vm_without_nested_virtualization_is_refused_before_the_markers(node):
    node.kvm = False
    result = node.run(STEP)
    assert result.returncode == 1
    assert "/dev/kvm is missing; likely causes: nested virtualization is not enabled" in result.stderr
    assert ROLLOUT_MARKER not in contents(node)
    assert "systemctl enable --quiet kubelet" not in result.calls


def test_kata_that_cannot_run_here_fails_the_step_with_its_report(node):
    node.seed(
        f"{PREFIX}/bin/kata-runtime",
        fake("kata-runtime", 'echo "ERROR: kvm: /dev/kvm unusable" >&2\nexit 1\n'),
        0o755,
    )
    result = node.run(STEP)
    assert result.returncode == 1
    assert "kata-runtime check failed (exit 1); this node cannot run Kata:" in result.stderr
    assert "ERROR: kvm: /dev/kvm unusable" in result.stderr
    assert ROLLOUT_MARKER not in contents(node)


# --- 12 node-image: an image that does not fit -----------------------------------------------------

OTHER_SHA = "e" * 64


def no_manifest(node: Sandbox) -> str:
    remove(node, IMAGE_MANIFEST)
    return f"{IMAGE_MANIFEST} is missing: this VM did not boot from a kata-mesh node image"


def other_inputs(node: Sandbox) -> str:
    node.seed(IMAGE_MANIFEST, render_manifest(INPUTS).replace(DIGEST, "f" * 64))
    return f"the node image was built for inputs {'f' * 64}, this stack needs {DIGEST}"


def no_inputs_line(node: Sandbox) -> str:
    node.seed(IMAGE_MANIFEST, "kubernetes-version=1.36.4\n")
    return (
        f"the node image was built for inputs (none: {IMAGE_MANIFEST} has no inputs-hash line), "
        f"this stack needs {DIGEST}"
    )


def missing_package(node: Sandbox) -> str:
    (node.state / "packages" / "nftables").unlink()
    return "package nftables is not installed"


def missing_file(node: Sandbox) -> str:
    remove(node, "/usr/bin/crictl")
    return "/usr/bin/crictl is missing"


def file_not_executable(node: Sandbox) -> str:
    node.path("/usr/local/sbin/runc").chmod(0o644)
    return "/usr/local/sbin/runc is not an executable file"


def other_kubeadm(node: Sandbox) -> str:
    node.seed("/usr/bin/kubeadm", fake("kubeadm", KUBEADM.format(version="1.36.3")), 0o755)
    return "kubeadm version -o short says 'v1.36.3', not v1.36.4"


def other_kubelet(node: Sandbox) -> str:
    node.seed("/usr/bin/kubelet", fake("kubelet", KUBELET.format(version="1.35.9")), 0o755)
    return "kubelet --version says 'Kubernetes v1.35.9', not Kubernetes v1.36.4"


def other_kata(node: Sandbox) -> str:
    node.seed(f"{PREFIX}/.kata-mesh-release", f"{OTHER_SHA}\n")
    return f"the Kata release in {PREFIX} is {OTHER_SHA}, not {KATA.sha256}"


def no_kata_marker(node: Sandbox) -> str:
    remove(node, f"{PREFIX}/.kata-mesh-release")
    return f"{PREFIX} holds no Kata release installed by kata-mesh ({PREFIX}/.kata-mesh-release is missing)"


def link_elsewhere(node: Sandbox) -> str:
    link(node, "/usr/local/bin/kata-runtime", "/usr/bin/false")
    return f"/usr/local/bin/kata-runtime points to /usr/bin/false, not {PREFIX}/bin/kata-runtime"


def no_link(node: Sandbox) -> str:
    remove(node, "/usr/local/bin/containerd-shim-kata-v2")
    return f"/usr/local/bin/containerd-shim-kata-v2 is not a link to {PREFIX}/bin/containerd-shim-kata-v2"


def file_for_link(node: Sandbox) -> str:
    node.path("/usr/local/bin/kata-monitor").unlink()
    node.seed("/usr/local/bin/kata-monitor", fake("kata-monitor"), 0o755)
    return f"/usr/local/bin/kata-monitor is not a link to {PREFIX}/bin/kata-monitor"


def dangling_link(node: Sandbox) -> str:
    remove(node, f"{PREFIX}/bin/qemu-system-x86_64")
    return f"/usr/local/bin/qemu-system-x86_64 points to {PREFIX}/bin/qemu-system-x86_64, which is missing"


BREAKAGES = [
    no_manifest,
    other_inputs,
    no_inputs_line,
    missing_package,
    missing_file,
    file_not_executable,
    other_kubeadm,
    other_kubelet,
    other_kata,
    no_kata_marker,
    link_elsewhere,
    no_link,
    file_for_link,
    dangling_link,
]


def problems(result: Result) -> list[str]:
    """The listed problems of the step's one error."""
    lines = result.stderr.splitlines()
    assert lines.count(DOES_NOT_FIT) == 1, result.stderr
    listed = lines[lines.index(DOES_NOT_FIT) + 1 :]
    assert FIX in listed, result.stderr
    return [line.removeprefix("  - ") for line in listed[: listed.index(FIX)]]


def assert_refused_untouched(node: Sandbox, before: dict, result: Result) -> None:
    """Refused before any change: no marker, nothing loaded, started or enabled."""
    assert result.returncode == 1
    assert contents(node) == before
    assert not [
        c for c in result.calls if c.startswith(("systemctl", "modprobe", "swapoff", "sysctl", "ctr"))
    ]
    assert_downloads_nothing(result)


@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b.__name__ for b in BREAKAGES])
def test_an_image_that_does_not_fit_is_refused_naming_the_problem_and_the_fix(node, breakage):
    problem = breakage(node)
    before = contents(node)
    result = node.run(STEP)
    assert_refused_untouched(node, before, result)
    assert problems(result) == [problem]


def test_an_image_without_the_kubernetes_images_is_refused_before_the_markers(node):
    """Without them, kubeadm init or join would download them at boot."""
    node.set_state("images-missing", f"{IMAGES[0]}\n{IMAGES[5]}\n")
    before = contents(node)
    result = node.run(STEP)
    assert result.returncode != 0
    assert (
        f"containerd lacks the Kubernetes v{KUBERNETES_VERSION} images {IMAGES[0]} {IMAGES[5]}"
        in result.stderr
    )
    assert FIX in result.stderr
    assert written(before, node) == {}
    assert "systemctl enable --quiet kubelet" not in result.calls
    assert_downloads_nothing(result)


def test_every_problem_is_listed_at_once(node):
    breakages = [b for b in BREAKAGES if b not in (no_manifest, no_inputs_line, no_kata_marker)]
    expected = [b(node) for b in breakages]
    before = contents(node)
    result = node.run(STEP)
    assert_refused_untouched(node, before, result)
    assert sorted(problems(result)) == sorted(expected)


def test_a_missing_manifest_is_listed_with_the_other_problems(node):
    expected = [no_manifest(node), missing_package(node), other_kubeadm(node)]
    before = contents(node)
    result = node.run(STEP)
    assert_refused_untouched(node, before, result)
    assert problems(result) == expected


def with_args(step: NodeStep, **changes: str) -> NodeStep:
    replaced = {k.replace("_", "-"): v for k, v in changes.items()}
    assert set(replaced) <= {k for k, _ in step.args}, replaced
    return dataclasses.replace(step, args=tuple((k, replaced.get(k, v)) for k, v in step.args))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"inputs_hash": DIGEST.upper()},
            f"--inputs-hash must be a sha256 (64 lowercase hex digits), not: {DIGEST.upper()}",
        ),
        ({"rollout": "abc"}, "--rollout must be a sha256 (64 lowercase hex digits), not: abc"),
        ({"kata_sha256": "sha"}, "--kata-sha256 must be a sha256 (64 lowercase hex digits), not: sha"),
        ({"kubernetes_version": "v1.36.4"}, "--kubernetes-version must be MAJOR.MINOR.PATCH, not: v1.36.4"),
        ({"marker": "var/lib/kata-mesh/rollout"}, "not an absolute path: var/lib/kata-mesh/rollout"),
        ({"files": "/usr/bin/kubelet usr/bin/kubeadm"}, "not an absolute path: usr/bin/kubeadm"),
        ({"links": "kata-runtime ../bin/x"}, "--links: not a file name: ../bin/x"),
    ],
)
def test_malformed_arguments_are_refused_before_anything_runs(node, changes, message):
    before = contents(node)
    result = node.run(with_args(STEP, **changes))
    assert result.returncode == 1
    assert step_error(result) == message
    assert result.calls == []
    assert contents(node) == before


# --- 42 pull-images ----------------------------------------------------------------------------------

IMAGES = [
    f"registry.k8s.io/kube-apiserver:v{KUBERNETES_VERSION}",
    f"registry.k8s.io/kube-controller-manager:v{KUBERNETES_VERSION}",
    f"registry.k8s.io/kube-scheduler:v{KUBERNETES_VERSION}",
    f"registry.k8s.io/kube-proxy:v{KUBERNETES_VERSION}",
    "registry.k8s.io/coredns/coredns:v1.13.1",
    "registry.k8s.io/pause:3.10.1",
    "registry.k8s.io/etcd:3.6.5-0",
]
LIST = f"kubeadm config images list --kubernetes-version v{KUBERNETES_VERSION}"
PULL = f"kubeadm config images pull --kubernetes-version v{KUBERNETES_VERSION} --cri-socket {SOCKET}"
INSPECT = [
    f"crictl --runtime-endpoint {SOCKET} --image-endpoint {SOCKET} inspecti {image}" for image in IMAGES
]
# kubeadm lists (with a warning on stderr, as it prints some) and pulls into containerd; a pull can
# skip images (state pull-skips) or fail (pull-fails).
KUBEADM_IMAGES = f"""case "$*" in
  "config images list --kubernetes-version v{KUBERNETES_VERSION}")
    echo "W1127 12:00:00.000000 1 version.go:109] a warning kubeadm prints" >&2
    cat "$state/kubeadm-images" ;;
  "config images pull --kubernetes-version v{KUBERNETES_VERSION} --cri-socket {SOCKET}")
    [[ -f $state/pull-fails ]] && {{ echo "failed to pull image: registry unreachable" >&2; exit 1; }}
    while read -r image; do
      grep -qxF -- "$image" "$state/pull-skips" 2>/dev/null && continue
      echo "[config/images] Pulled $image"
      echo "$image" >>"$state/images"
    done <"$state/kubeadm-images" ;;
  *) echo "kubeadm stand-in: unexpected call: kubeadm $*" >&2; exit 1 ;;
esac
"""
CRICTL_IMAGES = f"""if [[ $* == "--runtime-endpoint {SOCKET} --image-endpoint {SOCKET} inspecti "* ]]; then
  grep -qxF -- "${{*: -1}}" "$state/images" 2>/dev/null && {{ echo '{{"status": {{}}}}'; exit 0; }}
  echo "FATA[0000] no such image" >&2; exit 1
fi
echo "crictl stand-in: unexpected call: crictl $*" >&2
exit 1
"""


@pytest.fixture
def builder(tmp_path: Path) -> Sandbox:
    require_sandbox()
    sandbox = Sandbox(tmp_path / "builder")
    sandbox.behaviour.update(kubeadm=KUBEADM_IMAGES, crictl=CRICTL_IMAGES)
    sandbox.set_state("kubeadm-images", "".join(f"{image}\n" for image in IMAGES))
    return sandbox


def pulled(node: Sandbox) -> list[str]:
    path = node.state / "images"
    return path.read_text().splitlines() if path.exists() else []


def test_pull_images_step_is_the_programs():
    step = pull_images_step(KUBERNETES_VERSION)
    assert step.script == "42-pull-images.sh"
    assert dict(step.args) == {"kubernetes-version": KUBERNETES_VERSION, "cri-socket": SOCKET}


def test_images_are_pulled_once_and_each_checked_in_containerd(builder):
    result = builder.run(pull_images_step(KUBERNETES_VERSION))
    assert result.returncode == 0, result.stderr
    assert result.calls == [LIST, *INSPECT, PULL, *INSPECT]
    assert pulled(builder) == IMAGES
    assert f"the {len(IMAGES)} images of Kubernetes v{KUBERNETES_VERSION} are in containerd" in result.stderr
    assert builder.changes() == {}


def test_a_second_run_pulls_nothing(builder):
    assert builder.run(pull_images_step(KUBERNETES_VERSION)).returncode == 0
    second = builder.run(pull_images_step(KUBERNETES_VERSION))
    assert second.returncode == 0, second.stderr
    assert second.calls == [LIST, *INSPECT]
    assert pulled(builder) == IMAGES
    assert "nothing to pull" in second.stderr


def test_one_image_missing_is_pulled_again(builder):
    builder.set_state("images", "".join(f"{image}\n" for image in IMAGES[:-1]))
    result = builder.run(pull_images_step(KUBERNETES_VERSION))
    assert result.returncode == 0, result.stderr
    assert result.calls.count(PULL) == 1
    assert f"pulling {IMAGES[-1]}" in result.stderr


def test_an_image_still_missing_after_the_pull_fails_naming_it(builder):
    builder.set_state("pull-skips", f"{IMAGES[4]}\n{IMAGES[6]}\n")
    result = builder.run(pull_images_step(KUBERNETES_VERSION))
    assert result.returncode == 1
    assert step_error(result) == (
        f"containerd ({SOCKET}) lacks these images after kubeadm pulled them: {IMAGES[4]} {IMAGES[6]}"
    )


def test_a_pull_that_keeps_failing_is_retried_then_fails(builder):
    builder.set_state("pull-fails")
    result = builder.run(pull_images_step(KUBERNETES_VERSION))
    assert result.returncode == 1
    assert step_error(result) == (
        f"could not pull the images of Kubernetes v{KUBERNETES_VERSION} through {SOCKET} (registry reachable?)"
    )
    assert result.calls == [LIST, *INSPECT, PULL, "sleep 10", PULL, "sleep 20", PULL]


def test_a_list_without_images_fails_before_pulling(builder):
    builder.set_state("kubeadm-images", "")
    result = builder.run(pull_images_step(KUBERNETES_VERSION))
    assert result.returncode == 1
    assert (
        step_error(result)
        == f"kubeadm config images list --kubernetes-version v{KUBERNETES_VERSION} lists no image"
    )
    assert result.calls == [LIST]
