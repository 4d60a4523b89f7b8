"""A control plane's new VM joins again (issue 13): 65-forget-etcd-member.sh, run on cp-0 right
before that join, as the program sends it (as root on a sandboxed cp-0, tests/node_sandbox.py),
against a REAL etcd cluster (tests/etcd_cluster.py: etcd on 127.0.0.1 with kubeadm's TLS). crictl
is the stand-in that runs the real etcdctl; kubectl is the recording stand-in. Each test reads
etcd's membership afterwards with its own etcdctl, and the calls the step made, in order.

A replaced VM's old member is dead: it goes (with its Node), as long as the members that remain
keep a quorum of healthy ones. A member that answers is a node that still serves: it stays. Expected
names, counts and commands are etcd's and kubeadm's rules (quorum = n/2+1; members named after
their nodes), written here, not read from the script.
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

ADMIN_CONF = "/etc/kubernetes/admin.conf"
THREE = {"cp-0": "voter", "cp-1": "voter", "cp-2": "voter"}
MEMBER_LIST = "etcdctl member list -w simple"
HEALTH = "etcdctl endpoint health --cluster -w json --command-timeout=3s"


def delete_node(name: str = "cp-2") -> str:
    return f"kubectl --kubeconfig {ADMIN_CONF} delete node {name} --ignore-not-found"


def forget_step(name: str = "cp-2", timeout: str = "120") -> NodeStep:
    return NodeStep(
        "forget-etcd-member",
        "65-forget-etcd-member.sh",
        (("node-name", name), ("timeout-seconds", timeout)),
    )


@pytest.fixture(scope="module")
def etcd_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdPool]:
    require_sandbox()
    require_etcd()
    with EtcdPool(tmp_path_factory.mktemp("etcd")) as pool:
        # One for each test that stops members, one shared by those that change no membership.
        pool.prestart(3, 3, 3)
        yield pool


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    require_sandbox()
    sandbox = Sandbox(tmp_path / "cp-0")
    sandbox.seed(ADMIN_CONF, "admin")
    return sandbox


def on_cp0(node: Sandbox, cluster: EtcdCluster) -> Sandbox:
    """cp-0 of that cluster: its local etcd member is the cluster's cp-0."""
    pki = cluster.pki
    node.use_etcd(
        cluster.members["cp-0"].client_url,
        pki.ca_cert.read_text(),
        pki.client_cert.read_text(),
        pki.client_key.read_text(),
    )
    return node


# --- real etcd ------------------------------------------------------------------------------------


@pytest.mark.system
def test_a_dead_member_is_forgotten_with_its_node_and_a_second_run_finds_nothing(etcd_pool, node):
    cluster = etcd_pool.take(3)
    ids = cluster.member_ids()
    cluster.stop("cp-2")  # the old VM of cp-2 is gone
    on_cp0(node, cluster)
    result = node.run(forget_step())
    assert result.returncode == 0, result.stderr
    assert steps(result) == [MEMBER_LIST, HEALTH, delete_node(), f"etcdctl member remove {ids['cp-2']}"]
    assert "without it, 2 of 2 healthy (quorum 2)" in result.stderr
    assert cluster.membership() == {"cp-0": "voter", "cp-1": "voter"}
    assert cluster.member_ids() == {"cp-0": ids["cp-0"], "cp-1": ids["cp-1"]}
    second = node.run(forget_step())
    assert second.returncode == 0, second.stderr
    assert "nothing to forget" in second.stderr
    assert steps(second) == [MEMBER_LIST]
    assert cluster.membership() == {"cp-0": "voter", "cp-1": "voter"}


@pytest.mark.system
def test_a_member_that_answers_is_a_node_that_still_serves_and_stays(etcd_pool, node):
    cluster = etcd_pool.shared(3)
    on_cp0(node, cluster)
    result = node.run(forget_step())
    # A live member is the node itself, joined already (the step ran again for another reason).
    assert result.returncode == 0, result.stderr
    assert f"answers at {cluster.members['cp-2'].client_url}" in result.stderr
    assert "cp-2 serves as a member already; nothing to forget" in result.stderr
    assert steps(result) == [MEMBER_LIST, HEALTH], "it deleted or removed something of a live member"
    assert cluster.membership() == THREE


@pytest.mark.system
def test_a_node_that_is_no_member_has_nothing_to_forget(etcd_pool, node):
    cluster = etcd_pool.shared(3)
    on_cp0(node, cluster)
    result = node.run(forget_step("cp-3"))
    assert result.returncode == 0, result.stderr
    assert "cp-3 is no etcd member: nothing to forget" in result.stderr
    assert steps(result) == [MEMBER_LIST]
    assert cluster.membership() == THREE


@pytest.mark.system
def test_forgetting_a_dead_member_where_the_rest_lost_quorum_is_refused(etcd_pool, node):
    # Two of three down: cp-0 alone has no quorum, so it fails its health check too; the 2 that
    # would remain have none healthy where 2 are needed. etcd could not remove a member anyway,
    # but the step says why, and touches neither etcd nor the Node.
    cluster = etcd_pool.take(3)
    cluster.stop("cp-1")
    cluster.stop("cp-2")
    on_cp0(node, cluster)
    result = node.run(forget_step())
    assert result.returncode == 1
    message = error(result)
    assert "forgetting cp-2 would leave etcd without quorum" in message
    assert "of the 2 members that would remain, 0 healthy where 2 are needed; unhealthy: " in message
    unhealthy = message.split("unhealthy: ")[1].split(". Bring them back first")[0]
    assert sorted(unhealthy.split()) == ["cp-0", "cp-1"]  # in etcd's order (by member ID)
    assert message.endswith("nothing was changed")
    assert steps(result) == [MEMBER_LIST, HEALTH]
    assert cluster.membership() == THREE


# --- refused before etcd is asked ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "timeout", "message"),
    [
        ("", "120", "missing required argument(s): --node-name"),
        ("cp-2", "", "missing required argument(s): --timeout-seconds"),
        ("cp-2", "2m", "--timeout-seconds must be a whole number of seconds, not: 2m"),
    ],
)
def test_arguments_are_refused_before_anything_is_called(node, name, timeout, message):
    result = node.run(forget_step(name, timeout))
    assert result.returncode == 1
    assert error(result) == message
    assert result.calls == []


def test_without_the_cluster_admin_config_nothing_is_called(tmp_path):
    require_sandbox()
    result = Sandbox(tmp_path / "cp-1").run(forget_step())
    assert result.returncode == 1
    assert error(result) == f"no {ADMIN_CONF} on this node (is it cp-0?); nothing was changed"
    assert result.calls == []
