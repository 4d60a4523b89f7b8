"""Lowering controlPlaneCount (issue 11): 85-remove-control-plane.sh run as the program sends it,
as root on a sandboxed cp-0 (tests/node_sandbox.py), against a REAL etcd cluster (tests/
etcd_cluster.py: Debian's etcd 3.4 on 127.0.0.1, TLS as kubeadm sets it up). crictl is a stand-in
that runs the real etcdctl for `crictl exec ID etcdctl ...`; kubectl is the recording stand-in.
Each test reads etcd's membership afterwards with its own etcdctl, and checks the calls the step
made, in order. The shrink policy it reads is the file 55-control-plane-policy.sh wrote.

Expected names, counts and commands are etcd's and kubeadm's rules (quorum = n/2+1; members named
after their nodes), written here, not read from the scripts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_cluster import EtcdCluster, EtcdPool, require_etcd
from node_sandbox import Sandbox, require_sandbox
from node_sandbox import etcd_steps as steps
from node_sandbox import step_error as error

from components.node_provisioning import NodeStep

# Real servers: scripts/test.sh runs these as their own stage (pyproject.toml, `system`).
pytestmark = pytest.mark.system

POLICY_FILE = "/etc/kata-mesh/control-plane-policy"
THREE = {"cp-0": "voter", "cp-1": "voter", "cp-2": "voter"}
MEMBER_LIST = "etcdctl member list -w simple"
HEALTH = "etcdctl endpoint health --cluster -w json --command-timeout=3s"


def drain(name: str = "cp-2") -> str:
    return f"kubectl drain {name} --ignore-daemonsets --delete-emptydir-data --force --timeout=120s"


def delete_node(name: str = "cp-2") -> str:
    return f"kubectl delete node {name} --ignore-not-found"


def full_removal(name: str, member_id: str) -> list[str]:
    """Read etcd, guard, drain, leave etcd, delete the Node: in that order."""
    return [MEMBER_LIST, HEALTH, drain(name), f"etcdctl member remove {member_id}", delete_node(name)]


@pytest.fixture(scope="module")
def etcd_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdPool]:
    require_sandbox()
    require_etcd()
    with EtcdPool(tmp_path_factory.mktemp("etcd")) as pool:
        # One for each test that takes one, and one shared by those that change no membership.
        # They start side by side now; the tests that remove a running member or add one come
        # last, when etcd lets their clusters be reconfigured.
        pool.prestart(3, 3, 3, 3, 3, 3, 3, 5)
        yield pool


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    require_sandbox()
    return Sandbox(tmp_path / "cp-0")


def control_plane(node: Sandbox, cluster: EtcdCluster, policy: str | None) -> Sandbox:
    """cp-0 of that cluster: its local etcd member is the cluster's cp-0, kubeadm's admin.conf is
    there, and the policy step ran with `policy` (None: it never ran, there is no policy file)."""
    pki = cluster.pki
    node.use_etcd(
        cluster.members["cp-0"].client_url,
        pki.ca_cert.read_text(),
        pki.client_cert.read_text(),
        pki.client_key.read_text(),
    )
    node.seed("/etc/kubernetes/admin.conf", "admin")
    if policy is not None:
        result = node.run(policy_step(policy))
        assert result.returncode == 0, result.stderr
    return node


def policy_step(shrink: str, policy_file: str = POLICY_FILE) -> NodeStep:
    return NodeStep(
        "control-plane-policy",
        "55-control-plane-policy.sh",
        (("policy-file", policy_file), ("shrink", shrink)),
    )


def removal_step(name: str = "cp-2", timeout: str = "120") -> NodeStep:
    return NodeStep(
        "remove-control-plane",
        "85-remove-control-plane.sh",
        (("node-name", name), ("policy-file", POLICY_FILE), ("timeout-seconds", timeout)),
    )


# --- 55: the policy file --------------------------------------------------------------------------


def test_policy_step_writes_its_one_line_and_a_second_run_changes_nothing(node):
    result = node.run(policy_step("allowed"))
    assert result.returncode == 0, result.stderr
    files = node.changes()
    assert files[POLICY_FILE][:2] == ("shrink=allowed\n", 0o644)
    assert f"wrote {POLICY_FILE}" in result.stderr
    second = node.run(policy_step("allowed"))
    assert second.returncode == 0, second.stderr
    assert node.changes() == files, "the second run rewrote the file"
    assert "wrote" not in second.stderr
    assert "already allowed" in second.stderr


@pytest.mark.parametrize(("first", "then"), [("allowed", "refused"), ("refused", "destroying")])
def test_policy_step_rewrites_the_line_when_the_setting_changes(node, first, then):
    assert node.run(policy_step(first)).returncode == 0
    result = node.run(policy_step(then))
    assert result.returncode == 0, result.stderr
    assert node.files()[POLICY_FILE] == f"shrink={then}\n"
    assert f"wrote {POLICY_FILE}" in result.stderr


@pytest.mark.parametrize("value", ["yes", "Allowed", "true", "allowed refused"])
def test_policy_step_refuses_any_other_value_and_writes_nothing(node, value):
    result = node.run(policy_step(value))
    assert result.returncode == 1
    assert error(result) == f"--shrink must be allowed, refused or destroying, not: {value}"
    assert node.changes() == {}


# --- 85: what stops it before anything changes ------------------------------------------------


def test_going_from_three_to_two_is_refused_without_the_setting(etcd_pool, node):
    cluster = etcd_pool.shared(3)
    control_plane(node, cluster, "refused")
    result = node.run(removal_step())
    assert result.returncode == 1
    message = error(result)
    assert "would leave etcd with 2 member(s), which tolerate no member failure" in message
    assert "pulumi config set allowControlPlaneShrink true, then pulumi up again" in message
    assert "keep controlPlaneCount" in message
    assert message.endswith("nothing was changed")
    assert steps(result) == [MEMBER_LIST, HEALTH], "it drained or removed before refusing"
    assert cluster.membership() == THREE


def test_a_removal_that_would_leave_etcd_without_quorum_is_refused(etcd_pool, node):
    cluster = etcd_pool.take(3)
    cluster.stop("cp-1")
    control_plane(node, cluster, "allowed")
    result = node.run(removal_step())
    assert result.returncode == 1
    message = error(result)
    assert "removing cp-2 from etcd would leave it without quorum" in message
    assert "of the 2 members that would remain, 1 healthy where 2 are needed" in message
    assert "unhealthy: cp-1. Bring them back first" in message
    assert message.endswith("nothing was changed")
    assert steps(result) == [MEMBER_LIST, HEALTH]
    assert cluster.membership() == THREE


def test_a_learner_does_not_count_as_a_member_that_would_remain(etcd_pool, node):
    # 3 voters and a learner a died join left behind: without cp-2, 2 voters remain (the learner
    # does not vote), which tolerate no failure. Counted as a member, the learner would let it by.
    cluster = etcd_pool.take(3, reconfigurable=True)
    learner_peer_url = cluster.add_learner("cp-3")
    control_plane(node, cluster, "refused")
    result = node.run(removal_step())
    assert result.returncode == 1
    assert "would leave etcd with 2 member(s), which tolerate no member failure" in error(result)
    assert cluster.membership() == {**THREE, learner_peer_url: "learner"}


def test_the_destroyed_stack_leaves_etcd_and_the_node_alone(etcd_pool, node):
    cluster = etcd_pool.shared(3)
    control_plane(node, cluster, "destroying")
    policy_written = node.changes()
    result = node.run(removal_step())
    assert result.returncode == 0, result.stderr
    assert "the stack is being destroyed" in result.stderr
    assert result.calls == [], "it called crictl or kubectl"
    assert node.changes() == policy_written
    assert cluster.membership() == THREE


@pytest.mark.parametrize(
    ("timeout", "message"),
    [("", "missing required argument(s): --timeout-seconds"), ("2m", "--timeout-seconds must be a whole")],
)
def test_removal_refuses_a_timeout_that_is_not_seconds(node, timeout, message):
    result = node.run(removal_step(timeout=timeout))
    assert result.returncode == 1
    assert error(result).startswith(message)
    assert result.calls == []


def test_removal_without_the_cluster_admin_config_changes_nothing(node):
    result = node.run(removal_step())
    assert result.returncode == 1
    assert error(result) == "no /etc/kubernetes/admin.conf on this node (is it cp-0?); nothing was changed"
    assert result.calls == []


# --- 85: removals -----------------------------------------------------------------------------------


def test_a_member_that_is_down_already_is_removed_when_the_others_keep_quorum(etcd_pool, node):
    cluster = etcd_pool.take(3)
    ids = cluster.member_ids()
    cluster.stop("cp-2")
    control_plane(node, cluster, "allowed")
    result = node.run(removal_step())
    assert result.returncode == 0, result.stderr
    assert steps(result) == full_removal("cp-2", ids["cp-2"])
    assert cluster.membership() == {"cp-0": "voter", "cp-1": "voter"}


def test_a_node_that_is_no_etcd_member_is_only_drained_and_deleted(etcd_pool, node):
    cluster = etcd_pool.shared(3)
    control_plane(node, cluster, None)
    result = node.run(removal_step("cp-3"))
    assert result.returncode == 0, result.stderr
    assert "cp-3 is not an etcd member; leaving etcd as it is" in result.stderr
    assert steps(result) == [MEMBER_LIST, drain("cp-3"), delete_node("cp-3")]
    assert cluster.membership() == THREE


def test_going_from_three_to_two_with_the_setting_drains_removes_the_member_then_the_node(etcd_pool, node):
    cluster = etcd_pool.take(3, reconfigurable=True)
    ids = cluster.member_ids()
    control_plane(node, cluster, "allowed")
    result = node.run(removal_step())
    assert result.returncode == 0, result.stderr
    assert steps(result) == full_removal("cp-2", ids["cp-2"])
    assert cluster.membership() == {"cp-0": "voter", "cp-1": "voter"}
    assert cluster.member_ids() == {"cp-0": ids["cp-0"], "cp-1": ids["cp-1"]}


def test_going_from_five_to_four_needs_no_setting(etcd_pool, node):
    cluster = etcd_pool.take(5, reconfigurable=True)
    ids = cluster.member_ids()
    control_plane(node, cluster, None)
    result = node.run(removal_step("cp-4"))
    assert result.returncode == 0, result.stderr
    assert "no shrink policy at" in result.stderr
    assert steps(result) == full_removal("cp-4", ids["cp-4"])
    assert cluster.membership() == {f"cp-{i}": "voter" for i in range(4)}


def test_a_second_removal_finds_nothing_left_to_remove_and_succeeds(etcd_pool, node):
    cluster = etcd_pool.take(3, reconfigurable=True)
    control_plane(node, cluster, "allowed")
    assert node.run(removal_step()).returncode == 0
    second = node.run(removal_step())
    assert second.returncode == 0, second.stderr
    assert "cp-2 is not an etcd member; leaving etcd as it is" in second.stderr
    assert steps(second) == [MEMBER_LIST, drain(), delete_node()]
    assert cluster.membership() == {"cp-0": "voter", "cp-1": "voter"}


KUBECTL_FAILING = 'case "$1" in drain|delete) [[ -f $state/kubectl-fails ]] && exit 1;; esac\nexit 0\n'


def test_a_failed_drain_does_not_stop_the_removal_and_a_failed_delete_is_retried(etcd_pool, node):
    cluster = etcd_pool.take(3, reconfigurable=True)
    ids = cluster.member_ids()
    control_plane(node, cluster, "allowed")
    node.behaviour["kubectl"] = KUBECTL_FAILING
    node.set_state("kubectl-fails")
    result = node.run(removal_step())
    assert result.returncode == 1
    assert steps(result) == full_removal("cp-2", ids["cp-2"])
    assert "drain of cp-2 did not finish; removing it anyway" in result.stderr
    assert error(result).startswith("could not delete Node cp-2 (it is out of etcd already)")
    assert cluster.membership() == {"cp-0": "voter", "cp-1": "voter"}
    # Pulumi keeps a resource whose delete failed: the next `pulumi up` runs it again.
    (node.state / "kubectl-fails").unlink()
    again = node.run(removal_step())
    assert again.returncode == 0, again.stderr
    assert steps(again) == [MEMBER_LIST, drain(), delete_node()]
