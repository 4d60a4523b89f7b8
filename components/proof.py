"""The proof after every deploy: httpbin runs 2/2 with its sidecar, inside a Kata VM, and answers
in-mesh over mutual TLS; the meshed apps' sidecars run istiod's version; what Kata costs beside
runc, and what every node runs (kubelet, container runtime, Kata, sidecars). The hardening holds: a
runc pod is refused in the sandbox namespace (server-side dry run), the in-mesh Kata client gets no
answer from the metadata server, httpbin refuses a plaintext request from a pod outside the mesh.
With 3 or more control planes, also that the control plane is highly available (every
control-plane Node Ready, one healthy etcd member each, the API answering through the load
balancer). Fails the deploy otherwise."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components import versions
from components.node_provisioning import METADATA_IP, NodeStep, b64, remote_step, ssh_connection
from components.nodes import NodeVm
from components.proof_access import PROOF_SERVICE_ACCOUNT, PROOF_SERVICE_ACCOUNT_NAMESPACE
from components.verification import HaEvidence, verify
from components.workloads import HTTPBIN_PORT, RUNTIME_CLASS, runc_namespace

CGROUP_ROOT = "/sys/fs/cgroup/kubepods.slice"
ROLLOUT_TIMEOUT_SECONDS = 600
# The HA section runs from this many control planes on (1 has no HA to prove).
HA_MIN_CONTROL_PLANES = 3
# The cluster's CA, written by kubeadm on every node that joined: the API probe trusts only it.
CLUSTER_CA = "/etc/kubernetes/pki/ca.crt"
# Bounded waits: 94-ha-facts.sh gathers again 10 s apart, 93-api-probe.sh asks again 5 s apart.
HA_FACTS_ATTEMPTS = 18
API_PROBE_ATTEMPTS = 24
# What the in-mesh Kata client asks the metadata server for: the node service account's access
# token, the prize of a pod that reaches it (the header is the one the server requires).
METADATA_TOKEN_URL = f"http://{METADATA_IP}/computeMetadata/v1/instance/service-accounts/default/token"
# Its name, which pods may still resolve (DNS stays open): a detail of the report.
METADATA_HOST = "metadata.google.internal"
# Where the plaintext client runs: a namespace the cluster always has, with neither sidecar
# injection nor the sandbox label (the pod opts out of injection and meets Pod Security's
# `restricted` level all the same).
OUTSIDE_NAMESPACE = "default"


def ha_facts_step(
    control_planes: Sequence[str],
    service_account: str = PROOF_SERVICE_ACCOUNT,
    service_account_namespace: str = PROOF_SERVICE_ACCOUNT_NAMESPACE,
) -> NodeStep:
    """94-ha-facts.sh on the first control plane: the control-plane Nodes, etcd's members and
    their health, for these control planes (node names, which are also etcd's member names).
    kubectl runs as the proof's ServiceAccount (components/proof_access.py)."""
    return NodeStep(
        "ha-facts",
        "94-ha-facts.sh",
        (
            ("control-planes", " ".join(control_planes)),
            ("proof-service-account", service_account),
            ("proof-service-account-namespace", service_account_namespace),
            ("attempts", str(HA_FACTS_ATTEMPTS)),
        ),
    )


def api_probe_step(endpoint: str, through_load_balancer: bool) -> NodeStep:
    """93-api-probe.sh: /readyz at the control-plane endpoint (host:port), trusting only the
    cluster's CA; through_load_balancer says whether the probing node is not a backend."""
    return NodeStep(
        "api-probe",
        "93-api-probe.sh",
        (
            ("endpoint", endpoint),
            ("ca-cert", CLUSTER_CA),
            ("through-load-balancer", "true" if through_load_balancer else "false"),
            ("attempts", str(API_PROBE_ATTEMPTS)),
        ),
    )


@dataclass(frozen=True)
class ProofArgs:
    control_plane: NodeVm
    nodes: Sequence[NodeVm]
    namespace: str
    app: str
    runc_twin: str | None
    # What the proof is about: it runs after these and again whenever the fingerprint changes.
    app_resources: Sequence[pulumi.Resource]
    app_fingerprint: str
    # Any new value re-runs the proof on an unchanged stack.
    run_id: str
    # Every control plane, the first (control_plane) first. With 3 or more, the proof gains its
    # HA section; their node names are also their etcd member names.
    control_planes: Sequence[NodeVm]
    # host:port of the control-plane endpoint (the load balancer's address), probed for /readyz.
    api_endpoint: pulumi.Input[str]
    # The node that probes api_endpoint: the first worker, or the first control plane when there
    # are no workers (a control plane is answered by itself, not through the load balancer).
    probe_node: NodeVm
    # The runc twin's namespace; by default the one HttpbinApp gives it beside `namespace` (a
    # runc pod is refused in the app's sandbox namespace).
    runc_namespace: str | None = None
    # A fingerprint of everything else the proof vouches for (the nodes' runtime versions and
    # config, the cluster): any change runs it again. See `fingerprint`. A node's VM replaced
    # replaces the proof's steps too (replace_with); a node added only adds its evidence.
    vouched_for: pulumi.Input[str] = ""
    # What else must be done first: the meshed apps' restart after an Istio upgrade
    # (components/mesh_rollout.py).
    after: Sequence[pulumi.Resource] = ()
    # The Istio release installed: a new one runs the proof again (its sidecars against istiod's).
    istio_version: str = ""


def fingerprint(parts: Sequence[pulumi.Input[str]]) -> pulumi.Output[str]:
    """One value that changes whenever any of the parts does."""
    return pulumi.Output.all(*parts).apply(
        lambda values: hashlib.sha256("\0".join(values).encode()).hexdigest()
    )


def app_namespaces(args: ProofArgs) -> dict[str, str]:
    """Each app the proof judges, with its namespace: the Kata app's, then the runc twin's."""
    found = {args.app: args.namespace}
    if args.runc_twin:
        found[args.runc_twin] = args.runc_namespace or runc_namespace(args.namespace)
    return found


def mesh_facts_step(args: ProofArgs) -> NodeStep:
    """96-mesh-facts.sh: each app as <namespace>/<deployment>; the in-mesh client, in a Kata VM (the
    sandbox's admission policy admits nothing else), in the Kata app's namespace; then the
    hardening's attempts: a runc pod in that namespace (dry run), the metadata server's token from
    the in-mesh client, httpbin's URL in plaintext from a pod in the outside namespace. kubectl runs
    as the proof's ServiceAccount (components/proof_access.py grants it exactly what this needs)."""
    return NodeStep(
        "mesh-facts",
        "96-mesh-facts.sh",
        (
            ("namespace", args.namespace),
            ("apps", " ".join(f"{namespace}/{app}" for app, namespace in app_namespaces(args).items())),
            ("client-image", versions.MESH_CLIENT_IMAGE),
            ("client-runtime-class", RUNTIME_CLASS),
            ("url", f"http://{args.app}.{args.namespace}:{HTTPBIN_PORT}/get"),
            ("timeout-seconds", str(ROLLOUT_TIMEOUT_SECONDS)),
            ("metadata-url", METADATA_TOKEN_URL),
            ("metadata-host", METADATA_HOST),
            ("outside-namespace", OUTSIDE_NAMESPACE),
            ("proof-service-account", PROOF_SERVICE_ACCOUNT),
            ("proof-service-account-namespace", PROOF_SERVICE_ACCOUNT_NAMESPACE),
        ),
    )


def kata_evidence_step(args: ProofArgs) -> NodeStep:
    """95-kata-evidence.sh on every node: the sandboxes of the apps' namespaces."""
    namespaces = dict.fromkeys(app_namespaces(args).values())
    return NodeStep(
        "kata-evidence",
        "95-kata-evidence.sh",
        (("namespaces", " ".join(namespaces)), ("cgroup-root", CGROUP_ROOT)),
    )


class Proof(pulumi.ComponentResource):
    report: pulumi.Output[dict]
    gate: command.remote.Command

    def __init__(self, name: str, args: ProofArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:proof:Proof", name, None, opts)
        triggers: list[pulumi.Input[str]] = [args.app_fingerprint, args.run_id, args.vouched_for]
        if args.istio_version:
            triggers.append(f"istio {args.istio_version}")
        cp = args.control_plane
        cp_connection = ssh_connection(cp.ssh)
        namespaces = app_namespaces(args)
        # A node's VM replaced: its pods are gone and made again elsewhere, so every step gathers
        # anew. A node added moves no pod: only its own evidence is new, and the verdict judges it.
        again = pulumi.ResourceOptions(replace_with=[vm.instance for vm in args.nodes])
        facts = remote_step(
            f"{name}-mesh-facts",
            mesh_facts_step(args),
            cp_connection,
            pulumi.ResourceOptions.merge(
                pulumi.ResourceOptions(parent=self, depends_on=[*args.app_resources, *args.after]), again
            ),
            extra_triggers=triggers,
        )
        evidence_step = kata_evidence_step(args)
        evidence = [
            remote_step(
                f"{vm.node_name}-kata-evidence",
                evidence_step,
                ssh_connection(vm.ssh),
                pulumi.ResourceOptions.merge(pulumi.ResourceOptions(parent=self, depends_on=[facts]), again),
                # Its own VM too: one made again outside a replacement (gone, refreshed, created).
                extra_triggers=[*triggers, vm.instance_id],
            )
            for vm in args.nodes
        ]

        ha_steps = self._ha_steps(name, args, cp_connection, facts, triggers)
        control_plane_names = [vm.node_name for vm in args.control_planes]

        def judge(outputs: list[str]) -> dict:
            facts_doc, *docs = (json.loads(text) for text in outputs)
            ha = None
            if ha_steps:
                *docs, ha_facts, probe = docs
                ha = HaEvidence(ha_facts, probe, control_plane_names)
            # The hardening is always judged: facts without it fail each of its checks.
            hardening = facts_doc.get("hardening") or {}
            return verify(facts_doc, docs, args.app, args.runc_twin, ha, namespaces, hardening).as_dict()

        self.report = pulumi.Output.all(
            facts.stdout, *(e.stdout for e in evidence), *(s.stdout for s in ha_steps)
        ).apply(judge)
        gate_args = self.report.apply(
            lambda report: (
                ("report-b64", b64(json.dumps(report, indent=2))),
                ("passed", "true" if report["passed"] else "false"),
            )
        )
        self.gate = remote_step(
            f"{name}-verdict",
            NodeStep("verdict", "97-verdict.sh", ()),
            cp_connection,
            pulumi.ResourceOptions.merge(
                pulumi.ResourceOptions(parent=self, depends_on=[*evidence, *ha_steps]), again
            ),
            # Judges every node's evidence: again whenever a VM is new.
            extra_triggers=[*triggers, *(vm.instance_id for vm in args.nodes)],
            args=gate_args,
        )
        self.register_outputs({"report": self.report})

    def _ha_steps(
        self,
        name: str,
        args: ProofArgs,
        cp_connection: command.remote.ConnectionArgs,
        facts: command.remote.Command,
        triggers: list[pulumi.Input[str]],
    ) -> list[command.remote.Command]:
        """With 3 or more control planes: the HA facts from the first control plane and the API
        probe through the load balancer, after the mesh facts (none otherwise). A control plane
        added or replaced runs them again."""
        if len(args.control_planes) < HA_MIN_CONTROL_PLANES:
            return []
        names = [vm.node_name for vm in args.control_planes]
        # Scaled (new names) or a control plane's VM replaced (new instance id): gathered again.
        ha_triggers: list[pulumi.Input[str]] = [
            *triggers,
            " ".join(names),
            *(vm.instance_id for vm in args.control_planes),
        ]
        # A node's VM replaced replaces these too, as every step of the proof.
        opts = pulumi.ResourceOptions(
            parent=self, depends_on=[facts], replace_with=[vm.instance for vm in args.nodes]
        )
        ha_facts = remote_step(
            f"{name}-ha-facts", ha_facts_step(names), cp_connection, opts, extra_triggers=ha_triggers
        )
        through_load_balancer = args.probe_node.node_name not in names
        # The endpoint is known only once the load balancer's address exists; the script is not.
        probe = remote_step(
            f"{args.probe_node.node_name}-api-probe",
            api_probe_step("", through_load_balancer),
            ssh_connection(args.probe_node.ssh),
            opts,
            extra_triggers=ha_triggers,
            args=pulumi.Output.from_input(args.api_endpoint).apply(
                lambda endpoint: api_probe_step(endpoint, through_load_balancer).args
            ),
        )
        return [ha_facts, probe]
