"""50-kubeadm-init.sh when the first control plane's new VM joins the control planes that survive it
(issue 13): --join-config-b64 (the JoinConfiguration made from 62-rejoin-token.sh's join, on stdin)
and --rejoin-via (the survivor's internal address). Run as root in a sandboxed node
(tests/node_sandbox.py) as the program sends it, with the kubeadm and kubectl stand-ins of
tests/test_node_steps.py; `nft` and `curl` are stand-ins here too (one would change this machine's
own firewall, the other would need the API server kubeadm starts). tests/test_rejoin_redirect.py
runs the redirect's ruleset in real network namespaces.

kubeadm's side, from its documentation: a control plane joins with `kubeadm join --config` holding
discovery.bootstrapToken and controlPlane.certificateKey; its connections go to the
controlPlaneEndpoint, the load balancer, which GCE makes local to each of its backends (this one
too, before its API server runs)."""

from __future__ import annotations

import base64
import dataclasses
import re
from pathlib import Path

import pytest
from node_sandbox import Sandbox, require_sandbox
from node_sandbox import step_error as error
from test_node_steps import (
    CERTIFICATE_KEY,
    ENCRYPTION_CONFIG,
    INIT_CONFIG,
    KUBEADM,
    KUBECTL,
    b64,
    init_step,
    make_ca,
    run_with_secrets,
)

from components.kubeadm_config import JoinCommand, NodeRegistration, render_join_config

LOAD_BALANCER = "192.0.2.10"
SURVIVOR = "10.10.0.3"
TOKEN = "abcdef.0123456789abcdef"
INITIALIZED = "/etc/kubernetes/.kata-mesh-initialized"
MARKER = "/etc/kubernetes/.kata-mesh-restored"

# nft: `-f -` loads the ruleset on stdin (kept), `list table` finds it, `delete table` drops it.
NFT = """case "$*" in
  "-f -") cat >"$state/nft-ruleset"; [[ -f $state/nft-fails ]] && exit 1; touch "$state/nft-table" ;;
  "list table ip "*) [[ -f $state/nft-table ]] || exit 1 ;;
  "delete table ip "*) rm -f "$state/nft-table" ;;
  *) echo "nft stand-in: unexpected call: nft $*" >&2; exit 2 ;;
esac
"""
# curl: only the wait for this node's own API server; it answers unless told not to.
CURL = """[[ " $* " == *" https://127.0.0.1:6443/readyz "* ]] || { echo "curl stand-in: unexpected: curl $*" >&2; exit 2; }
[[ -f $state/local-api-down ]] && exit 7
exit 0
"""


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    require_sandbox()
    sandbox = Sandbox(tmp_path / "cp-0")
    sandbox.behaviour["kubeadm"] = KUBEADM
    sandbox.behaviour["kubectl"] = KUBECTL
    sandbox.behaviour["nft"] = NFT
    sandbox.behaviour["curl"] = CURL
    sandbox.behaviour["crictl"] = "exit 0\n"
    return sandbox


@pytest.fixture
def ca_hash(node: Sandbox, tmp_path: Path) -> str:
    cert, digest = make_ca(tmp_path, "cluster")
    node.set_state("cluster-ca.crt", cert)
    return digest


def join_config(ca_hash: str, key: str = CERTIFICATE_KEY) -> str:
    return render_join_config(
        NodeRegistration(name="cp-0", internal_ip="10.10.0.2"),
        JoinCommand(f"{LOAD_BALANCER}:6443", TOKEN, ca_hash),
        certificate_key=key,
    )


def run_rejoin(node: Sandbox, config: str | None, via: str | None = SURVIVOR, api_timeout: str = ""):
    """The init step with the rejoin's secret arguments, as the program sends them."""
    step = init_step()
    if api_timeout:
        step = dataclasses.replace(step, args=(*step.args, ("api-timeout-seconds", api_timeout)))
    secrets = [("certificate-key", CERTIFICATE_KEY), ("encryption-config-b64", b64(ENCRYPTION_CONFIG))]
    if config is not None:
        secrets.append(("join-config-b64", base64.b64encode(config.encode()).decode()))
    if via is not None:
        secrets.append(("rejoin-via", via))
    return run_with_secrets(node, step, *secrets)


def kubeadm_and_nft(result) -> list[str]:
    return [
        re.sub(r"kata-mesh-rejoin\.\w+\.yaml", "kata-mesh-rejoin.TMP.yaml", c)
        for c in result.calls
        if c.startswith(("kubeadm", "nft", "curl"))
    ]


def test_a_new_first_control_plane_joins_the_survivors_through_one_of_them(node, ca_hash):
    result = run_rejoin(node, join_config(ca_hash))
    assert result.returncode == 0, result.stderr
    # Redirect, join, wait for its own API server, redirect gone; never init, never reset.
    assert kubeadm_and_nft(result) == [
        "nft -f -",
        "kubeadm join --config /run/kata-mesh-rejoin.TMP.yaml",
        "curl -fsk --max-time 5 https://127.0.0.1:6443/readyz",
        "nft list table ip kata_mesh_rejoin",
        "nft delete table ip kata_mesh_rejoin",
        "kubeadm token list -o json",
    ]
    # The join config kubeadm read: root's only, the one the program rendered; gone afterwards.
    assert "join config mode 600" in result.calls
    assert (node.state / "join-config-seen").read_text() == join_config(ca_hash)
    assert not [p for p in node.changes() if p.startswith("/run/kata-mesh-rejoin")]
    # The load balancer's port, from this node only, went to the survivor (masqueraded) meanwhile.
    ruleset = (node.state / "nft-ruleset").read_text()
    assert f"ip daddr {LOAD_BALANCER} tcp dport 6443 dnat to {SURVIVOR}:6443" in ruleset
    assert "type nat hook output" in ruleset and "masquerade" in ruleset
    assert not (node.state / "nft-table").exists()
    # kubeadm echoes the key it used: the logs do not.
    assert CERTIFICATE_KEY not in result.stderr and "[hidden]" in result.stderr
    changes = node.changes()
    assert INITIALIZED in changes
    # The cluster settings stay for the join-token steps' certificate uploads, as after init.
    assert changes["/etc/kubernetes/kubeadm-init.yaml"][:2] == (INIT_CONFIG, 0o600)
    assert "joined the control planes that survive" in result.stderr

    # Once in service, the same step joins nothing again.
    second = run_rejoin(node, join_config(ca_hash))
    assert second.returncode == 0, second.stderr
    assert not [c for c in second.calls if c.startswith(("kubeadm join", "kubeadm init", "nft -f"))]


def test_without_a_join_the_step_initialises_as_before(node):
    result = run_rejoin(node, None, via=None)
    assert result.returncode == 0, result.stderr
    assert [c for c in result.calls if c.startswith("kubeadm init ")]
    assert not [c for c in result.calls if c.startswith(("kubeadm join", "nft"))]


def test_a_failed_join_leaves_no_redirect_and_the_node_not_in_service(node, ca_hash):
    node.set_state("kubeadm-join-fails")
    result = run_rejoin(node, join_config(ca_hash))
    assert result.returncode == 1
    assert "kubeadm join (this control plane joining the ones that survive) failed" in error(result)
    assert not (node.state / "nft-table").exists()
    assert "nft delete table ip kata_mesh_rejoin" in result.calls
    assert INITIALIZED not in node.changes()
    assert CERTIFICATE_KEY not in result.stderr
    assert not [c for c in result.calls if c.startswith("kubeadm init")]


def test_an_api_server_that_never_serves_after_the_join_fails_the_step(node, ca_hash):
    node.set_state("local-api-down")
    result = run_rejoin(node, join_config(ca_hash), api_timeout="1")
    assert result.returncode == 1
    assert "this control plane's API server does not answer on 127.0.0.1:6443 after 1s" in error(result)
    assert "curl -fsk --max-time 5 https://127.0.0.1:6443/readyz" in result.calls
    # Not in service, and the redirect is gone with the step.
    assert INITIALIZED not in node.changes()
    assert not (node.state / "nft-table").exists()


def test_an_earlier_join_that_did_not_finish_is_reset_first(node, ca_hash):
    node.seed("/etc/kubernetes/kubelet.conf", "kubelet of the first try\n")
    result = run_rejoin(node, join_config(ca_hash))
    assert result.returncode == 0, result.stderr
    calls = kubeadm_and_nft(result)
    assert calls.index("kubeadm reset -f") < calls.index(
        "kubeadm join --config /run/kata-mesh-rejoin.TMP.yaml"
    )


def test_a_join_without_the_survivors_address_is_refused_before_anything(node, ca_hash):
    result = run_rejoin(node, join_config(ca_hash), via=None)
    assert result.returncode == 1
    assert "--join-config-b64 needs --rejoin-via" in error(result)
    assert result.calls == [] and node.changes() == {}


def test_a_node_a_backup_was_restored_onto_does_not_join_as_well(node, ca_hash):
    node.seed("/var/lib/etcd/member/snap/db", "restored\n", 0o600)
    for name in ("ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key"):
        node.seed(f"/etc/kubernetes/pki/{name}", f"restored {name}\n")
    for name in ("etcd/ca.crt", "etcd/ca.key"):
        node.seed(f"/etc/kubernetes/pki/{name}", f"restored {name}\n")
    node.seed(MARKER, "backup=gs://b/p/20261127T060000Z-cp-0/\nrevision=42\nstate=complete\n")
    before = node.changes()
    result = run_rejoin(node, join_config(ca_hash))
    assert result.returncode == 1
    assert "says a backup was restored here" in error(result)
    assert not [c for c in result.calls if c.startswith(("kubeadm", "nft"))]
    changed = {p for p, v in node.changes().items() if before.get(p) != v}
    # Only the API server's files and the kept config, written before the decision.
    assert not [p for p in changed if p.startswith(("/var/lib/etcd", "/etc/kubernetes/pki"))]
