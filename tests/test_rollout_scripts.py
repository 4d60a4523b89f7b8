"""The rollout's node steps (components/rollout.py: 83 check, 84 drain, 88 kubernetes, 89 release)
run for real as root in a sandboxed node (tests/node_sandbox.py), exactly as the program sends them:
bash, coreutils, jq and curl are the node's own (curl against this test's HTTP server, which serves
the apt repositories' Release.key); kubeadm, kubectl, apt-get, apt-mark, dpkg-query, gpg, systemctl
and sleep are the sandbox's recording stand-ins, kubeadm and kubectl acting like a small cluster.

The expected commands are kubeadm's documented upgrade procedure (REFERENCE), written here, not read
from the scripts: one minor at a time; on the first control plane kubeadm first (unhold, install
kubeadm=X-*, hold), `kubeadm upgrade plan vX`, `kubeadm upgrade apply -y vX`, then kubelet and
kubectl at X (held), `systemctl daemon-reload`, `systemctl restart kubelet`; on the other nodes
kubeadm, `kubeadm upgrade node`, then kubelet and kubectl and the restart. pkgs.k8s.io has one apt
repository per minor. A node is cordoned, then drained with `kubectl drain NODE --ignore-daemonsets
--delete-emptydir-data --timeout=Ns`, and uncordoned once Ready with its kubelet at vX."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_sandbox import DEFAULT_BEHAVIOUR, Result, Sandbox, require_sandbox
from node_sandbox import step_error as error
from test_node_scripts import Server

from components import versions
from components.node_provisioning import (
    CNI_TARBALL,
    ROLLOUT_MARKER,
    NodeStep,
    ProvisioningSpec,
    kubernetes_apt_repository,
    node_steps,
    rollout_of,
)
from components.rollout import check_step, drain_step, kubernetes_step, release_step, with_needed

ADMIN_CONF = "/etc/kubernetes/admin.conf"
SOURCES_LIST = "/etc/apt/sources.list.d/kubernetes.list"
KEYRING = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
WORKER = "km-worker-0"
CP0 = "km-cp-0"
KUBERNETES_PACKAGES = ("kubeadm", "kubelet", "kubectl")
KUBEADM_CONFIG_READ = (
    "kubectl -n kube-system get configmap kubeadm-config -o jsonpath={.data.ClusterConfiguration}"
)
# What `kubectl get node` is asked in 89's wait: the kubelet's version and the Ready condition.
# kubeadm-config's ClusterConfiguration as kubeadm stores it (tests/samples/kubeadm).
SAMPLES = Path(__file__).parent / "samples"
READY_JSONPATH = 'jsonpath={.status.nodeInfo.kubeletVersion} {.status.conditions[?(@.type=="Ready")].status}'

# kubectl, as cp-0's admin.conf sees the cluster: kubeadm-config's ClusterConfiguration (as kubeadm
# writes it, kubernetesVersion from $state/cluster-version), cordon, drain (fails on
# $state/drain-fails, as a drain does when a PodDisruptionBudget allows no eviction before its
# timeout), uncordon, and the Node's kubelet version and Ready condition: one line of
# $state/node-answers per call, the last one repeated.
KUBECTL = r"""[[ ${KUBECONFIG:-} == /etc/kubernetes/admin.conf ]] ||
  { echo "kubectl stand-in: KUBECONFIG is '${KUBECONFIG:-}', not /etc/kubernetes/admin.conf" >&2; exit 1; }
ready_jsonpath='jsonpath={.status.nodeInfo.kubeletVersion} {.status.conditions[?(@.type=="Ready")].status}'
if [[ $# == 7 && "$*" == "-n kube-system get configmap kubeadm-config -o jsonpath={.data.ClusterConfiguration}" ]]; then
  [[ -f $state/cluster-version ]] || { echo 'Error from server (NotFound): configmaps "kubeadm-config" not found' >&2; exit 1; }
  sed "s/^kubernetesVersion: .*/kubernetesVersion: $(<"$state/cluster-version")/" @CLUSTER_CONFIGURATION@
  exit 0
fi
case "${1:-}" in
  cordon) echo "node/$2 cordoned"; exit 0 ;;
  drain)
    if [[ -f $state/drain-fails ]]; then
      echo "error when evicting pods/\"reviews-v1-5c7d8f9b6-x2x7q\" -n \"bookinfo\" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget." >&2
      echo "error: unable to drain node \"$2\" due to error: [error when evicting pods/\"reviews-v1-5c7d8f9b6-x2x7q\" -n \"bookinfo\": global timeout reached: ${5#--timeout=}], continuing command..." >&2
      exit 1
    fi
    echo "node/$2 drained"; exit 0 ;;
  uncordon) echo "node/$2 uncordoned"; exit 0 ;;
  annotate)
    # The rollout's mark on a node it cordoned: set (KEY=VALUE, --overwrite) or removed (KEY-).
    case "${*: -1}" in
      kata-mesh.io/rollout-cordoned=*) printf '%s' "${*: -1}" | cut -d= -f2 >"$state/rollout-cordoned" ;;
      kata-mesh.io/rollout-cordoned-) rm -f "$state/rollout-cordoned" ;;
      *) echo "kubectl stand-in: unexpected annotation: $*" >&2; exit 2 ;;
    esac
    echo "node/$3 annotated"; exit 0 ;;
  get)
    if [[ $# == 5 && $2 == node && $4 == -o && $5 == 'jsonpath={.metadata.annotations.kata-mesh\.io/rollout-cordoned}' ]]; then
      cat "$state/rollout-cordoned" 2>/dev/null | tr -d '\n'
      exit 0
    fi
    if [[ $# == 5 && $2 == node && $4 == -o && $5 == "$ready_jsonpath" ]]; then
      n=$(( $(cat "$state/node-polls" 2>/dev/null || echo 0) + 1 ))
      echo "$n" >"$state/node-polls"
      answer=$(sed -n "${n}p" "$state/node-answers")
      [[ -n $answer ]] || answer=$(tail -n 1 "$state/node-answers")
      printf '%s' "$answer"
      exit 0
    fi ;;
esac
echo "kubectl stand-in: unexpected call: kubectl $*" >&2
exit 2
""".replace("@CLUSTER_CONFIGURATION@", str(SAMPLES / "kubeadm" / "cluster-configuration.yaml"))

# kubeadm, upgrading what the apt stand-in installed: it refuses a target above its own version
# (as kubeadm does: "Upgrade kubeadm first"); `upgrade plan` fails on $state/kubeadm-plan-fails;
# `upgrade apply` moves the cluster ($state/cluster-version); `upgrade node` notes which kubeadm ran.
KUBEADM = r"""own=$(cat "$state/packages/kubeadm" 2>/dev/null || echo none)
case "$*" in
  "upgrade plan v"* | "upgrade apply -y v"*)
    target=${*: -1}
    [[ $own == "${target#v}"-* ]] || {
      echo "[upgrade/version] FATAL: Specified version to upgrade to \"$target\" is higher than the kubeadm version \"v${own%%-*}\". Upgrade kubeadm first using the tool you used to install kubeadm" >&2
      exit 1
    }
    if [[ $2 == plan ]]; then
      [[ -f $state/kubeadm-plan-fails ]] && { echo "[preflight] Some fatal errors occurred: [ERROR CoreDNSUnsupportedPlugins]" >&2; exit 1; }
      printf 'You can now apply the upgrade by executing the following command:\n\n\tkubeadm upgrade apply %s\n' "$target"
    else
      printf '%s' "$target" >"$state/cluster-version"
      echo "[upgrade] SUCCESS! A control plane node of your cluster was upgraded to \"$target\"."
    fi ;;
  "upgrade node")
    printf '%s' "$own" >"$state/upgrade-node-ran-with"
    echo "[upgrade] The upgrade for this node was successful!" ;;
  *) echo "kubeadm stand-in: unexpected call: kubeadm $*" >&2; exit 2 ;;
esac
"""

# apt-get as pkgs.k8s.io serves it: a version is found only in its minor's repository (the one
# SOURCES_LIST names); each update notes the source it read. Then the sandbox's own apt-get.
APT_GET = r"""if [[ " $* " == *" update "* ]]; then
  cat /etc/apt/sources.list.d/kubernetes.list >>"$state/apt-update-sources" 2>/dev/null
fi
if [[ " $* " == *" install "* ]]; then
  source=$(cat /etc/apt/sources.list.d/kubernetes.list 2>/dev/null)
  for word in "$@"; do
    [[ $word =~ ^[a-z0-9][a-z0-9.+-]*= ]] || continue
    wanted=${word#*=}
    [[ $source == *"/core:/stable:/v${wanted%.*}/deb/ /"* ]] ||
      { echo "E: Version '$wanted' for '${word%%=*}' was not found" >&2; exit 100; }
  done
fi
""" + DEFAULT_BEHAVIOUR["apt-get"]


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    """A node of the cluster; for the drain and release steps, cp-0 (where they run)."""
    require_sandbox()
    sandbox = Sandbox(tmp_path / "node")
    sandbox.behaviour["kubectl"] = KUBECTL
    sandbox.behaviour["kubeadm"] = KUBEADM
    sandbox.behaviour["apt-get"] = APT_GET
    return sandbox


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """pkgs.k8s.io's layout: each minor's repository with its Release.key."""
    served = tmp_path / "served"
    for minor in ("1.34", "1.35", "1.36"):
        deb = served / "core:" / "stable:" / f"v{minor}" / "deb"
        deb.mkdir(parents=True)
        (deb / "Release.key").write_text(release_key(minor))
    srv = Server(served)
    yield srv
    srv.httpd.shutdown()


def release_key(minor: str) -> str:
    return f"-----BEGIN PGP PUBLIC KEY BLOCK-----\nv{minor} stand-in\n-----END PGP PUBLIC KEY BLOCK-----\n"


def rollout_for(version: str) -> str:
    """The rollout hash the program provisions a node to at this Kubernetes version."""
    return rollout_of(node_steps(ProvisioningSpec(version, versions.KATA_RELEASES["3.32.0"])))


def with_arg(step: NodeStep, name: str, value: str) -> NodeStep:
    assert name in dict(step.args), (name, step.args)
    return dataclasses.replace(step, args=tuple((k, value if k == name else v) for k, v in step.args))


def repository(server: Server, version: str) -> str:
    """pkgs.k8s.io's repository of the version's minor, on the test's server."""
    upstream = kubernetes_apt_repository(version)
    assert upstream.startswith("https://pkgs.k8s.io/core:/stable:/v")
    return upstream.replace("https://pkgs.k8s.io", server.url)


def source_line(server: Server, minor: str) -> str:
    return f"deb [signed-by={KEYRING}] {server.url}/core:/stable:/v{minor}/deb/ /\n"


def provisioned(node: Sandbox, server: Server, tmp_path: Path, version: str) -> str:
    """The node as its provisioning left it at VERSION: the packages held at VERSION-1.1,
    pkgs.k8s.io's source and key of its minor, the pinned CNI plugins in /opt/cni/bin and their
    tarball in the cache, the rollout marker. Returns the tarball's sha256."""
    minor = version.rsplit(".", 1)[0]
    for package in KUBERNETES_PACKAGES:
        node.set_state(f"packages/{package}", f"{version}-1.1")
    node.set_state("packages/kubernetes-cni", "1.9.0-1.1")
    node.seed(SOURCES_LIST, source_line(server, minor))
    node.seed(KEYRING, release_key(minor))
    cni = tmp_path / "cni.tgz"
    with tarfile.open(cni, "w:gz") as tar:
        for plugin in ("bridge", "host-local", "loopback"):
            data = f"pinned {plugin}\n".encode()
            info = tarfile.TarInfo(f"./{plugin}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    node.seed(CNI_TARBALL, "")
    node.path(CNI_TARBALL).write_bytes(cni.read_bytes())
    for plugin in ("bridge", "host-local", "loopback"):
        node.seed(f"/opt/cni/bin/{plugin}", f"pinned {plugin}\n", 0o755)
    node.seed(ROLLOUT_MARKER, rollout_for(version) + "\n")
    return hashlib.sha256(cni.read_bytes()).hexdigest()


def packages(node: Sandbox) -> dict[str, str]:
    return {p: (node.state / "packages" / p).read_text() for p in KUBERNETES_PACKAGES}


def actions(result: Result) -> list[str]:
    """What reached apt, kubeadm, the cluster, gpg and systemd, in order; an apt-get call as
    `apt-get update` or `apt-get install PACKAGE...` (its flags checked here: -y, never a prompt)."""
    shown = []
    for call in result.calls:
        words = call.split()
        if words[0] == "apt-get" and "install" in words:
            after = words[words.index("install") + 1 :]
            assert "-y" in after, call
            shown.append(" ".join(["apt-get install", *(w for w in after if not w.startswith("-"))]))
        elif words[0] == "apt-get" and "update" in words:
            shown.append("apt-get update")
        elif words[0] == "gpg":
            assert words[-3:-1] == ["-o", KEYRING] and "--dearmor" in words, call
            shown.append("gpg --dearmor")
        elif words[0] in ("kubeadm", "kubectl", "systemctl"):
            shown.append(call)
    return shown


def before_after(result: Result, first: str, second: str) -> bool:
    return result.calls.index(first) < result.calls.index(second)


# --- 83 check ----------------------------------------------------------------------------------------


def test_check_a_node_without_a_marker_needs_the_rollout_and_changes_nothing(node):
    result = node.run(check_step(rollout_for("1.36.5")))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "needed\n"
    assert result.calls == []
    assert node.changes() == {}


@pytest.mark.parametrize(
    ("marker_version", "answer"), [("1.36.5", "current\n"), ("1.36.4", "needed\n")], ids=["same", "other"]
)
def test_check_compares_the_marker_with_the_rollout_and_changes_nothing(node, marker_version, answer):
    node.seed(ROLLOUT_MARKER, rollout_for(marker_version) + "\n")
    before = node.changes()
    result = node.run(check_step(rollout_for("1.36.5")))
    assert result.returncode == 0, result.stderr
    assert result.stdout == answer
    assert node.changes() == before


def test_check_refuses_a_rollout_that_is_no_sha256(node):
    result = node.run(check_step("1.36.5"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "--rollout must be a sha256" in error(result)
    assert node.changes() == {}


# --- 84 drain (on cp-0) ------------------------------------------------------------------------------


def drain(version: str, needed: str) -> NodeStep:
    return with_needed(drain_step(WORKER, version, rollout_for(version)), needed)


CORDON = f"kubectl cordon {WORKER}"


def mark(version: str) -> str:
    """84's mark on the node it cordons: the rollout's first 12 hex digits."""
    return f"kubectl annotate node {WORKER} --overwrite kata-mesh.io/rollout-cordoned={rollout_for(version)[:12]}"


DRAIN = f"kubectl drain {WORKER} --ignore-daemonsets --delete-emptydir-data --timeout=600s"


def test_drain_cordons_then_drains_a_node_that_needs_the_rollout_and_a_second_run_does_nothing(node):
    node.set_state("cluster-version", "v1.36.4")
    result = node.run(drain("1.36.5", "needed\n"))
    assert result.returncode == 0, result.stderr
    assert result.calls == [KUBEADM_CONFIG_READ, mark("1.36.5"), CORDON, DRAIN]
    assert node.changes() == {}
    # After the rollout, the node's check says current: the same step does nothing.
    node.set_state("cluster-version", "v1.36.5")
    second = node.run(drain("1.36.5", "current\n"))
    assert second.returncode == 0, second.stderr
    assert second.calls == [KUBEADM_CONFIG_READ]
    assert node.changes() == {}


def test_drain_leaves_a_node_that_is_current_alone(node):
    node.set_state("cluster-version", "v1.36.4")
    result = node.run(drain("1.36.5", "current"))
    assert result.returncode == 0, result.stderr
    assert result.calls == [KUBEADM_CONFIG_READ]


def test_drain_allows_the_next_minor(node):
    node.set_state("cluster-version", "v1.35.2")
    result = node.run(drain("1.36.0", "needed"))
    assert result.returncode == 0, result.stderr
    assert result.calls == [KUBEADM_CONFIG_READ, mark("1.36.0"), CORDON, DRAIN]


def test_drain_refuses_a_skipped_minor_before_touching_the_node(node):
    node.set_state("cluster-version", "v1.34.2")
    result = node.run(drain("1.36.0", "needed"))
    assert result.returncode == 1
    message = error(result)
    assert "v1.34.2" in message and "v1.36.0" in message
    assert "one minor at a time" in message
    assert "Nothing was changed" in message
    assert result.calls == [KUBEADM_CONFIG_READ]


def test_drain_refuses_a_downgrade_before_touching_the_node(node):
    node.set_state("cluster-version", "v1.36.4")
    result = node.run(drain("1.36.3", "needed"))
    assert result.returncode == 1
    message = error(result)
    assert "does not downgrade" in message and "v1.36.4" in message and "v1.36.3" in message
    assert result.calls == [KUBEADM_CONFIG_READ]


def test_drain_that_does_not_finish_leaves_the_node_cordoned_and_says_how_to_resume(node):
    node.set_state("cluster-version", "v1.36.4")
    node.set_state("drain-fails")
    result = node.run(drain("1.36.5", "needed"))
    assert result.returncode != 0
    message = error(result)
    assert f"could not drain {WORKER} within 600s" in message
    assert "stays cordoned" in message
    assert f"kubectl get pods -A -o wide --field-selector spec.nodeName={WORKER}" in message
    assert f"run pulumi up again, which resumes the rollout at {WORKER}" in message
    # kubectl's own reason is in the output too.
    assert "would violate the pod's disruption budget" in result.stderr
    assert result.calls == [KUBEADM_CONFIG_READ, mark("1.36.5"), CORDON, DRAIN]
    assert not [c for c in result.calls if c.startswith("kubectl uncordon")]
    # Marked: a later release finds the node the rollout left cordoned.
    assert (node.state / "rollout-cordoned").read_text().strip() == rollout_for("1.36.5")[:12]


def test_drain_refuses_a_check_answer_that_is_neither_needed_nor_current(node):
    node.set_state("cluster-version", "v1.36.4")
    result = node.run(drain("1.36.5", ""))
    assert result.returncode == 1
    assert "--needed must be needed or current" in error(result)
    assert result.calls == [KUBEADM_CONFIG_READ]


def test_drain_stops_when_the_cluster_version_cannot_be_read(node):
    result = node.run(drain("1.36.5", "needed"))
    assert result.returncode == 1
    assert "could not read the cluster's version (kubeadm-config); nothing was changed" in error(result)
    assert result.calls == [KUBEADM_CONFIG_READ]


# --- 88 kubernetes -----------------------------------------------------------------------------------


def upgrade(server: Server, cni_sha256: str, node_name: str, role: str, version: str) -> NodeStep:
    """The program's step, its repository on the test's server and the test's CNI tarball's sha256."""
    step = kubernetes_step(node_name, role, version, rollout_for(version))
    step = with_arg(step, "apt-repository", repository(server, version))
    return with_arg(step, "cni-sha256", cni_sha256)


@pytest.mark.parametrize("role", ["worker", "control-plane"])
def test_kubernetes_patch_on_a_node_in_kubeadms_order_then_a_second_run_does_nothing(
    node, server, tmp_path, role
):
    cni_sha = provisioned(node, server, tmp_path, "1.36.4")
    step = upgrade(server, cni_sha, WORKER, role, "1.36.5")
    result = node.run(step)
    assert result.returncode == 0, result.stderr
    assert actions(result) == [
        "apt-get update",
        "apt-get install kubeadm=1.36.5-*",
        "kubeadm upgrade node",
        "apt-get update",
        "apt-get install kubelet=1.36.5-* kubectl=1.36.5-*",
        "systemctl daemon-reload",
        "systemctl restart kubelet",
    ]
    install_kubeadm = next(c for c in result.calls if c.endswith(" kubeadm=1.36.5-*"))
    install_kubelet = next(c for c in result.calls if c.endswith(" kubelet=1.36.5-* kubectl=1.36.5-*"))
    # Unheld for the install, held again after it.
    assert before_after(result, "apt-mark unhold kubeadm", install_kubeadm)
    assert before_after(result, install_kubeadm, "apt-mark hold kubeadm")
    assert before_after(result, "apt-mark hold kubeadm", "kubeadm upgrade node")
    assert before_after(result, "apt-mark unhold kubelet kubectl", install_kubelet)
    assert before_after(result, install_kubelet, "apt-mark hold kubelet kubectl")
    assert before_after(result, "apt-mark hold kubelet kubectl", "systemctl restart kubelet")
    assert (node.state / "upgrade-node-ran-with").read_text() == "1.36.5-1.1"
    assert packages(node) == {p: "1.36.5-1.1" for p in KUBERNETES_PACKAGES}
    changes = node.changes()
    assert changes[ROLLOUT_MARKER][:2] == (rollout_for("1.36.5") + "\n", 0o644)
    # A patch keeps its minor's repository: neither the source nor the key moved.
    assert changes[SOURCES_LIST][0] == source_line(server, "1.36")
    assert server.requests == []
    # kubelet's kubernetes-cni wrote its own plugins over the pinned ones: the pinned ones are back.
    assert changes["/opt/cni/bin/bridge"][0] == "pinned bridge\n"
    # The node's check now says current.
    check = node.run(check_step(rollout_for("1.36.5")))
    assert check.stdout == "current\n"

    before = node.changes()
    second = node.run(step)
    assert second.returncode == 0, second.stderr
    assert not [c for c in second.calls if " install " in c]
    assert not [c for c in second.calls if c.startswith(("kubeadm", "systemctl"))]
    assert node.changes() == before
    assert server.requests == []


def test_kubernetes_minor_on_the_first_control_plane_in_kubeadms_order_then_nothing(node, server, tmp_path):
    cni_sha = provisioned(node, server, tmp_path, "1.35.2")
    node.set_state("cluster-version", "v1.35.2")
    step = upgrade(server, cni_sha, CP0, "first", "1.36.0")
    result = node.run(step)
    assert result.returncode == 0, result.stderr
    # The cluster's version checked before this node changes.
    assert actions(result) == [
        KUBEADM_CONFIG_READ,
        "gpg --dearmor",
        "apt-get update",
        "apt-get install kubeadm=1.36.0-*",
        "kubeadm upgrade plan v1.36.0",
        "kubeadm upgrade apply -y v1.36.0",
        "apt-get update",
        "apt-get install kubelet=1.36.0-* kubectl=1.36.0-*",
        "systemctl daemon-reload",
        "systemctl restart kubelet",
    ]
    # The new minor's repository and its key, fetched from it, before the index was refreshed.
    assert server.requests == ["/core:/stable:/v1.36/deb/Release.key"]
    changes = node.changes()
    assert changes[SOURCES_LIST][:2] == (source_line(server, "1.36"), 0o644)
    assert changes[KEYRING][:2] == (release_key("1.36"), 0o644)
    assert (node.state / "apt-update-sources").read_text() == source_line(server, "1.36") * 2
    assert (node.state / "cluster-version").read_text() == "v1.36.0"
    assert packages(node) == {p: "1.36.0-1.1" for p in KUBERNETES_PACKAGES}
    assert changes[ROLLOUT_MARKER][0] == rollout_for("1.36.0") + "\n"

    before = node.changes()
    second = node.run(step)
    assert second.returncode == 0, second.stderr
    assert actions(second) == [KUBEADM_CONFIG_READ]
    assert node.changes() == before
    assert server.requests == ["/core:/stable:/v1.36/deb/Release.key"]


def test_kubernetes_plan_that_does_not_accept_stops_before_the_upgrade(node, server, tmp_path):
    cni_sha = provisioned(node, server, tmp_path, "1.35.2")
    node.set_state("cluster-version", "v1.35.2")
    node.set_state("kubeadm-plan-fails")
    result = node.run(upgrade(server, cni_sha, CP0, "first", "1.36.0"))
    assert result.returncode != 0
    message = error(result)
    assert "kubeadm upgrade plan does not accept v1.36.0 from v1.35.2" in message
    assert "The cluster was not upgraded" in message
    assert "kubeadm upgrade plan v1.36.0" in result.calls
    assert not [c for c in result.calls if c.startswith("kubeadm upgrade apply")]
    assert not [c for c in result.calls if c.startswith("systemctl")]
    assert (node.state / "cluster-version").read_text() == "v1.35.2"
    # kubeadm is the new one (kubeadm's first step); kubelet and kubectl are not.
    assert packages(node) == {"kubeadm": "1.36.0-1.1", "kubelet": "1.35.2-1.1", "kubectl": "1.35.2-1.1"}
    assert node.changes()[ROLLOUT_MARKER][0] == rollout_for("1.35.2") + "\n"


def test_kubernetes_refuses_a_skipped_minor_on_the_first_control_plane_before_the_plan(
    node, server, tmp_path
):
    cni_sha = provisioned(node, server, tmp_path, "1.34.2")
    node.set_state("cluster-version", "v1.34.2")
    result = node.run(upgrade(server, cni_sha, CP0, "first", "1.36.0"))
    assert result.returncode == 1
    message = error(result)
    assert "v1.34.2" in message and "v1.36.0" in message and "one minor at a time" in message
    assert not [c for c in result.calls if c.startswith(("kubeadm", "systemctl"))]
    assert (node.state / "cluster-version").read_text() == "v1.34.2"
    assert packages(node)["kubelet"] == "1.34.2-1.1"
    assert node.changes()[ROLLOUT_MARKER][0] == rollout_for("1.34.2") + "\n"


def test_kubernetes_refusing_a_skipped_minor_changes_nothing_as_it_says(node, server, tmp_path):
    cni_sha = provisioned(node, server, tmp_path, "1.34.2")
    node.set_state("cluster-version", "v1.34.2")
    before = node.changes()
    result = node.run(upgrade(server, cni_sha, CP0, "first", "1.36.0"))
    assert result.returncode == 1
    assert "Nothing was changed" in error(result)
    assert packages(node)["kubeadm"] == "1.34.2-1.1"
    assert node.changes() == before


def test_kubernetes_refuses_a_bad_role_before_anything(node, server, tmp_path):
    cni_sha = provisioned(node, server, tmp_path, "1.36.4")
    before = node.changes()
    result = node.run(upgrade(server, cni_sha, WORKER, "master", "1.36.5"))
    assert result.returncode == 1
    assert "--role must be first, control-plane or worker, not: master" in error(result)
    assert result.calls == []
    assert node.changes() == before
    assert server.requests == []


def test_kubernetes_restarts_the_kubelet_on_a_second_run_after_a_failed_restart(node, server, tmp_path):
    cni_sha = provisioned(node, server, tmp_path, "1.36.4")
    step = upgrade(server, cni_sha, WORKER, "worker", "1.36.5")
    node.set_state("systemctl-fails-restart")
    first = node.run(step)
    assert first.returncode != 0
    assert packages(node)["kubelet"] == "1.36.5-1.1"
    (node.state / "systemctl-fails-restart").unlink()
    second = node.run(step)
    assert second.returncode == 0, second.stderr
    assert "systemctl restart kubelet" in second.calls


# --- 89 release (on cp-0) ----------------------------------------------------------------------------


def release(needed: str, timeout_seconds: str | None = None) -> NodeStep:
    step = release_step(WORKER, "1.36.5", rollout_for("1.36.5"))
    if timeout_seconds is not None:
        step = with_arg(step, "timeout-seconds", timeout_seconds)
    return with_needed(step, needed)


GET_NODE = f"kubectl get node {WORKER} -o {READY_JSONPATH}"


@pytest.mark.parametrize(
    "answers",
    [
        ["v1.36.4 True", "v1.36.4 True", "v1.36.5 True"],
        ["v1.36.4 True", "v1.36.5 False", "v1.36.5 True"],
    ],
    ids=["old-kubelet-first", "not-ready-first"],
)
def test_release_uncordons_once_the_node_is_ready_at_the_target(node, answers):
    node.set_state("node-answers", "\n".join(answers) + "\n")
    result = node.run(release("needed\n"))
    assert result.returncode == 0, result.stderr
    # Polled every 5 s (the sleep stand-in is instant), uncordoned once.
    assert result.calls == [
        GET_NODE,
        "sleep 5",
        GET_NODE,
        "sleep 5",
        GET_NODE,
        f"kubectl uncordon {WORKER}",
        f"kubectl annotate node {WORKER} kata-mesh.io/rollout-cordoned-",
    ]
    assert node.changes() == {}


def test_release_of_a_node_that_does_not_come_back_leaves_it_cordoned(node):
    node.set_state("node-answers", "v1.36.4 True\n")
    result = node.run(release("needed", timeout_seconds="1"))
    assert result.returncode != 0
    message = error(result)
    assert f"{WORKER} is not Ready with kubelet v1.36.5 after 1s (it reports: v1.36.4 True)" in message
    assert "stays cordoned" in message
    assert f"kubectl describe node {WORKER}" in message and "journalctl -u kubelet" in message
    assert f"run pulumi up again, which resumes the rollout at {WORKER}" in message
    assert result.calls[0] == GET_NODE and set(result.calls) == {GET_NODE, "sleep 5"}


GET_MARK = f"kubectl get node {WORKER} -o jsonpath={{.metadata.annotations.kata-mesh\\.io/rollout-cordoned}}"


def test_release_of_a_node_that_needed_nothing_only_looks_for_the_rollouts_mark(node):
    result = node.run(release("current"))
    assert result.returncode == 0, result.stderr
    assert result.calls == [GET_MARK]


def test_release_of_a_current_node_a_rollout_left_cordoned_releases_it(node):
    # An earlier turn cordoned it and its release timed out; the node came back since (its check
    # now says current: 88 had finished).
    node.set_state("rollout-cordoned", rollout_for("1.36.5")[:12])
    node.set_state("node-answers", "v1.36.5 True\n")
    result = node.run(release("current"))
    assert result.returncode == 0, result.stderr
    assert result.calls == [
        GET_MARK,
        GET_NODE,
        f"kubectl uncordon {WORKER}",
        f"kubectl annotate node {WORKER} kata-mesh.io/rollout-cordoned-",
    ]
    assert not (node.state / "rollout-cordoned").exists()
