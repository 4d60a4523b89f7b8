"""Judging the proof: is httpbin Running 2/2 with its sidecar, in a Kata VM, answering over mTLS?
Do the meshed apps' sidecars run istiod's version? Does the hardening hold: a runc pod refused in the sandbox namespace by its admission policy, the
metadata server giving no answer to an in-mesh Kata pod, a plaintext request from outside the mesh
refused by httpbin? And, with 3 or more control planes, is the control plane highly available:
every control-plane Node Ready, one healthy etcd member per control plane, the API answering
through the load balancer?

Pure functions over what the verification scripts gather (kubectl and crictl JSON, `ps` output,
the in-mesh request, kubectl's and curl's words and exit codes for the hardening's attempts,
etcdctl's member list and health, the API's /readyz), so every verdict can be tested on recorded
samples. The report also carries the versions found on every node (kubelet, container runtime,
Kata, the meshed apps' sidecars), which no check judges but the sidecars' against istiod's.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from components.admission import POLICY_NAME, RUNTIME_MESSAGE, SANDBOX_LABEL
from components.node_provisioning import METADATA_BLOCK_TABLE, METADATA_BLOCK_UNIT

SIDECAR = "istio-proxy"
KATA_HANDLER = "kata"
# Kata's processes on the node, and runc's, as the seed saw them.
KATA_PROCESSES = ("containerd-shim-kata-v2", "qemu-system-x86_64", "virtiofsd")
RUNC_PROCESSES = ("containerd-shim-runc-v2",)
MTLS_HEADER = "x-forwarded-client-cert"


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "problems": self.problems, **self.details}


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def app_pod(pods: dict, app: str, namespace: str | None = None) -> dict | None:
    """The newest non-terminating pod labelled app=<app> (in the namespace, when one is given)."""
    candidates = [
        p
        for p in pods.get("items", [])
        if p["metadata"].get("labels", {}).get("app") == app
        and "deletionTimestamp" not in p["metadata"]
        and namespace in (None, p["metadata"].get("namespace"))
    ]
    # The newest, ties (replicas started in the same second) broken by name: the pod
    # 96-mesh-facts.sh measured (jq's sort_by on the same two keys, then the last).
    candidates.sort(key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]), reverse=True)
    return candidates[0] if candidates else None


def containers_ready(pod: dict) -> tuple[int, int, bool]:
    """(ready, total, has sidecar) as kubectl's READY column counts them: containers plus native
    sidecars (init containers with restartPolicy Always, which Istio uses on recent Kubernetes)."""
    spec, status = pod["spec"], pod.get("status", {})
    sidecars = [c["name"] for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    names = [c["name"] for c in spec["containers"]] + sidecars
    statuses = status.get("containerStatuses", []) + [
        s for s in status.get("initContainerStatuses", []) if s["name"] in sidecars
    ]
    ready = sum(1 for s in statuses if s.get("ready"))
    return ready, len(names), SIDECAR in names


def app_pods(pods: dict, app: str, namespace: str | None = None) -> list[dict]:
    """Every non-terminating pod labelled app=<app> (in the namespace, when one is given), by name."""
    found = [
        p
        for p in pods.get("items", [])
        if p["metadata"].get("labels", {}).get("app") == app
        and "deletionTimestamp" not in p["metadata"]
        and namespace in (None, p["metadata"].get("namespace"))
    ]
    return sorted(found, key=lambda p: p["metadata"]["name"])


def sidecar_image(pod: dict) -> str | None:
    """The image of the pod's istio-proxy container (a native sidecar among the init containers on
    recent Kubernetes, else a container): what istiod injected when the pod was made."""
    spec = pod.get("spec", {})
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if container.get("name") == SIDECAR:
            return container.get("image")
    return None


def image_tag(image: str) -> str:
    """An image reference's tag (docker.io/istio/proxyv2:1.30.4 -> 1.30.4; a digest after it is
    dropped); an untagged reference is its digest, or `latest` as a registry reads it."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return last.rsplit(":", 1)[1]
    return digest or "latest"


def pod_label(pod: dict) -> str:
    return f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}"


def seconds_to_ready(pod: dict) -> float | None:
    for condition in pod.get("status", {}).get("conditions", []):
        if condition["type"] == "Ready" and condition["status"] == "True":
            created = _time(pod["metadata"]["creationTimestamp"])
            return (_time(condition["lastTransitionTime"]) - created).total_seconds()
    return None


def node_kernel(nodes: dict, node_name: str) -> str | None:
    for node in nodes.get("items", []):
        if node["metadata"]["name"] == node_name:
            return node["status"]["nodeInfo"]["kernelVersion"]
    return None


def process_counts(ps_args: str) -> dict[str, int]:
    """How many of Kata's and runc's processes `ps -e -o args=` shows (by program name)."""
    programs = [os.path.basename(line.split()[0]) for line in ps_args.splitlines() if line.strip()]
    return {name: programs.count(name) for name in (*KATA_PROCESSES, *RUNC_PROCESSES)}


def sandbox(evidence: dict, pod: dict) -> tuple[str | None, dict | None]:
    """The pod's sandbox as crictl reports it on its node: (runtime handler, inspectp document)."""
    uid = pod["metadata"]["uid"]
    for item in evidence.get("pods", {}).get("items", []):
        if item["metadata"].get("uid") == uid:
            inspected = evidence.get("inspect", {}).get(item["id"])
            handler = item.get("runtimeHandler")
            if inspected:
                handler = inspected.get("status", {}).get("runtimeHandler", handler)
            return handler, inspected
    return None, None


def request_outcome(request: dict) -> tuple[int | None, bool]:
    """(HTTP status, whether httpbin saw a client certificate forwarded by its sidecar)."""
    try:
        status = int(request.get("status", ""))
    except ValueError:
        status = None
    try:
        headers = json.loads(request.get("body", "")).get("headers", {})
    except (ValueError, AttributeError):
        headers = {}
    mtls = any(k.lower() == MTLS_HEADER and "spiffe://" in str(v) for k, v in headers.items())
    return status, mtls


def _runtime_details(
    report: Report, app: str, namespace: str | None, facts: dict, evidence: Sequence[dict], want_kata: bool
) -> dict[str, Any] | None:
    pod = app_pod(facts.get("pods", {}), app, namespace)
    if pod is None:
        report.problems.append(f"no {app} pod found" + (f" in namespace {namespace}" if namespace else ""))
        return None
    name = pod["metadata"]["name"]
    node = pod["spec"].get("nodeName")
    phase = pod.get("status", {}).get("phase")
    ready, total, has_sidecar = containers_ready(pod)
    if phase != "Running":
        report.problems.append(f"{name} is {phase}, not Running")
    if not has_sidecar:
        report.problems.append(
            f"{name} has no {SIDECAR} sidecar: is the namespace labelled istio-injection=enabled?"
        )
    if ready != total or total != 2:
        report.problems.append(f"{name} is {ready}/{total} ready, not 2/2 (the app and its sidecar)")
    node_evidence = next((e for e in evidence if e.get("node") == node), None)
    if node_evidence is None:
        report.problems.append(f"no runtime evidence from node {node} where {name} runs")
        node_evidence = {}
    handler, _ = sandbox(node_evidence, pod)
    processes = process_counts(node_evidence.get("processes", ""))
    pod_kernel = facts.get("podKernels", {}).get(name) or None
    host_kernel = node_evidence.get("kernel") or node_kernel(facts.get("nodes", {}), node or "")
    if want_kata:
        if handler != KATA_HANDLER:
            report.problems.append(
                f"{name}'s sandbox runs under runtime handler {handler!r}, not {KATA_HANDLER!r}"
            )
        if not pod_kernel or pod_kernel == host_kernel:
            report.problems.append(
                f"{name}'s kernel ({pod_kernel}) is not its own: a Kata VM boots a guest kernel, "
                f"the node runs {host_kernel}"
            )
        for program in KATA_PROCESSES[:2]:
            if processes.get(program, 0) == 0:
                report.problems.append(f"no {program} process on {node}")
    elif handler == KATA_HANDLER:
        report.problems.append(f"{name} was meant to run under runc but runs under Kata")
    return {
        "pod": name,
        "namespace": pod["metadata"].get("namespace"),
        "node": node,
        "phase": phase,
        "ready": f"{ready}/{total}",
        "sidecar": has_sidecar,
        "runtimeHandler": handler,
        "podKernel": pod_kernel,
        "nodeKernel": host_kernel,
        "processes": processes,
        "startupSeconds": seconds_to_ready(pod),
        "memoryBytes": node_evidence.get("memory", {}).get(pod["metadata"]["uid"]),
    }


def verify(
    facts: dict,
    evidence: Sequence[dict],
    app: str,
    runc_twin: str | None,
    ha: HaEvidence | None = None,
    namespaces: Mapping[str, str] | None = None,
    hardening: Mapping[str, Any] | None = None,
) -> Report:
    """Every check of the proof; the report carries the measurements of Kata beside runc, the
    meshed apps' sidecar versions against istiod's under "istio", what every node runs under
    "versions", and, with 3 or more control planes (`ha`), the HA checks under "ha" (null
    otherwise).

    `namespaces` maps an app to its namespace (the Kata app's sandbox, the runc twin's own): its
    pod is looked for there only. An app it does not name is looked for in every namespace.

    `hardening` is what 96-mesh-facts.sh recorded of the hardening's three attempts (its
    "hardening" part; the proof always passes it, an empty one failing every check): judged under
    "hardening". None leaves them unjudged (null), for callers about the other checks only."""
    where = dict(namespaces or {})
    report = Report()
    report.details["kata"] = _runtime_details(report, app, where.get(app), facts, evidence, want_kata=True)
    report.details["runc"] = (
        _runtime_details(report, runc_twin, where.get(runc_twin), facts, evidence, want_kata=False)
        if runc_twin
        else None
    )
    kata, runc = report.details["kata"], report.details["runc"]
    report.details["kataCostBesideRunc"] = (
        {
            key: kata[key] - runc[key]
            for key in ("startupSeconds", "memoryBytes")
            if kata.get(key) is not None and runc.get(key) is not None
        }
        if kata and runc
        else None
    )
    status, mtls = request_outcome(facts.get("request", {}))
    report.details["request"] = {"status": status, "mutualTls": mtls}
    if status != 200:
        report.problems.append(f"the in-mesh request to {app} answered {status}, not 200")
    elif not mtls:
        report.problems.append(
            f"the request reached {app} without mutual TLS (no X-Forwarded-Client-Cert with a SPIFFE identity)"
        )
    apps = {app: where.get(app), **({runc_twin: where.get(runc_twin)} if runc_twin else {})}
    meshed = [
        pod for name, namespace in apps.items() for pod in app_pods(facts.get("pods", {}), name, namespace)
    ]
    report.details["istio"] = _sidecar_versions(report, facts, meshed, where.get(app))
    report.details["versions"] = node_versions(facts, evidence, meshed)
    report.details["hardening"] = None
    if hardening is not None:
        client = app_pod(facts.get("pods", {}), MESH_CLIENT, where.get(app))
        hardening_report = verify_hardening(
            hardening, app, client["spec"].get("nodeName") if client else None
        )
        report.problems.extend(hardening_report.problems)
        report.details["hardening"] = hardening_report.details
    report.details["ha"] = None
    if ha is not None:
        ha_report = verify_ha(ha.facts, ha.probe, ha.control_planes)
        report.problems.extend(ha_report.problems)
        report.details["ha"] = ha_report.details
    return report


# --- Versions: the sidecars against istiod, and what every node runs ------------------------------


def _sidecar_versions(
    report: Report, facts: dict, meshed: Sequence[dict], client_namespace: str | None
) -> dict[str, Any]:
    """Each meshed app pod's istio-proxy must run istiod's version, or the pod predates an Istio
    upgrade. istiod's version is the tag of the proxy it injects now: the one on the in-mesh client
    that 96-mesh-facts.sh makes afresh each run (istiod's chart draws its own image's tag and the
    injected proxy's from one value, global.tag)."""
    client = app_pod(facts.get("pods", {}), MESH_CLIENT, client_namespace)
    injected = sidecar_image(client) if client else None
    istiod = image_tag(injected) if injected else None
    sidecars: dict[str, str] = {}
    for pod in meshed:
        image = sidecar_image(pod)
        if image is None:
            # No sidecar at all: the pod's own check says so.
            continue
        name, tag = pod_label(pod), image_tag(image)
        sidecars[name] = tag
        if istiod is not None and tag != istiod:
            app = pod["metadata"].get("labels", {}).get("app")
            report.problems.append(
                f"{name}'s {SIDECAR} runs Istio {tag} ({image}), not istiod's {istiod} (the proxy it "
                f"injects now, {injected}): the pod predates the control plane's upgrade; restart it "
                f"with kubectl -n {pod['metadata'].get('namespace')} rollout restart deployment/{app}"
            )
    if istiod is None and sidecars:
        where = pod_label(client) if client else f"{MESH_CLIENT} (not found)"
        report.problems.append(
            f"could not tell istiod's version: the in-mesh client {where}, which istiod injects afresh "
            f"each run, has no {SIDECAR} container in the facts"
        )
    return {
        "istiod": istiod,
        "injectedImage": injected,
        "from": pod_label(client) if client else None,
        "sidecars": sidecars,
        "sidecarsMatch": istiod is not None and all(tag == istiod for tag in sidecars.values()),
    }


def kata_version(first_line: str | None) -> str | None:
    """Kata's version from the first line of `kata-runtime --version` ("kata-runtime  : 3.32.0")."""
    _, colon, version = (first_line or "").partition(":")
    return (version.strip() or None) if colon else None


def node_versions(facts: dict, evidence: Sequence[dict], meshed: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """What every node runs, by node name: kubelet and container runtime as its Node reports them
    (status.nodeInfo), Kata as 95-kata-evidence.sh read it on the node (null where kata-runtime is
    missing), and the istio-proxy version of each meshed app pod on it. Reported, never judged."""
    infos = {
        node["metadata"]["name"]: node.get("status", {}).get("nodeInfo", {})
        for node in facts.get("nodes", {}).get("items", [])
    }
    katas = {e["node"]: kata_version(e.get("kataRuntime")) for e in evidence if e.get("node")}
    proxies: dict[str, dict[str, str]] = {}
    for pod in meshed:
        image = sidecar_image(pod)
        node = pod.get("spec", {}).get("nodeName")
        if image is not None and node:
            proxies.setdefault(node, {})[pod_label(pod)] = image_tag(image)
    return {
        node: {
            "kubelet": infos.get(node, {}).get("kubeletVersion"),
            "containerRuntime": infos.get(node, {}).get("containerRuntimeVersion"),
            "kata": katas.get(node),
            "istioProxy": proxies.get(node, {}),
        }
        for node in sorted({*infos, *katas, *proxies})
    }


# --- The hardening: three attempts that must fail ---------------------------------------------------

# The in-mesh client 96-mesh-facts.sh runs (label app=mesh-client), in a Kata VM with its sidecar.
MESH_CLIENT = "mesh-client"
# How the API server words a ValidatingAdmissionPolicy's denial (k8s.io/apiserver, admission
# plugin policy/validating, dispatcher.go): "ValidatingAdmissionPolicy '<policy>' with binding
# '<binding>' denied request: <the validation's message>", inside "<resource> "<name>" is
# forbidden: ..." (admission.NewForbidden) that kubectl prints after "Error from server (<reason>): ".
VAP_DENIAL = re.compile(
    r"ValidatingAdmissionPolicy '(?P<policy>[^']*)'(?: with binding '(?P<binding>[^']*)')? "
    r"denied request: (?P<message>.*)"
)
# curl's exit codes for a request that got no answer at all: the connection refused (7), nothing
# within its time (28), the connection closed (52: "Empty reply from server") or reset (56:
# "Recv failure: Connection reset by peer") before any response.
CURL_COULD_NOT_CONNECT, CURL_TIMED_OUT, CURL_EMPTY_REPLY, CURL_RECV_ERROR = 7, 28, 52, 56
CURL_NO_ANSWER = (CURL_COULD_NOT_CONNECT, CURL_TIMED_OUT, CURL_EMPTY_REPLY, CURL_RECV_ERROR)
# What httpbin's sidecar does to a plaintext connection under STRICT mutual TLS: it closes or
# resets it (no TLS handshake, no filter chain); its AuthorizationPolicy answers 403 to a request
# without a mesh identity, should mutual TLS ever let one in.
CURL_CLOSED_BY_PEER = (CURL_EMPTY_REPLY, CURL_RECV_ERROR)
AUTHORIZATION_DENIED = 403


def curl_outcome(probe: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(HTTP status, curl's exit code) of a probe; the status None when no answer came (curl's
    %{http_code} is 000 then), the exit code None when curl never ran."""
    try:
        status = int(str(probe.get("status") or ""))
    except ValueError:
        status = None
    code = probe.get("curlExit")
    return (status or None), (code if isinstance(code, int) and not isinstance(code, bool) else None)


def policy_denial(output: str) -> tuple[str, str] | None:
    """(policy name, its message) when kubectl's words carry a ValidatingAdmissionPolicy denial."""
    for line in output.splitlines():
        found = VAP_DENIAL.search(line)
        if found:
            return found["policy"], found["message"].strip()
    return None


def _said(output: str) -> str:
    """kubectl's words without its warnings (Pod Security's `warn` level in a sandbox namespace)."""
    return "\n".join(
        line for line in output.strip().splitlines() if line.strip() and not line.startswith("Warning: ")
    )


def _runc_refused(report: Report, probe: Mapping[str, Any] | None) -> dict[str, Any]:
    probe = probe or {}
    namespace = probe.get("namespace") or "the sandbox namespace"
    code, message = probe.get("exitCode"), _said(str(probe.get("output") or ""))
    denial = policy_denial(message)
    refused = (
        isinstance(code, int)
        and code != 0
        and denial is not None
        and denial[0] == POLICY_NAME
        and RUNTIME_MESSAGE in denial[1]
    )
    details = {"refused": refused, "namespace": probe.get("namespace"), "exitCode": code, "message": message}
    if refused:
        return details
    check = (
        f"check that the ValidatingAdmissionPolicy {POLICY_NAME} and its binding exist "
        f"(kubectl get validatingadmissionpolicy,validatingadmissionpolicybinding {POLICY_NAME}) and "
        f"that {namespace} is labelled {SANDBOX_LABEL}=true"
    )
    if not probe:
        report.problems.append("no runc probe was recorded (96-mesh-facts.sh's hardening.runcProbe)")
    elif code == 0:
        report.problems.append(
            f"a runc pod (no runtimeClassName) was admitted in sandbox namespace {namespace} "
            f"(server-side dry run): {message or 'kubectl said nothing'}; {check}"
        )
    elif denial is not None and denial[0] == POLICY_NAME:
        report.problems.append(
            f"the runc pod in {namespace} was refused by {POLICY_NAME}, but not for its runtime, so "
            f"the runtime rule let it through: {message}"
        )
    else:
        report.problems.append(
            f"the runc pod in {namespace} was refused (kubectl exit {code}), but not by the sandbox "
            f"policy {POLICY_NAME}, so it proves nothing about it: {message or 'kubectl said nothing'}; "
            f"check what refused it (the proof's permissions, another admission step, the API server)"
        )
    return details


def _metadata_blocked(report: Report, probe: Mapping[str, Any] | None, node: str | None) -> dict[str, Any]:
    probe = probe or {}
    status, code = curl_outcome(probe)
    origin, detail = probe.get("from") or MESH_CLIENT, str(probe.get("output") or "").strip()
    blocked = status is None and code in CURL_NO_ANSWER
    dns = probe.get("dns") or {}
    details = {
        "blocked": blocked,
        "from": probe.get("from"),
        "node": node,
        "url": probe.get("url"),
        "status": status,
        "curlExit": code,
        "detail": detail,
        "dns": dns.get("answer") or None,
    }
    if blocked:
        return details
    where = f"on node {node}" if node else "on the node it runs on"
    if not probe:
        report.problems.append(
            "no metadata server probe was recorded (96-mesh-facts.sh's hardening.metadata)"
        )
    elif status is not None:
        report.problems.append(
            f"the metadata server answered HTTP {status} to the in-mesh Kata pod {origin} "
            f"({probe.get('url')}): pods can reach it and take the node's service-account token (a "
            f"blocked request gets no answer at all); check the node's block {where}: "
            f"sudo nft list table inet {METADATA_BLOCK_TABLE}; "
            f"systemctl status {METADATA_BLOCK_UNIT.rsplit('/', 1)[-1]}"
        )
    elif code is None:
        report.problems.append(
            f"could not ask the metadata server from {origin} (curl did not run): {detail or 'no output'}"
        )
    else:
        report.problems.append(
            f"the metadata request from {origin} failed with curl exit {code} ({detail}), not with "
            "no answer (refused, timed out, closed or reset), so it proves nothing about the block"
        )
    return details


def _plaintext_refused(report: Report, probe: Mapping[str, Any] | None, app: str) -> dict[str, Any]:
    probe = probe or {}
    status, code = curl_outcome(probe)
    origin, detail = probe.get("from") or "the outside client", str(probe.get("output") or "").strip()
    sidecar = probe.get("sidecar")
    closed = status is None and code in CURL_CLOSED_BY_PEER
    refused = sidecar is False and (closed or status == AUTHORIZATION_DENIED)
    details = {
        "refused": refused,
        "from": probe.get("from"),
        "url": probe.get("url"),
        "sidecar": sidecar,
        "status": status,
        "curlExit": code,
        "detail": detail,
    }
    if refused:
        return details
    if not probe:
        report.problems.append("no plaintext probe was recorded (96-mesh-facts.sh's hardening.plaintext)")
    elif sidecar is not False:
        report.problems.append(
            f"the client meant to be outside the mesh ({origin}) has an {SIDECAR} sidecar, so its "
            "request was no plaintext request from outside the mesh: check that its label "
            "sidecar.istio.io/inject=false reached the pod"
        )
    elif status is not None:
        report.problems.append(
            f"{app} answered a plaintext request from outside the mesh ({origin}, no sidecar) with "
            f"HTTP {status}: its mutual TLS is not STRICT and its AuthorizationPolicy let the request "
            "through; check kubectl get peerauthentication -A and kubectl get authorizationpolicy -A"
        )
    elif code is None:
        report.problems.append(
            f"could not send the plaintext request from {origin} (curl did not run): {detail or 'no output'}"
        )
    else:
        report.problems.append(
            f"the plaintext request from outside the mesh ({origin}) never reached {app}: curl exit "
            f"{code} ({detail}), not a connection its sidecar closed or reset, so it proves nothing; "
            f"check that {origin} can resolve and reach {probe.get('url')}"
        )
    return details


def verify_hardening(hardening: Mapping[str, Any], app: str, client_node: str | None = None) -> Report:
    """The hardening's checks on what 96-mesh-facts.sh recorded: the runc pod refused by the
    sandbox policy for its runtime, no answer from the metadata server to the in-mesh Kata client
    (on client_node), and httpbin refusing a plaintext request from a pod without a sidecar."""
    report = Report()
    report.details = {
        "runcRefused": _runc_refused(report, hardening.get("runcProbe")),
        "metadataBlocked": _metadata_blocked(report, hardening.get("metadata"), client_node),
        "plaintextRefused": _plaintext_refused(report, hardening.get("plaintext"), app),
    }
    return report


# --- The highly available control plane (3 or more control planes) ------------------------------

READYZ_ANSWER = "ok"
# curl's exit codes for a TLS handshake or certificate it refused (or a CA file it could not read).
CURL_TLS_EXITS = (35, 51, 58, 60, 77, 83, 90, 91)


@dataclass(frozen=True)
class HaEvidence:
    """What the HA steps gathered: 94-ha-facts.sh on the first control plane, 93-api-probe.sh on
    the probing node, and the control planes the stack has (their Node and etcd member names)."""

    facts: dict
    probe: dict
    control_planes: Sequence[str]


def _part(facts: dict, key: str) -> tuple[list[dict], str | None]:
    part = facts.get(key) or {}
    return list(part.get("items") or []), part.get("error")


def leaving(name: str, expected: Sequence[str]) -> bool:
    """A control plane of this stack numbered past the ones it keeps (cp-3 and cp-4 when 5 become
    3): Pulumi removes it, and its etcd member, at the end of the same update, after the proof."""
    if not expected or name in expected:
        return False
    prefix = expected[0].rsplit("-", 1)[0] + "-"
    index = name.removeprefix(prefix)
    return name.startswith(prefix) and index.isdigit() and int(index) >= len(expected)


def _ha_nodes(report: Report, facts: dict, expected: Sequence[str]) -> list[dict]:
    items, error = _part(facts, "nodes")
    if error:
        report.problems.append(f"could not list the control-plane Nodes: {error}")
    found = {item.get("name"): item for item in items}
    nodes = []
    for name in expected:
        item = found.get(name)
        ready = item.get("ready", "Unknown") if item else None
        nodes.append({"name": name, "ready": ready})
        if item is None:
            if not error:
                report.problems.append(f"control plane {name} has no Node: it never registered")
        elif ready != "True":
            why = ": ".join(part for part in (item.get("reason"), item.get("message")) if part)
            report.problems.append(
                f"control-plane Node {name} is not Ready (Ready={ready}{', ' + why if why else ''})"
            )
    for name in found:
        if name not in expected and not leaving(name or "", expected):
            report.problems.append(
                f"Node {name} has the control-plane role but is not one of the stack's control planes"
            )
    return nodes


def _node_names(facts: dict) -> list[str]:
    return [item.get("name") or "" for item in _part(facts, "nodes")[0]]


def _member_health(member: dict, answers: list[dict]) -> tuple[bool | None, str]:
    """(healthy, why not) from `endpoint health --cluster`'s answers for the member's client URLs;
    None when no answer was for it."""
    mine = [a for a in answers if a.get("endpoint") in member.get("clientURLs", [])]
    if not mine:
        return None, ""
    failed = [a for a in mine if a.get("health") is not True]
    why = "; ".join(f"{a.get('endpoint')}: {a.get('error') or 'unhealthy'}" for a in failed)
    return not failed, why


def _ha_members(report: Report, facts: dict, expected: Sequence[str]) -> list[dict]:
    members, error = _part(facts, "members")
    answers, health_error = _part(facts, "health")
    if error:
        report.problems.append(f"could not list etcd's members: {error}")
        return []
    staying = [m for m in members if not leaving(m.get("name") or "", expected)]
    if len(staying) != len(expected):
        report.problems.append(
            f"etcd has {len(staying)} members, expected {len(expected)} (one per control plane)"
        )
    if health_error and not answers:
        report.problems.append(f"could not check etcd's health: {health_error}")
    names = {m.get("name") for m in members}
    for name in expected:
        if name not in names:
            report.problems.append(f"control plane {name} has no etcd member")
    details = []
    for member in members:
        name, member_id = member.get("name") or "", member.get("id")
        healthy, why = _member_health(member, answers)
        details.append(
            {
                "name": name,
                "id": member_id,
                "status": member.get("status"),
                "isLearner": member.get("isLearner", False),
                "clientURLs": member.get("clientURLs", []),
                "healthy": healthy,
            }
        )
        if member.get("status") != "started":
            peers = ", ".join(member.get("peerURLs", []))
            report.problems.append(
                f"etcd member {member_id} (peer {peers}) was added but never started: "
                "a control plane's join stopped half-way"
            )
            continue
        label = f"{name} ({member_id})"
        if leaving(name, expected):
            continue
        if name not in expected:
            report.problems.append(f"etcd member {label} is not one of the stack's control planes")
        if member.get("isLearner"):
            report.problems.append(f"etcd member {label} is still a learner, not a voting member")
        if healthy is False:
            report.problems.append(f"etcd member {label} is unhealthy: {why}")
        elif healthy is None and answers:
            report.problems.append(f"etcd member {label} gave no answer to the health check")
    return details


def _ha_api(report: Report, probe: dict) -> dict[str, Any]:
    endpoint, origin = probe.get("endpoint"), probe.get("from")
    status, body = probe.get("status"), str(probe.get("body") or "")
    answer = {
        "endpoint": endpoint,
        "from": origin,
        "throughLoadBalancer": probe.get("throughLoadBalancer"),
        "status": status,
        "body": body.strip(),
        "attempts": probe.get("attempts"),
    }
    if status == 200 and body.strip() == READYZ_ANSWER:
        return answer
    where = f"through {endpoint} from {origin}"
    if not status:
        code, error = probe.get("curlExit"), probe.get("error") or "no answer"
        problem = f"the API did not answer {where}: {error} (curl exit {code})"
        if code in CURL_TLS_EXITS:
            problem += (
                "; the API server's certificate was refused with the cluster's CA: "
                f"is {endpoint} one of its addresses (SANs)?"
            )
    else:
        # A failing /readyz lists its checks, the failed ones as "[-]NAME failed: ...".
        lines = body.strip().splitlines()
        said = "; ".join(line for line in lines if line.startswith("[-]")) or (lines[-1] if lines else "")
        problem = f"the API answered {status} {said!r} {where}, not 200 {READYZ_ANSWER!r}"
    report.problems.append(problem)
    return answer


def verify_ha(facts: dict, probe: dict, control_planes: Sequence[str]) -> Report:
    """The HA checks: every control plane's Node Ready, one started, healthy, voting etcd member
    per control plane and no other, and /readyz answering `ok` through the load balancer."""
    report = Report()
    nodes = _ha_nodes(report, facts, control_planes)
    members = _ha_members(report, facts, control_planes)
    report.details = {
        "controlPlanes": len(control_planes),
        "nodesReady": sum(1 for n in nodes if n["ready"] == "True"),
        "nodes": nodes,
        "etcdMembers": len(members),
        "etcdHealthy": sum(1 for m in members if m["healthy"] is True),
        "members": members,
        # Removed at the end of this update, after the proof (controlPlaneCount lowered).
        "leaving": sorted(
            {m["name"] for m in members if leaving(m["name"], control_planes)}
            | {name for name in _node_names(facts) if leaving(name, control_planes)}
        ),
        "api": _ha_api(report, probe),
    }
    return report
