"""The proof's HA section (3 or more control planes): its verdicts on what real tools printed, its
two scripts run as root in a sandboxed node, and its place in the stacks under the mock engine.

Where the samples come from:
- tests/samples/etcd/: the real etcdctl 3.4.23 (Debian's etcd-server and etcd-client) against
  real 3- and 5-member clusters on loopback, all healthy, one member stopped, a member added but
  never started, a learner; tests/samples/etcd/capture.sh made them (and makes them again).
- tests/samples/ha/kubectl-get-control-plane-nodes-*.json: tests/samples/verification's Node
  sample with kubeadm's control-plane labels and taint and the kubelet's own conditions; in the
  "one-unknown" one, cp-2 as the node lifecycle controller marks a kubelet that stopped posting.
- tests/samples/ha/ha-facts-*.json: what 94-ha-facts.sh prints on those (checked below by running
  it; KATA_MESH_UPDATE_SAMPLES=1 writes them again). The mock engine replays them too.
- The API probe: 93-api-probe.sh with the real curl against the test's own HTTPS server on
  127.0.0.1, its certificates made by openssl; curl's messages below are what curl 7.88 printed.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    PROJECT,
    SAMPLES,
    STACKS,
    assert_connects_to,
    cached_run,
    command_args,
    node_vms,
    require_tool,
    run_program,
    sample_evidence,
    sample_facts,
)
from node_sandbox import Sandbox, require_sandbox

from components.node_provisioning import NodeStep
from components.proof import (
    API_PROBE_ATTEMPTS,
    CLUSTER_CA,
    HA_FACTS_ATTEMPTS,
    api_probe_step,
    ha_facts_step,
)
from components.verification import HaEvidence, verify, verify_ha

ETCD_SAMPLES = SAMPLES.parent / "etcd"
HA_SAMPLES = SAMPLES.parent / "ha"
CP3 = [f"kata-mesh-dev-cp-{i}" for i in range(3)]
CP5 = [f"kata-mesh-dev-cp-{i}" for i in range(5)]
WORKER = "kata-mesh-dev-worker-0"
ENDPOINT = "203.0.113.10:6443"
COMMAND = "command:remote:Command"
INSTANCE = "gcp:compute/instance:Instance"


def ha_sample(name: str) -> dict:
    return json.loads((HA_SAMPLES / name).read_text())


def probe_answer(**changes: object) -> dict:
    """93-api-probe.sh's document for an API that answered."""
    doc = {
        "endpoint": ENDPOINT,
        "url": f"https://{ENDPOINT}/readyz",
        "status": 200,
        "body": "ok",
        "curlExit": 0,
        "error": "",
        "from": WORKER,
        "throughLoadBalancer": True,
        "attempts": 1,
    }
    return {**doc, **changes}


def problems(report) -> list[str]:
    return list(report.problems)


# --- Verdicts ------------------------------------------------------------------------------------


def test_three_ready_control_planes_with_healthy_etcd_and_an_answering_api_pass_and_are_reported():
    report = verify_ha(ha_sample("ha-facts-3.json"), probe_answer(), CP3)
    assert report.passed, report.problems
    details = report.details
    assert (details["controlPlanes"], details["nodesReady"]) == (3, 3)
    assert (details["etcdMembers"], details["etcdHealthy"]) == (3, 3)
    assert details["nodes"] == [{"name": name, "ready": "True"} for name in CP3]
    assert details["members"][0] == {
        "name": "kata-mesh-dev-cp-0",
        "id": "4accb52f220f8e24",
        "status": "started",
        "isLearner": False,
        "clientURLs": ["http://127.0.0.1:2379"],
        "healthy": True,
    }
    assert details["api"] == {
        "endpoint": ENDPOINT,
        "from": WORKER,
        "throughLoadBalancer": True,
        "status": 200,
        "body": "ok",
        "attempts": 1,
    }


def test_five_control_planes_pass_with_a_member_id_shorter_than_16_hex_digits():
    """etcdctl prints IDs without leading zeros (581f6278b9fd6a1): kept as printed."""
    report = verify_ha(ha_sample("ha-facts-5.json"), probe_answer(), CP5)
    assert report.passed, report.problems
    assert report.details["etcdHealthy"] == 5
    assert "581f6278b9fd6a1" in {m["id"] for m in report.details["members"]}


def test_a_control_plane_whose_kubelet_stopped_posting_fails_naming_it():
    report = verify_ha(ha_sample("ha-facts-3-one-unknown.json"), probe_answer(), CP3)
    assert problems(report) == [
        "control-plane Node kata-mesh-dev-cp-2 is not Ready "
        "(Ready=Unknown, NodeStatusUnknown: Kubelet stopped posting node status.)"
    ]
    assert report.details["nodesReady"] == 2
    assert report.details["nodes"][2] == {"name": "kata-mesh-dev-cp-2", "ready": "Unknown"}


def test_a_control_plane_not_ready_or_never_registered_fails_naming_it():
    facts = ha_sample("ha-facts-3.json")
    facts["nodes"]["items"][1].update(
        ready="False",
        reason="KubeletNotReady",
        message="container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady",
    )
    del facts["nodes"]["items"][2]
    assert problems(verify_ha(facts, probe_answer(), CP3)) == [
        "control-plane Node kata-mesh-dev-cp-1 is not Ready (Ready=False, KubeletNotReady: container "
        "runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady)",
        "control plane kata-mesh-dev-cp-2 has no Node: it never registered",
    ]


def test_a_stopped_etcd_member_fails_naming_it_with_etcdctls_error():
    report = verify_ha(ha_sample("ha-facts-3-one-stopped.json"), probe_answer(), CP3)
    assert problems(report) == [
        "etcd member kata-mesh-dev-cp-2 (e6d16482b29296d7) is unhealthy: "
        "http://127.0.0.3:2379: context deadline exceeded"
    ]
    assert (report.details["etcdMembers"], report.details["etcdHealthy"]) == (3, 2)
    assert [m["healthy"] for m in report.details["members"]] == [True, True, False]


def test_a_missing_etcd_member_fails_naming_its_control_plane():
    facts = ha_sample("ha-facts-3.json")
    facts["members"]["items"] = [m for m in facts["members"]["items"] if m["name"] != "kata-mesh-dev-cp-1"]
    facts["health"]["items"] = [
        h for h in facts["health"]["items"] if h["endpoint"] != "http://127.0.0.2:2379"
    ]
    assert problems(verify_ha(facts, probe_answer(), CP3)) == [
        "etcd has 2 members, expected 3 (one per control plane)",
        "control plane kata-mesh-dev-cp-1 has no etcd member",
    ]


def test_control_planes_being_removed_in_this_update_are_reported_as_leaving_not_failed():
    """5 -> 3: Pulumi removes cp-3 and cp-4 (and their etcd members) at the end of the update,
    after the proof ran; failing the proof on them would stop the update before the removal."""
    report = verify_ha(ha_sample("ha-facts-5.json"), probe_answer(), CP3)
    assert report.passed, report.problems
    assert report.details["leaving"] == ["kata-mesh-dev-cp-3", "kata-mesh-dev-cp-4"]
    assert report.details["etcdMembers"] == 5


def renamed(document: dict, old: str, new: str) -> dict:
    return json.loads(json.dumps(document).replace(f'"{old}"', f'"{new}"'))


def test_extra_etcd_members_and_control_plane_nodes_that_are_not_leaving_fail_naming_them():
    """Members and Nodes of no control plane this stack ever numbered (another cluster's, a hand-made one)."""
    facts = renamed(ha_sample("ha-facts-5.json"), "kata-mesh-dev-cp-4", "kata-mesh-old-cp-4")
    facts = renamed(facts, "kata-mesh-dev-cp-3", "kata-mesh-dev-cp-x")
    report = verify_ha(facts, probe_answer(), CP3)
    assert problems(report) == [
        "Node kata-mesh-dev-cp-x has the control-plane role but is not one of the stack's control planes",
        "Node kata-mesh-old-cp-4 has the control-plane role but is not one of the stack's control planes",
        "etcd has 5 members, expected 3 (one per control plane)",
        "etcd member kata-mesh-old-cp-4 (581f6278b9fd6a1) is not one of the stack's control planes",
        "etcd member kata-mesh-dev-cp-x (b457184bd1d57915) is not one of the stack's control planes",
    ]
    assert report.details["leaving"] == []


def test_a_kept_control_plane_still_fails_while_others_are_leaving():
    """5 -> 3 with cp-2 down: cp-2's health answer as etcdctl gave it for a stopped member
    (ha-facts-3-one-stopped.json, cp-2 at 127.0.0.3) in the five-member document."""
    stopped = next(
        a for a in ha_sample("ha-facts-3-one-stopped.json")["health"]["items"] if a["health"] is False
    )
    facts = ha_sample("ha-facts-5.json")
    facts["health"]["items"] = [
        stopped if a["endpoint"] == stopped["endpoint"] else a for a in facts["health"]["items"]
    ]
    report = verify_ha(facts, probe_answer(), CP3)
    assert [p for p in problems(report) if "cp-2" in p] == [
        f"etcd member kata-mesh-dev-cp-2 ({member_id(facts, 'kata-mesh-dev-cp-2')}) is unhealthy: "
        "http://127.0.0.3:2379: context deadline exceeded"
    ]
    assert report.details["leaving"] == ["kata-mesh-dev-cp-3", "kata-mesh-dev-cp-4"]


def member_id(facts: dict, name: str) -> str:
    return next(m["id"] for m in facts["members"]["items"] if m["name"] == name)


def test_a_member_added_but_never_started_fails_naming_its_id_and_peer_address():
    report = verify_ha(ha_sample("ha-facts-3-plus-unstarted.json"), probe_answer(), CP3)
    assert problems(report) == [
        "etcd has 4 members, expected 3 (one per control plane)",
        "etcd member 1cb4e9b08029db04 (peer http://127.0.0.4:2380) was added but never started: "
        "a control plane's join stopped half-way",
    ]


def test_a_learner_fails_whether_it_started_or_not():
    unstarted = verify_ha(ha_sample("ha-facts-3-plus-learner.json"), probe_answer(), CP3)
    assert "etcd member 39d74e0106c1fea2 (peer http://127.0.0.4:2380) was added but never started" in (
        "\n".join(unstarted.problems)
    )
    facts = ha_sample("ha-facts-3.json")
    facts["members"]["items"][2]["isLearner"] = True
    assert problems(verify_ha(facts, probe_answer(), CP3)) == [
        "etcd member kata-mesh-dev-cp-2 (e6d16482b29296d7) is still a learner, not a voting member"
    ]


def test_a_member_the_health_check_did_not_reach_fails():
    facts = ha_sample("ha-facts-3.json")
    facts["health"]["items"] = [
        h for h in facts["health"]["items"] if h["endpoint"] != "http://127.0.0.1:2379"
    ]
    assert problems(verify_ha(facts, probe_answer(), CP3)) == [
        "etcd member kata-mesh-dev-cp-0 (4accb52f220f8e24) gave no answer to the health check"
    ]


def test_an_etcd_that_does_not_answer_at_all_fails_with_etcdctls_errors():
    report = verify_ha(ha_sample("ha-facts-3-local-down.json"), probe_answer(), CP3)
    assert problems(report) == [
        "could not list etcd's members: etcdctl member list: Error: context deadline exceeded"
    ]
    assert report.details["members"] == [] and report.details["etcdHealthy"] == 0


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        (
            probe_answer(
                status=0,
                body="",
                curlExit=7,
                error="curl: (7) Failed to connect to 203.0.113.10 port 6443 after 3 ms: Couldn't connect to server",
                attempts=24,
            ),
            f"the API did not answer through {ENDPOINT} from {WORKER}: curl: (7) Failed to connect to "
            "203.0.113.10 port 6443 after 3 ms: Couldn't connect to server (curl exit 7)",
        ),
        (
            probe_answer(
                status=0,
                body="",
                curlExit=60,
                error="curl: (60) SSL: no alternative certificate subject name matches target host name "
                "'203.0.113.10'",
            ),
            f"the API did not answer through {ENDPOINT} from {WORKER}: curl: (60) SSL: no alternative "
            "certificate subject name matches target host name '203.0.113.10' (curl exit 60); the API "
            f"server's certificate was refused with the cluster's CA: is {ENDPOINT} one of its addresses (SANs)?",
        ),
        (
            probe_answer(
                status=500,
                body="[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]etcd-readiness ok\n"
                "readyz check failed\n",
            ),
            f"the API answered 500 '[-]etcd failed: reason withheld' through {ENDPOINT} from {WORKER}, "
            "not 200 'ok'",
        ),
    ],
    ids=["connection-refused", "address-not-in-certificate", "not-ready"],
)
def test_an_api_that_does_not_answer_ok_through_the_load_balancer_fails_naming_the_node(probe, expected):
    report = verify_ha(ha_sample("ha-facts-3.json"), probe, CP3)
    assert problems(report) == [expected]
    assert report.details["api"]["from"] == WORKER


def test_the_report_carries_ha_beside_the_app_checks_and_its_problems_fail_the_verdict():
    facts, evidence = sample_facts(WORKER), [sample_evidence(WORKER)]
    assert verify(facts, evidence, "httpbin", None).as_dict()["ha"] is None
    healthy = verify(
        facts, evidence, "httpbin", None, HaEvidence(ha_sample("ha-facts-3.json"), probe_answer(), CP3)
    )
    assert healthy.passed and healthy.as_dict()["ha"]["etcdHealthy"] == 3
    stopped = HaEvidence(ha_sample("ha-facts-3-one-stopped.json"), probe_answer(), CP3)
    report = verify(facts, evidence, "httpbin", None, stopped).as_dict()
    assert report["passed"] is False
    assert report["problems"] == [
        "etcd member kata-mesh-dev-cp-2 (e6d16482b29296d7) is unhealthy: "
        "http://127.0.0.3:2379: context deadline exceeded"
    ]


# --- 94-ha-facts.sh in a sandboxed control plane -------------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    require_sandbox()
    require_tool("jq")
    return Sandbox(tmp_path / "node")


ETCD_CONTAINER = "9a7f3c2b1e0d"
KM_ETCDCTL = (
    f"exec {ETCD_CONTAINER} etcdctl --endpoints=https://127.0.0.1:2379 "
    "--cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt "
    "--key=/etc/kubernetes/pki/etcd/healthcheck-client.key"
)
# crictl on a control plane: finds the etcd container; `exec ID etcdctl ...` (km_etcdctl's exact
# call) replays what the real etcdctl printed, its stderr and its exit status.
CRICTL_REPLAY = (
    'case "$*" in\n'
    '  "ps --name ^etcd$ --state Running -q") [[ -f $state/no-etcd ]] || echo '
    + ETCD_CONTAINER
    + "; exit 0 ;;\n"
    '  "' + KM_ETCDCTL + ' member list -w simple") kind=members ;;\n'
    '  "' + KM_ETCDCTL + ' endpoint health --cluster -w json") kind=health ;;\n'
    '  *) echo "crictl stand-in: unexpected call: crictl $*" >&2; exit 1 ;;\n'
    "esac\n"
    'cat "$state/$kind.out"\n'
    'cat "$state/$kind.err" >&2 2>/dev/null\n'
    'exit "$(cat "$state/$kind.exit")"\n'
)
# kubectl on that control plane: with admin.conf, only what km_service_account_kubeconfig asks (the
# cluster's entry, and a token for the proof's ServiceAccount, refused as kubectl words it while
# the API server is down); every other call must come with the kubeconfig holding that token.
PROOF_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJrYXRhLW1lc2gtcHJvb2YifQ.c3RhbmQtaW4"
API_DOWN = "The connection to the server 10.10.0.2:6443 was refused - did you specify the right host or port?"
TOKEN_REFUSED = (
    'error: failed to create token: Post "https://10.10.0.2:6443/api/v1/namespaces/kube-system/'
    'serviceaccounts/kata-mesh-proof/token": dial tcp 10.10.0.2:6443: connect: connection refused'
)
KUBECTL_NODES = (
    'if [[ "${1:-} ${2:-}" == "--kubeconfig /etc/kubernetes/admin.conf" ]]; then\n'
    '  case "$*" in\n'
    "    *\" config view --minify --raw -o jsonpath=\"*) printf 'https://10.10.0.2:6443\\nQ0EK'; exit 0 ;;\n"
    '    *" -n kube-system create token kata-mesh-proof --duration="*)\n'
    f"      [[ -f $state/api-down ]] && {{ echo '{TOKEN_REFUSED}' >&2; exit 1; }}\n"
    f"      echo {PROOF_TOKEN}; exit 0 ;;\n"
    "  esac\n"
    '  echo "kubectl stand-in: unexpected call with admin.conf: kubectl $*" >&2; exit 1\n'
    "fi\n"
    f'grep -qF \'"token": "{PROOF_TOKEN}"\' "${{KUBECONFIG:-/nonexistent}}" ||\n'
    '  { echo "kubectl stand-in: not run with the proof\'s kubeconfig" >&2; exit 1; }\n'
    'case "$*" in\n'
    '  "get nodes -l node-role.kubernetes.io/control-plane -o json")\n'
    f"    [[ -f $state/api-down ]] && {{ echo '{API_DOWN}' >&2; exit 1; }}\n"
    '    cat "$state/nodes.json" ;;\n'
    '  *) echo "kubectl stand-in: unexpected call: kubectl $*" >&2; exit 1 ;;\n'
    "esac\n"
)


def etcd_replay(node: Sandbox, kind: str, sample: str) -> None:
    """What etcdctl printed for one capture (NAME.txt or NAME.json, NAME.exit, NAME.stderr)."""
    outputs = [ETCD_SAMPLES / f"{sample}.{ext}" for ext in ("txt", "json")]
    node.set_state(f"{kind}.out", "".join(p.read_text() for p in outputs if p.exists()))  # absent: empty
    node.set_state(f"{kind}.exit", (ETCD_SAMPLES / f"{sample}.exit").read_text())
    stderr = ETCD_SAMPLES / f"{sample}.stderr"
    node.set_state(f"{kind}.err", stderr.read_text() if stderr.exists() else "")


def ha_facts_on(
    node: Sandbox, nodes: str, members: str, health: str, control_planes: list[str], attempts: int = 2
):
    node.behaviour["crictl"] = CRICTL_REPLAY
    node.behaviour["kubectl"] = KUBECTL_NODES
    node.set_state("nodes.json", (HA_SAMPLES / nodes).read_text())
    etcd_replay(node, "members", members)
    etcd_replay(node, "health", health)
    step = ha_facts_step(control_planes)
    assert dict(step.args)["attempts"] == str(HA_FACTS_ATTEMPTS)
    step = dataclasses.replace(step, args=(*step.args[:-1], ("attempts", str(attempts))))
    return node.run(step)


# Each sample document and what it was gathered from: Nodes, `member list`, `endpoint health`.
GATHERED = {
    "ha-facts-3.json": ("kubectl-get-control-plane-nodes-3.json", "member-list-3", "endpoint-health-3", CP3),
    "ha-facts-5.json": ("kubectl-get-control-plane-nodes-5.json", "member-list-5", "endpoint-health-5", CP5),
    "ha-facts-3-one-unknown.json": (
        "kubectl-get-control-plane-nodes-3-one-unknown.json",
        "member-list-3",
        "endpoint-health-3",
        CP3,
    ),
    "ha-facts-3-one-stopped.json": (
        "kubectl-get-control-plane-nodes-3.json",
        "member-list-3-one-stopped",
        "endpoint-health-3-one-stopped",
        CP3,
    ),
    "ha-facts-3-plus-unstarted.json": (
        "kubectl-get-control-plane-nodes-3.json",
        "member-list-3-plus-unstarted",
        "endpoint-health-3-plus-unstarted",
        CP3,
    ),
    "ha-facts-3-plus-learner.json": (
        "kubectl-get-control-plane-nodes-3.json",
        "member-list-3-plus-learner",
        "endpoint-health-3",
        CP3,
    ),
    "ha-facts-3-local-down.json": (
        "kubectl-get-control-plane-nodes-3.json",
        "member-list-local-down",
        "endpoint-health-local-down",
        CP3,
    ),
}


@pytest.mark.parametrize("document", sorted(GATHERED))
def test_the_ha_facts_script_prints_the_sample_documents_from_what_the_real_tools_printed(node, document):
    nodes, members, health, control_planes = GATHERED[document]
    result = ha_facts_on(node, nodes, members, health, control_planes)
    assert result.returncode == 0, result.stderr
    target = HA_SAMPLES / document
    if os.environ.get("KATA_MESH_UPDATE_SAMPLES"):
        target.write_text(result.stdout)
    assert json.loads(result.stdout) == json.loads(target.read_text())
    settled = document in ("ha-facts-3.json", "ha-facts-5.json")
    assert json.loads(result.stdout)["attempts"] == (1 if settled else 2)
    etcdctl_calls = [c for c in result.calls if c.startswith("crictl exec")]
    assert len(etcdctl_calls) == (2 if settled else 4)
    assert node.changes() == {}, "gathering must write nothing on the node"


def test_the_ha_facts_script_gathers_again_until_settled_and_says_so(node):
    result = ha_facts_on(
        node,
        "kubectl-get-control-plane-nodes-3.json",
        "member-list-3-one-stopped",
        "endpoint-health-3-one-stopped",
        CP3,
        3,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["attempts"] == 3
    assert result.calls.count("sleep 10") == 2
    assert "not settled yet (attempt 1 of 3)" in result.stderr
    assert "did not look settled after 3 attempts; reporting what it shows" in result.stderr


def test_the_ha_facts_script_reports_a_down_api_server_and_a_missing_etcd_instead_of_failing(node):
    node.set_state("api-down")
    node.set_state("no-etcd")
    result = ha_facts_on(
        node, "kubectl-get-control-plane-nodes-3.json", "member-list-3", "endpoint-health-3", CP3
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    # The proof's token cannot be minted either: asked again at each attempt, its error recorded.
    assert facts["nodes"] == {"items": [], "error": f"kubectl create token: {TOKEN_REFUSED}"}
    assert len([c for c in result.calls if " create token " in c]) == 2
    missing = "[kata-mesh] ERROR: no running etcd container on this node (is it a control plane?)"
    assert facts["members"]["error"] == f"etcdctl member list: {missing}"
    assert facts["health"]["error"] == f"etcdctl endpoint health: {missing}"
    assert problems(verify_ha(facts, probe_answer(), CP3)) == [
        f"could not list the control-plane Nodes: {facts['nodes']['error']}",
        f"could not list etcd's members: {facts['members']['error']}",
    ]


def test_the_ha_facts_script_refuses_bad_arguments(node):
    step = ha_facts_step(CP3)
    step = dataclasses.replace(step, args=(*step.args[:-1], ("attempts", "0")))
    result = node.run(step)
    assert result.returncode == 1
    assert "--attempts must be a positive number, got: 0" in result.stderr
    result = node.run(NodeStep("ha-facts", "94-ha-facts.sh", (("attempts", "2"),)))
    assert (
        "missing required argument(s): --control-planes --proof-service-account "
        "--proof-service-account-namespace" in result.stderr
    )


# --- 93-api-probe.sh against a real HTTPS server -------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def new_key_request(*args: str) -> None:
    """`openssl req` with a new, unencrypted P-256 key."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", *args)


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path  # signed by ca, for IP 127.0.0.1 (the endpoint the test asks)
    server_cert_elsewhere: Path  # signed by ca, for 10.10.0.2 only: the endpoint is not in its SANs
    server_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    require_tool("openssl")
    folder = tmp_path_factory.mktemp("pki")

    def ca(name: str) -> Path:
        key, cert = folder / f"{name}.key", folder / f"{name}.crt"
        new_key_request("-x509", "-days", "2", "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}")
        return cert

    cluster_ca, other_ca = ca("kubernetes"), ca("another-cluster")
    key, csr = folder / "apiserver.key", folder / "apiserver.csr"
    new_key_request("-keyout", str(key), "-out", str(csr), "-subj", "/CN=kube-apiserver")

    def signed(name: str, sans: str) -> Path:
        ext, cert = folder / f"{name}.ext", folder / f"{name}.crt"
        ext.write_text(f"subjectAltName={sans}\n")
        ca_key = str(folder / "kubernetes.key")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(cluster_ca), "-CAkey", ca_key, "-CAcreateserial",
                "-days", "2", "-out", str(cert), "-extfile", str(ext))  # fmt: skip
        return cert

    return Pki(
        ca=cluster_ca,
        other_ca=other_ca,
        server_cert=signed("apiserver", "DNS:kubernetes,DNS:kubernetes.default,IP:10.96.0.1,IP:127.0.0.1"),
        server_cert_elsewhere=signed("apiserver-elsewhere", "DNS:kubernetes,IP:10.96.0.1,IP:10.10.0.2"),
        server_key=key,
    )


class ApiServer:
    """/readyz over HTTPS on 127.0.0.1, answering from `answers` in turn (the last one repeats)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.answers: list[tuple[int, str]] = [(200, "ok")]
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = server.answers[min(server.requests, len(server.answers) - 1)]
                server.requests += 1
                data = body.encode() if self.path == "/readyz" else b"404 page not found\n"
                self.send_response(status if self.path == "/readyz" else 404)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.endpoint = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def api(pki: Pki) -> Iterator[ApiServer]:
    server = ApiServer(pki.server_cert, pki.server_key)
    yield server
    server.httpd.shutdown()


def probe_on(node: Sandbox, ca: Path, endpoint: str, through_load_balancer: bool = True, attempts: int = 3):
    """The program's probe step, on a node whose cluster CA is `ca` and whose hostname is WORKER."""
    node.seed(CLUSTER_CA, ca.read_text())
    node.behaviour["hostname"] = f"echo {WORKER if through_load_balancer else CP3[0]}\n"
    step = api_probe_step(endpoint, through_load_balancer)
    assert dict(step.args)["attempts"] == str(API_PROBE_ATTEMPTS)
    step = dataclasses.replace(step, args=(*step.args[:-1], ("attempts", str(attempts))))
    result = node.run(step)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result


def test_the_probe_gets_ok_through_the_endpoint_trusting_only_the_cluster_ca(node, pki, api):
    probe, result = probe_on(node, pki.ca, api.endpoint)
    assert probe == {
        "endpoint": api.endpoint,
        "url": f"https://{api.endpoint}/readyz",
        "status": 200,
        "body": "ok",
        "curlExit": 0,
        "error": "",
        "from": WORKER,
        "throughLoadBalancer": True,
        "attempts": 1,
    }
    assert "sleep 5" not in result.calls
    report = verify_ha(ha_sample("ha-facts-3.json"), probe, CP3)
    assert report.passed, report.problems


def test_the_probe_from_a_control_plane_says_it_did_not_go_through_the_load_balancer(node, pki, api):
    probe, _ = probe_on(node, pki.ca, api.endpoint, through_load_balancer=False)
    assert (probe["from"], probe["throughLoadBalancer"]) == (CP3[0], False)
    assert verify_ha(ha_sample("ha-facts-3.json"), probe, CP3).details["api"]["throughLoadBalancer"] is False


def test_the_probe_asks_again_until_the_api_is_ready(node, pki, api):
    not_ready = "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed\n"
    api.answers = [(500, not_ready), (500, not_ready), (200, "ok")]
    probe, result = probe_on(node, pki.ca, api.endpoint, attempts=5)
    assert (probe["status"], probe["body"], probe["attempts"]) == (200, "ok", 3)
    assert result.calls.count("sleep 5") == 2
    assert f"https://{api.endpoint}/readyz: 500 (curl exit 0), asking again (attempt 1 of 5)" in result.stderr


def test_an_api_never_ready_is_reported_with_its_failed_checks(node, pki, api):
    api.answers = [(500, "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed\n")]
    probe, result = probe_on(node, pki.ca, api.endpoint)
    assert (probe["status"], probe["attempts"]) == (500, 3)
    assert f"https://{api.endpoint}/readyz did not answer 200 after 3 attempts" in result.stderr
    assert problems(verify_ha(ha_sample("ha-facts-3.json"), probe, CP3)) == [
        f"the API answered 500 '[-]etcd failed: reason withheld' through {api.endpoint} from {WORKER}, "
        "not 200 'ok'"
    ]


def test_a_refused_connection_is_reported_naming_the_endpoint_and_the_node(node, pki, api):
    api.httpd.shutdown()
    api.httpd.server_close()
    probe, _ = probe_on(node, pki.ca, api.endpoint)
    assert (probe["status"], probe["curlExit"], probe["attempts"]) == (0, 7, 3)
    port = api.endpoint.split(":")[1]
    assert probe["error"].startswith(f"curl: (7) Failed to connect to 127.0.0.1 port {port} after ")
    [problem] = problems(verify_ha(ha_sample("ha-facts-3.json"), probe, CP3))
    assert problem.startswith(
        f"the API did not answer through {api.endpoint} from {WORKER}: curl: (7) Failed"
    )
    assert problem.endswith("(curl exit 7)")


def test_a_server_certificate_of_another_ca_is_refused_and_reported(node, pki, api):
    probe, _ = probe_on(node, pki.other_ca, api.endpoint)
    assert (probe["status"], probe["curlExit"]) == (0, 60)
    assert probe["error"] == "curl: (60) SSL certificate problem: unable to get local issuer certificate"
    assert problems(verify_ha(ha_sample("ha-facts-3.json"), probe, CP3)) == [
        f"the API did not answer through {api.endpoint} from {WORKER}: curl: (60) SSL certificate problem: "
        "unable to get local issuer certificate (curl exit 60); the API server's certificate was refused "
        f"with the cluster's CA: is {api.endpoint} one of its addresses (SANs)?"
    ]


def test_an_endpoint_missing_from_the_certificates_addresses_is_refused_and_reported(node, pki):
    server = ApiServer(pki.server_cert_elsewhere, pki.server_key)
    try:
        probe, _ = probe_on(node, pki.ca, server.endpoint)
    finally:
        server.httpd.shutdown()
    assert probe["curlExit"] == 60
    assert "no alternative certificate subject name matches target host name '127.0.0.1'" in probe["error"]
    assert "is 127.0.0.1:" in problems(verify_ha(ha_sample("ha-facts-3.json"), probe, CP3))[0]


def test_the_probe_refuses_a_load_balancer_flag_that_is_not_true_or_false(node):
    step = api_probe_step("127.0.0.1:6443", True)
    args = tuple((k, "yes" if k == "through-load-balancer" else v) for k, v in step.args)
    result = node.run(dataclasses.replace(step, args=args))
    assert result.returncode == 1
    assert "--through-load-balancer must be true or false" in result.stderr


# --- Under the mock engine -----------------------------------------------------------------------


def nodes_of(program, role: str) -> list[str]:
    """The stack's nodes of a role by index (instances register in no particular order)."""
    names = [r.inputs["name"] for r in node_vms(program) if f"-{role}-" in r.inputs["name"]]
    return sorted(names, key=lambda name: int(name.rsplit("-", 1)[1]))


def control_planes_of(program) -> list[str]:
    return nodes_of(program, "cp")


def workers_of(program) -> list[str]:
    return nodes_of(program, "worker")


def ha_commands(program) -> list[str]:
    return [r.name for r in program.of_type(COMMAND) if r.name.endswith(("-ha-facts", "-api-probe"))]


def test_one_control_plane_has_no_ha_section_and_reports_ha_as_null():
    program = cached_run("dev")
    assert len(control_planes_of(program)) == 1
    assert ha_commands(program) == []
    assert program.output("verification")["ha"] is None


def ha_stacks() -> list[str]:
    return [s for s in STACKS if len(control_planes_of(cached_run(s))) >= 3]


def test_a_stack_with_three_control_planes_proves_ha_after_the_mesh_facts_and_before_the_verdict():
    stacks = ha_stacks()
    assert stacks, "no stack has 3 or more control planes"
    for stack in stacks:
        program = cached_run(stack)
        names = control_planes_of(program)
        probe_node = workers_of(program)[0]
        facts = program.one(COMMAND, "proof-mesh-facts")
        gate = program.one(COMMAND, "proof-verdict")
        ha = program.one(COMMAND, "proof-ha-facts")
        probe = program.one(COMMAND, f"{probe_node}-api-probe")
        # A control plane's VM replaced (same name, new instance) gathers again too.
        instance_ids = {
            r.inputs["name"]: program.states[r.urn]["instanceId"]
            for r in node_vms(program)
            if r.inputs["name"] in names
        }
        assert len(instance_ids) == len(names)
        assert_connects_to(program, ha.inputs["connection"]["value"], names[0])
        assert_connects_to(program, probe.inputs["connection"]["value"], probe_node)
        for step in (ha, probe):
            assert facts.urn in step.dependencies
            assert step.urn in gate.dependencies
            assert " ".join(names) in step.inputs["triggers"]
            assert set(instance_ids.values()) <= set(step.inputs["triggers"])
        assert command_args(ha.inputs["create"]) == {
            "--control-planes": " ".join(names),
            "--proof-service-account": "kata-mesh-proof",
            "--proof-service-account-namespace": "kube-system",
            "--attempts": str(HA_FACTS_ATTEMPTS),
        }
        probed = command_args(probe.inputs["create"])
        assert f"https://{probed['--endpoint']}" == program.output("apiEndpoint")
        assert probed["--ca-cert"] == CLUSTER_CA and probed["--through-load-balancer"] == "true"
        report = program.output("verification")
        assert report["passed"] is True, report["problems"]
        assert report["ha"]["controlPlanes"] == report["ha"]["etcdHealthy"] == len(names)
        assert [n["name"] for n in report["ha"]["nodes"]] == names
        assert report["ha"]["api"]["from"] == probe_node
        assert report["ha"]["api"]["throughLoadBalancer"] is True


# Runs of the program of their own: with the system tests (the plain suite's time budget).
@pytest.mark.system
def test_without_workers_the_first_control_plane_probes_and_says_it_is_not_through_the_load_balancer():
    stack = ha_stacks()[0]
    program = run_program(stack, preview=False, overrides={f"{PROJECT}:workerCount": 0})
    names = control_planes_of(program)
    probe = program.one(COMMAND, f"{names[0]}-api-probe")
    assert command_args(probe.inputs["create"])["--through-load-balancer"] == "false"
    report = program.output("verification")
    # The mock puts httpbin on worker-0 whatever the stack: only the HA checks are asked here.
    assert not [p for p in report["problems"] if "etcd" in p or "Node" in p or "the API" in p]
    assert report["ha"]["etcdHealthy"] == len(names)
    assert (report["ha"]["api"]["from"], report["ha"]["api"]["throughLoadBalancer"]) == (names[0], False)


# Runs of the program of their own: with the system tests (the plain suite's time budget).
@pytest.mark.system
def test_five_control_planes_run_the_ha_steps_again_and_add_their_evidence():
    stack = ha_stacks()[0]
    three = cached_run(stack)
    five = run_program(stack, preview=False, overrides={f"{PROJECT}:controlPlaneCount": 5})
    assert len(control_planes_of(five)) == 5
    assert five.output("verification")["ha"]["etcdHealthy"] == 5
    probe = f"{workers_of(three)[0]}-api-probe"
    for name in ("proof-ha-facts", probe):
        assert three.one(COMMAND, name).inputs["triggers"] != five.one(COMMAND, name).inputs["triggers"]
    # Nodes added move no pod (issue 15): the app's facts and the other nodes' evidence stay as
    # they are, each new control plane brings its own evidence, and the verdict judges it.
    for name in ("proof-mesh-facts", f"{control_planes_of(three)[0]}-kata-evidence"):
        assert three.one(COMMAND, name).inputs == five.one(COMMAND, name).inputs
    added = [f"{node}-kata-evidence" for node in control_planes_of(five)[3:]]
    assert len(added) == 2 and not [r for r in three.of_type(COMMAND) if r.name in added]
    assert all(five.one(COMMAND, name) for name in added)
    verdict = five.one(COMMAND, "proof-verdict")
    assert set(verdict.dependencies) >= {five.one(COMMAND, name).urn for name in added}
    assert three.one(COMMAND, "proof-verdict").inputs["triggers"] != verdict.inputs["triggers"]


@pytest.mark.parametrize("stack", STACKS)
def test_a_replaced_vm_replaces_every_step_of_the_proof(stack):
    """A VM replaced takes its pods with it: the proof's steps are replaced with it (replace_with),
    which an added VM (a create) does not do."""
    program = cached_run(stack)
    instances = {vm.urn for vm in node_vms(program)}
    proof = [r for r in program.of_type(COMMAND) if "kata-mesh:proof:Proof$" in r.urn]
    assert {r.name for r in proof} >= {"proof-mesh-facts", "proof-verdict"}
    for step in proof:
        assert set(step.replace_with) == instances, step.name
    # A VM made again outside a replacement (gone, refreshed, created) is caught by its id: its
    # evidence runs again, and the verdict, which judges every node's.
    ids = {vm.inputs["name"]: program.states[vm.urn]["instanceId"] for vm in node_vms(program)}
    for node, instance_id in ids.items():
        assert instance_id in program.one(COMMAND, f"{node}-kata-evidence").inputs["triggers"]
    assert set(ids.values()) <= set(program.one(COMMAND, "proof-verdict").inputs["triggers"])


def test_a_preview_declares_the_ha_steps_before_the_endpoint_is_known():
    stack = ha_stacks()[0]
    program = cached_run(stack, preview=True)
    probe_node = workers_of(program)[0]
    assert sorted(ha_commands(program)) == sorted(["proof-ha-facts", f"{probe_node}-api-probe"])
