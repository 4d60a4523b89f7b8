"""47-etcd-tools.sh run as the program sends it (components.backups.etcd_tools_step), as root on a
sandboxed node (tests/node_sandbox.py). kubeadm, crictl and ctr are stand-ins that record their
calls: kubeadm lists images as `kubeadm config images list` does, crictl pulls, and ctr's `images
mount` puts a fake etcd image's files (the test's, below) at the mount point, `images unmount`
takes them away. The fake tools print their version as etcd's own do (etcdctl/ctlv3/command and
etcdutl/etcdutl version_command.go: "etcdctl version: 3.6.5", then "API version: 3.6").

Checked: a first run pulls, mounts, installs both tools 0755 and unmounts; a second run pulls
nothing and changes nothing; tools at another version are replaced; an image whose tools are not
the tag's version, or lack one, installs nothing and is unmounted all the same; no etcd image in
kubeadm's list fails before anything is pulled."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from node_sandbox import Result, Sandbox, require_sandbox
from node_sandbox import step_error as error

from components.backups import etcd_tools_step

KUBERNETES_VERSION = "1.36.4"
IMAGE = "registry.k8s.io/etcd:3.6.5-0"
ETCD_VERSION = "3.6.5"
SOCKET = "unix:///run/containerd/containerd.sock"
CTR = "ctr --address /run/containerd/containerd.sock --namespace k8s.io images"
LIST = f"kubeadm config images list --kubernetes-version v{KUBERNETES_VERSION}"
PULL = f"crictl --runtime-endpoint {SOCKET} --image-endpoint {SOCKET} pull {IMAGE}"
MOUNT_DIR = re.compile(r"/tmp/kata-mesh-etcd-image\.\w{6}")

# `kubeadm config images list --kubernetes-version vX.Y.Z`: one image a line, in kubeadm's order
# (etcd last); the etcd line is the state file's (none: a list without etcd).
KUBEADM = """if [[ $* == "config images list --kubernetes-version v"* ]]; then
  v=${*: -1}
  printf '%s\\n' "registry.k8s.io/kube-apiserver:$v" "registry.k8s.io/kube-controller-manager:$v" \\
    "registry.k8s.io/kube-scheduler:$v" "registry.k8s.io/kube-proxy:$v" "registry.k8s.io/coredns/coredns:v1.13.1" \\
    "registry.k8s.io/pause:3.10.1"
  [[ -f $state/etcd-image ]] && cat "$state/etcd-image"
  exit 0
fi
echo "kubeadm stand-in: unexpected call: kubeadm $*" >&2
exit 1
"""
CRICTL = """if [[ " $* " == *" pull "* ]]; then
  [[ -f $state/pull-fails ]] && { echo "E0101 pulling image: rpc error: code = Unavailable" >&2; exit 1; }
  printf '%s\\n' "${*: -1}" >>"$state/pulled"
  echo "Image is up to date for sha256:0f2f3f4f5f6f7f8f9fafbfcfdfefff00112233445566778899aabbccddeeff00"
  exit 0
fi
echo "crictl stand-in: unexpected call: crictl $*" >&2
exit 1
"""
# ctr --address SOCK --namespace k8s.io images mount IMAGE DIR | images unmount --rm DIR.
CTR_STANDIN = """while [[ ${1:-} == --* ]]; do shift 2; done
[[ ${1:-} == images ]] || { echo "ctr stand-in: unexpected call" >&2; exit 1; }
case ${2:-} in
  mount)
    image=$3 target=$4
    grep -qxF -- "$image" "$state/pulled" 2>/dev/null || { echo "ctr: image \\"$image\\": not found" >&2; exit 1; }
    [[ -f $state/mount-fails ]] && { echo "ctr: failed to mount: invalid argument" >&2; exit 1; }
    [[ -d $target ]] || { echo "ctr: $target: no such directory" >&2; exit 1; }
    cp -a "$state/image/." "$target/"
    printf '%s\\n' "$target" >"$state/mounted"
    echo "sha256:4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899"
    echo "$target" ;;
  unmount)
    target=${*: -1}
    find "$target" -mindepth 1 -delete
    rm -f "$state/mounted"
    echo "$target" ;;
  *) echo "ctr stand-in: unexpected call" >&2; exit 1 ;;
esac
"""


def fake_tool(name: str, version: str) -> str:
    api = ".".join(version.split(".")[:2])
    return f"""#!/bin/bash
printf '%s\\n' "{name}${{*:+ $*}}" >>/km-test/calls.log
case "${{1:-}}" in
  version) printf '{name} version: {version}\\nAPI version: {api}\\n' ;;
  *) echo "{name} stand-in: only version" >&2; exit 1 ;;
esac
"""


def put_image(node: Sandbox, versions: dict[str, str]) -> None:
    """The etcd image's files as `ctr images mount` shows them: etcd, etcdctl and etcdutl in
    /usr/local/bin (etcd's Dockerfile), 0555 as Kubernetes' own image build installs them."""
    bin_dir = node.state / "image" / "usr" / "local" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for old in bin_dir.iterdir():
        old.unlink()
    for name, version in versions.items():
        (bin_dir / name).write_text(fake_tool(name, version))
        (bin_dir / name).chmod(0o555)


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    require_sandbox()
    sandbox = Sandbox(tmp_path / "node")
    sandbox.behaviour.update(kubeadm=KUBEADM, crictl=CRICTL, ctr=CTR_STANDIN)
    sandbox.set_state("etcd-image", f"{IMAGE}\n")
    put_image(sandbox, {"etcd": ETCD_VERSION, "etcdctl": ETCD_VERSION, "etcdutl": ETCD_VERSION})
    return sandbox


def run(node: Sandbox) -> Result:
    return node.run(etcd_tools_step(KUBERNETES_VERSION))


def mount_dir(result: Result) -> str:
    mounts = [c for c in result.calls if c.startswith(f"{CTR} mount ")]
    assert len(mounts) == 1, result.calls
    directory = mounts[0].removeprefix(f"{CTR} mount {IMAGE} ")
    assert MOUNT_DIR.fullmatch(directory), directory
    return directory


def assert_unmounted(node: Sandbox, result: Result) -> None:
    """Unmounted after the mount, with the snapshot and lease dropped, and the folder gone."""
    directory = mount_dir(result)
    unmount = f"{CTR} unmount --rm {directory}"
    assert unmount in result.calls
    assert result.calls.index(unmount) > result.calls.index(f"{CTR} mount {IMAGE} {directory}")
    assert not (node.state / "mounted").exists()
    assert not node.path(directory).exists()


def installed(node: Sandbox) -> dict[str, tuple[str, int]]:
    return {
        p: (content, mode) for p, (content, mode, _) in node.changes().items() if p.startswith("/usr/local/")
    }


def test_first_run_pulls_mounts_installs_both_tools_0755_and_unmounts(node):
    result = run(node)
    assert result.returncode == 0, result.stderr
    directory = mount_dir(result)
    assert result.calls == [
        LIST,
        PULL,
        f"{CTR} mount {IMAGE} {directory}",
        "etcdctl version",
        "etcdutl version",
        f"{CTR} unmount --rm {directory}",
    ]
    # Only the two tools, at 0755 whatever the image's mode, and nothing else (no etcd, no
    # staged copies left beside them).
    assert node.changes().keys() == {"/usr/local/bin/etcdctl", "/usr/local/bin/etcdutl"}
    assert installed(node) == {
        "/usr/local/bin/etcdctl": (fake_tool("etcdctl", ETCD_VERSION), 0o755),
        "/usr/local/bin/etcdutl": (fake_tool("etcdutl", ETCD_VERSION), 0o755),
    }
    assert_unmounted(node, result)
    assert f"installed etcdctl etcdutl of etcd {ETCD_VERSION} from {IMAGE} in /usr/local/bin" in result.stderr


def test_second_run_pulls_nothing_and_changes_nothing(node):
    assert run(node).returncode == 0
    before = node.changes()
    second = run(node)
    assert second.returncode == 0, second.stderr
    assert second.calls == [LIST, "etcdctl version", "etcdutl version"]
    assert node.changes() == before
    assert f"etcd {ETCD_VERSION} already ({IMAGE}); nothing to do" in second.stderr


def test_tools_of_another_etcd_version_are_replaced(node):
    for tool in ("etcdctl", "etcdutl"):
        node.seed(f"/usr/local/bin/{tool}", fake_tool(tool, "3.6.4"), 0o755)
    result = run(node)
    assert result.returncode == 0, result.stderr
    assert PULL in result.calls
    assert installed(node) == {
        f"/usr/local/bin/{tool}": (fake_tool(tool, ETCD_VERSION), 0o755) for tool in ("etcdctl", "etcdutl")
    }
    assert_unmounted(node, result)


@pytest.mark.parametrize("wrong", ["etcdctl", "etcdutl"])
def test_an_image_whose_tool_is_not_the_tags_version_installs_nothing_and_is_unmounted(node, wrong):
    versions = {"etcd": ETCD_VERSION, "etcdctl": ETCD_VERSION, "etcdutl": ETCD_VERSION, wrong: "3.6.4"}
    put_image(node, versions)
    result = run(node)
    assert result.returncode == 1
    assert error(result) == (
        f"{wrong} from {IMAGE} reports etcd version '3.6.4', not {ETCD_VERSION} (the image's tag); nothing was installed"
    )
    # Not even the tool that was right: both or neither.
    assert installed(node) == {}
    assert_unmounted(node, result)


def test_an_image_without_etcdutl_installs_nothing_and_is_unmounted(node):
    # Kubernetes' own etcd image builds (cluster/images/etcd) copied etcd and etcdctl only.
    put_image(node, {"etcd": ETCD_VERSION, "etcdctl": ETCD_VERSION})
    result = run(node)
    assert result.returncode == 1
    assert error(result) == f"{IMAGE} has no /usr/local/bin/etcdutl; nothing was installed"
    assert installed(node) == {}
    assert_unmounted(node, result)


def test_a_mount_that_fails_is_still_cleaned_up(node):
    node.set_state("mount-fails")
    result = run(node)
    assert result.returncode == 1
    assert error(result).startswith(f"could not mount {IMAGE} at /tmp/kata-mesh-etcd-image.")
    assert installed(node) == {}
    assert_unmounted(node, result)


def test_no_etcd_image_in_kubeadms_list_fails_before_pulling(node):
    (node.state / "etcd-image").unlink()
    result = run(node)
    assert result.returncode == 1
    assert error(result).startswith(
        f"kubeadm lists no etcd image for Kubernetes v{KUBERNETES_VERSION} (no line with /etcd:), "
        "so the etcd tools' version is unknown: registry.k8s.io/kube-apiserver:v1.36.4"
    )
    assert result.calls == [LIST]
    assert node.changes() == {}


def test_a_pull_that_keeps_failing_is_retried_then_fails_without_mounting(node):
    node.set_state("pull-fails")
    result = run(node)
    assert result.returncode == 1
    assert (
        error(result)
        == f"could not pull {IMAGE} through {SOCKET} (registry reachable?); nothing was installed"
    )
    assert result.calls == [LIST, PULL, "sleep 5", PULL, "sleep 10", PULL]
    assert node.changes() == {}
