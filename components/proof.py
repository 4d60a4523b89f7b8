"""The proof after every deploy: httpbin runs 2/2 with its sidecar, inside a Kata VM, and answers
in-mesh over mutual TLS; and what Kata costs beside runc. Fails the deploy otherwise."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components import versions
from components.node_provisioning import NodeStep, b64, remote_step, ssh_connection
from components.nodes import NodeVm
from components.verification import verify
from components.workloads import HTTPBIN_PORT

CGROUP_ROOT = "/sys/fs/cgroup/kubepods.slice"
ROLLOUT_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class ProofArgs:
    control_plane: NodeVm
    nodes: Sequence[NodeVm]
    admin_user: str
    private_key: pulumi.Input[str]
    namespace: str
    app: str
    runc_twin: str | None
    # What the proof is about: it runs after these and again whenever the fingerprint changes.
    app_resources: Sequence[pulumi.Resource]
    app_fingerprint: str
    # Any new value re-runs the proof on an unchanged stack.
    run_id: str


class Proof(pulumi.ComponentResource):
    report: pulumi.Output[dict]
    gate: command.remote.Command

    def __init__(self, name: str, args: ProofArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:proof:Proof", name, None, opts)
        triggers = [args.app_fingerprint, args.run_id]
        cp = args.control_plane
        cp_connection = ssh_connection(cp.external_ip, args.admin_user, args.private_key)
        apps = [args.app] + ([args.runc_twin] if args.runc_twin else [])
        facts = remote_step(
            f"{name}-mesh-facts",
            NodeStep(
                "mesh-facts",
                "96-mesh-facts.sh",
                (
                    ("namespace", args.namespace),
                    ("apps", " ".join(apps)),
                    ("client-image", versions.MESH_CLIENT_IMAGE),
                    ("url", f"http://{args.app}.{args.namespace}:{HTTPBIN_PORT}/get"),
                    ("timeout-seconds", str(ROLLOUT_TIMEOUT_SECONDS)),
                ),
            ),
            cp_connection,
            pulumi.ResourceOptions(parent=self, depends_on=list(args.app_resources)),
            extra_triggers=triggers,
        )
        evidence_step = NodeStep(
            "kata-evidence",
            "95-kata-evidence.sh",
            (("namespace", args.namespace), ("cgroup-root", CGROUP_ROOT)),
        )
        evidence = [
            remote_step(
                f"{vm.node_name}-kata-evidence",
                evidence_step,
                ssh_connection(vm.external_ip, args.admin_user, args.private_key),
                pulumi.ResourceOptions(parent=self, depends_on=[facts]),
                extra_triggers=triggers,
            )
            for vm in args.nodes
        ]

        def judge(outputs: list[str]) -> dict:
            facts_doc, *node_docs = (json.loads(text) for text in outputs)
            return verify(facts_doc, node_docs, args.app, args.runc_twin).as_dict()

        self.report = pulumi.Output.all(facts.stdout, *(e.stdout for e in evidence)).apply(judge)
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
            pulumi.ResourceOptions(parent=self, depends_on=evidence),
            extra_triggers=triggers,
            args=gate_args,
        )
        self.register_outputs({"report": self.report})
