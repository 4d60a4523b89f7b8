"""The proof's versions: every meshed app pod's istio-proxy must run istiod's version (the one check
on versions), and the report says what every node runs (kubelet, container runtime, Kata, the
sidecars), judged by nothing else.

istiod's version is the tag of the proxy it injects now: the one on the in-mesh client that
96-mesh-facts.sh makes afresh each run (istiod's chart draws its own image's tag and the injected
proxy's from one value, global.tag). The recorded pods (kubectl-get-pods.json) carry Istio's
proxy image as injected, docker.io/istio/proxyv2:<tag>. kata-runtime-version.txt is written by
hand in kata-runtime's `--version` format (kata-containers src/runtime/cmd/kata-runtime/main.go,
makeVersionString: "kata-runtime  : <version>", then the commit and the OCI spec, indented); only
its first line is read.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from harness import (
    KATA_GUEST_KERNEL,
    STACKS,
    cached_run,
    require_tool,
    sample,
    sample_evidence,
    sample_facts,
)
from test_verification import FACTS_ARGS, fake_kubectl, fake_tools, run_facts_with, run_script

from components.verification import image_tag, kata_version, verify

NODE = "kata-mesh-dev-worker-0"
CP = "kata-mesh-dev-cp-0"
NAMESPACES = {"httpbin": "httpbin", "httpbin-runc": "httpbin-runc"}
KATA_POD = "httpbin-6b8f7c9d4-x2x7k"
RUNC_POD = "httpbin-runc-5d9c8b7f6-q9w8e"


@pytest.fixture
def jq() -> None:
    require_tool("jq")


def with_proxy(facts: dict, pod: str, image: str) -> dict:
    """The facts with one pod's istio-proxy made from another image."""
    facts = copy.deepcopy(facts)
    [item] = [p for p in facts["pods"]["items"] if p["metadata"]["name"] == pod]
    [proxy] = [c for c in item["spec"]["initContainers"] if c["name"] == "istio-proxy"]
    proxy["image"] = image
    return facts


def evidence(node: str, kata_runtime: str | None = "kata-runtime  : 3.32.0") -> dict:
    doc = sample_evidence(node)
    if kata_runtime is not None:
        doc["kataRuntime"] = kata_runtime
    return doc


def judged(facts: dict, nodes: tuple[str, ...] = (NODE,)):
    return verify(facts, [evidence(n) for n in nodes], "httpbin", "httpbin-runc", namespaces=NAMESPACES)


# --- The sidecars against istiod ------------------------------------------------------------------


def test_sidecars_at_istiods_version_pass_and_are_reported():
    report = judged(sample_facts(NODE))
    assert report.passed, report.problems
    assert report.details["istio"] == {
        "istiod": "1.30.4",
        "injectedImage": "docker.io/istio/proxyv2:1.30.4",
        "from": "httpbin/mesh-client",
        "sidecars": {f"httpbin/{KATA_POD}": "1.30.4", f"httpbin-runc/{RUNC_POD}": "1.30.4"},
        "sidecarsMatch": True,
    }


def test_a_sidecar_older_than_istiod_fails_naming_the_pod_and_both_versions():
    """Istio upgraded and the pod not made again: its proxy is the old release's."""
    report = judged(with_proxy(sample_facts(NODE), KATA_POD, "docker.io/istio/proxyv2:1.30.3"))
    assert report.problems == [
        f"httpbin/{KATA_POD}'s istio-proxy runs Istio 1.30.3 (docker.io/istio/proxyv2:1.30.3), not "
        "istiod's 1.30.4 (the proxy it injects now, docker.io/istio/proxyv2:1.30.4): the pod predates "
        "the control plane's upgrade; restart it with kubectl -n httpbin rollout restart deployment/httpbin"
    ]
    assert report.details["istio"]["sidecarsMatch"] is False
    assert report.details["istio"]["sidecars"][f"httpbin/{KATA_POD}"] == "1.30.3"


def test_every_app_pod_is_checked_against_an_upgraded_istiod_the_runc_twin_too():
    """istiod at 1.30.5 (the fresh client has its proxy), both apps still on 1.30.4: two problems."""
    facts = with_proxy(sample_facts(NODE), "mesh-client", "docker.io/istio/proxyv2:1.30.5")
    report = judged(facts)
    assert [p.split("'s istio-proxy runs ")[0] for p in report.problems] == [
        f"httpbin/{KATA_POD}",
        f"httpbin-runc/{RUNC_POD}",
    ]
    for problem in report.problems:
        assert "runs Istio 1.30.4 (docker.io/istio/proxyv2:1.30.4), not istiod's 1.30.5" in problem
    assert report.details["istio"]["istiod"] == "1.30.5"


def test_an_old_pod_still_terminating_after_the_restart_is_not_judged():
    facts = sample_facts(NODE)
    old = copy.deepcopy(next(p for p in facts["pods"]["items"] if p["metadata"]["name"] == KATA_POD))
    old["metadata"].update(name="httpbin-5d9c8b7a6-oldpd", deletionTimestamp="2026-11-25T21:05:00Z")
    facts["pods"]["items"].append(old)
    facts = with_proxy(facts, "httpbin-5d9c8b7a6-oldpd", "docker.io/istio/proxyv2:1.30.3")
    report = judged(facts)
    assert report.passed, report.problems
    assert "httpbin/httpbin-5d9c8b7a6-oldpd" not in report.details["istio"]["sidecars"]


def test_a_replica_left_behind_fails_even_beside_a_current_one():
    """Two replicas: the newest is judged for the rest of the proof, but every one for its sidecar."""
    facts = sample_facts(NODE)
    second = copy.deepcopy(next(p for p in facts["pods"]["items"] if p["metadata"]["name"] == KATA_POD))
    second["metadata"].update(name="httpbin-6b8f7c9d4-r7t2w", creationTimestamp="2026-11-25T21:00:00Z")
    facts["pods"]["items"].append(second)
    report = judged(with_proxy(facts, "httpbin-6b8f7c9d4-r7t2w", "docker.io/istio/proxyv2:1.30.3"))
    assert [p.split("'s istio-proxy")[0] for p in report.problems] == ["httpbin/httpbin-6b8f7c9d4-r7t2w"]


def test_without_the_mesh_clients_sidecar_istiods_version_is_unknown_and_said():
    facts = sample_facts(NODE)
    client = next(p for p in facts["pods"]["items"] if p["metadata"]["name"] == "mesh-client")
    client["spec"]["initContainers"] = []
    report = judged(facts)
    assert report.problems == [
        "could not tell istiod's version: the in-mesh client httpbin/mesh-client, which istiod injects "
        "afresh each run, has no istio-proxy container in the facts"
    ]
    assert report.details["istio"]["istiod"] is None


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("docker.io/istio/proxyv2:1.30.4", "1.30.4"),
        ("gcr.io/istio-release/proxyv2:1.30.4-distroless", "1.30.4-distroless"),
        ("registry.local:5000/istio/proxyv2:1.30.4", "1.30.4"),
        ("docker.io/istio/proxyv2:1.30.4@sha256:" + "a" * 64, "1.30.4"),
        ("registry.local:5000/istio/proxyv2@sha256:" + "b" * 64, "sha256:" + "b" * 64),
        ("docker.io/istio/proxyv2", "latest"),
    ],
)
def test_an_images_tag_is_read_as_a_registry_reads_the_reference(image, tag):
    assert image_tag(image) == tag


# --- What every node runs -------------------------------------------------------------------------


def test_the_versions_every_node_runs_are_reported_per_node():
    report = verify(
        sample_facts(NODE),
        [evidence(NODE), evidence(CP, kata_runtime="")],
        "httpbin",
        "httpbin-runc",
        namespaces=NAMESPACES,
    )
    assert report.passed, report.problems
    assert report.details["versions"] == {
        CP: {"kubelet": "v1.36.4", "containerRuntime": "containerd://2.3.4", "kata": None, "istioProxy": {}},
        NODE: {
            "kubelet": "v1.36.4",
            "containerRuntime": "containerd://2.3.4",
            "kata": "3.32.0",
            "istioProxy": {f"httpbin/{KATA_POD}": "1.30.4", f"httpbin-runc/{RUNC_POD}": "1.30.4"},
        },
    }


def test_versions_that_differ_between_nodes_are_reported_and_fail_nothing():
    """Mid-upgrade skew (a kubelet, containerd and Kata behind on one node) is a fact, not a failure."""
    facts = sample_facts(NODE)
    cp = next(n for n in facts["nodes"]["items"] if n["metadata"]["name"] == CP)
    cp["status"]["nodeInfo"].update(kubeletVersion="v1.35.9", containerRuntimeVersion="containerd://2.2.1")
    report = verify(
        facts,
        [evidence(NODE), evidence(CP, kata_runtime="kata-runtime  : 3.31.0")],
        "httpbin",
        "httpbin-runc",
        namespaces=NAMESPACES,
    )
    assert report.passed, report.problems
    assert report.details["versions"][CP] == {
        "kubelet": "v1.35.9",
        "containerRuntime": "containerd://2.2.1",
        "kata": "3.31.0",
        "istioProxy": {},
    }


@pytest.mark.parametrize(
    ("first_line", "version"),
    [("kata-runtime  : 3.32.0", "3.32.0"), ("", None), (None, None), ("kata-runtime  : ", None)],
)
def test_katas_version_is_read_from_the_first_line_of_kata_runtime_version(first_line, version):
    assert kata_version(first_line) == version


EVIDENCE_ARGS = (("namespaces", "httpbin httpbin-runc"), ("cgroup-root", "/nonexistent"))


def evidence_tools(tmp_path: Path, kata_runtime: str) -> dict[str, str]:
    """95-kata-evidence.sh's tools replaying the recordings, with kata-runtime as given."""
    return fake_tools(
        tmp_path,
        {
            "crictl": 'case "$1" in pods) cat "$SAMPLES/crictl-pods.json" ;; *) cat "$SAMPLES/crictl-inspectp-kata.json" ;; esac',
            "ps": 'cat "$SAMPLES/ps-args-worker.txt"',
            "hostname": f"echo {NODE}",
            "uname": "echo 6.8.0-1017-gcp",
            "kata-runtime": kata_runtime,
        },
    )


def test_the_evidence_script_records_the_first_line_of_kata_runtime_version(tmp_path, jq):
    env = evidence_tools(
        tmp_path,
        '[[ $* == --version ]] || exit 1\ncat "$SAMPLES/kata-runtime-version.txt"',
    )
    result = run_script("95-kata-evidence.sh", EVIDENCE_ARGS, env)
    assert result.returncode == 0, result.stderr
    recorded = json.loads(result.stdout)
    assert recorded["kataRuntime"] == "kata-runtime  : 3.32.0"
    assert recorded["kataRuntime"] == sample("kata-runtime-version.txt").splitlines()[0]
    report = verify(sample_facts(NODE), [recorded], "httpbin", "httpbin-runc", namespaces=NAMESPACES)
    assert report.details["versions"][NODE]["kata"] == "3.32.0"


def test_without_kata_runtime_the_evidence_says_nothing_of_kata(tmp_path, jq):
    env = evidence_tools(tmp_path, 'echo "bash: kata-runtime: command not found" >&2; exit 127')
    result = run_script("95-kata-evidence.sh", EVIDENCE_ARGS, env)
    assert result.returncode == 0, result.stderr
    recorded = json.loads(result.stdout)
    assert recorded["kataRuntime"] == ""
    report = verify(sample_facts(NODE), [recorded], "httpbin", "httpbin-runc", namespaces=NAMESPACES)
    assert report.details["versions"][NODE]["kata"] is None


def test_the_facts_script_gathers_what_the_sidecar_check_reads(tmp_path, jq):
    """96-mesh-facts.sh on the recordings: the pods' lists carry each app pod's proxy and the fresh
    client's, so the check needs no other call (and the proof's account no other right)."""
    result = run_facts_with(tmp_path, fake_kubectl("curl-get-mtls.txt"), FACTS_ARGS)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["podKernels"] == {KATA_POD: KATA_GUEST_KERNEL}
    report = verify(facts, [evidence(NODE)], "httpbin", None, namespaces=NAMESPACES)
    assert report.passed, report.problems
    assert report.details["istio"]["istiod"] == "1.30.4"
    assert report.details["istio"]["sidecars"] == {f"httpbin/{KATA_POD}": "1.30.4"}


# --- In the stack output ----------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_verification_output_reports_each_nodes_versions_and_the_sidecars(stack):
    report = cached_run(stack).output("verification")
    assert report["passed"] is True, report["problems"]
    assert report["istio"]["istiod"] == "1.30.4" and report["istio"]["sidecarsMatch"] is True
    # The mock's nodes answer with the recordings: each node's kubelet and runtime as kubectl
    # listed them (the dev names), and Kata as kata-runtime printed it on every stack node.
    versions = report["versions"]
    for node in (CP, NODE):
        assert {k: versions[node][k] for k in ("kubelet", "containerRuntime")} == {
            "kubelet": "v1.36.4",
            "containerRuntime": "containerd://2.3.4",
        }
    stack_nodes = [n for n in versions if n.startswith(f"kata-mesh-{stack}-")]
    assert stack_nodes and all(versions[n]["kata"] == "3.32.0" for n in stack_nodes)
    assert versions[f"kata-mesh-{stack}-worker-0"]["istioProxy"][f"httpbin/{KATA_POD}"] == "1.30.4"
