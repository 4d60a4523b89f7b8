"""Judging the proof: is httpbin Running 2/2 with its sidecar, in a Kata VM, answering over mTLS?

Pure functions over what the verification scripts gather (kubectl and crictl JSON, `ps` output,
the in-mesh request), so every verdict can be tested on recorded samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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


def app_pod(pods: dict, app: str) -> dict | None:
    """The newest non-terminating pod labelled app=<app>."""
    candidates = [
        p
        for p in pods.get("items", [])
        if p["metadata"].get("labels", {}).get("app") == app and "deletionTimestamp" not in p["metadata"]
    ]
    candidates.sort(key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
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
    report: Report, app: str, facts: dict, evidence: Sequence[dict], want_kata: bool
) -> dict[str, Any] | None:
    pod = app_pod(facts.get("pods", {}), app)
    if pod is None:
        report.problems.append(f"no {app} pod found")
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


def verify(facts: dict, evidence: Sequence[dict], app: str, runc_twin: str | None) -> Report:
    """Every check of the proof; the report carries the measurements of Kata beside runc."""
    report = Report()
    report.details["kata"] = _runtime_details(report, app, facts, evidence, want_kata=True)
    report.details["runc"] = (
        _runtime_details(report, runc_twin, facts, evidence, want_kata=False) if runc_twin else None
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
    return report
