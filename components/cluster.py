"""The Kubernetes cluster: kubeadm init, the pod network, workers joining, the kubeconfig."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s

from components import versions
from components.kubeadm_config import (
    KATA_NODE_LABEL,
    InitSpec,
    NodeRegistration,
    external_kubeconfig,
    parse_join_command,
    render_init_config,
    render_join_config,
)
from components.node_provisioning import NodeStep, b64, remote_step, ssh_connection
from components.nodes import NodeVm

# Each worker gets its own token, made when it joins; it need not outlive the join.
JOIN_TOKEN_TTL = "1h"
NODE_REMOVAL_TIMEOUT_SECONDS = 120
NODES_READY_TIMEOUT_SECONDS = 900
ADMIN_CONF = "/etc/kubernetes/admin.conf"


@dataclass(frozen=True)
class ClusterArgs:
    control_plane: NodeVm
    workers: Sequence[NodeVm]
    # The last provisioning step of each node, by node name.
    provisioned: Mapping[str, pulumi.Resource]
    admin_user: str
    private_key: pulumi.Input[str]
    kubernetes_version: str
    pod_cidr: str
    service_cidr: str


def node_registration(
    name: str, internal_ip: str, runs_workloads: bool, control_plane: bool
) -> NodeRegistration:
    """Nodes that take workloads run Kata and say so; a control plane with no workers takes them."""
    labels: dict[str, str] = dict([KATA_NODE_LABEL]) if runs_workloads else {}
    taints = [] if control_plane and runs_workloads else None
    return NodeRegistration(name=name, internal_ip=internal_ip, labels=labels, taints=taints)


class KubeadmCluster(pulumi.ComponentResource):
    """kubeadm init on the control plane, Flannel, one join per worker, and the cluster's provider."""

    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    ready: command.remote.Command

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:cluster:KubeadmCluster", name, None, opts)
        cp = args.control_plane
        cp_connection = ssh_connection(cp.external_ip, args.admin_user, args.private_key)
        control_plane_takes_workloads = not args.workers

        kata_label = "=".join(KATA_NODE_LABEL)
        init_args = pulumi.Output.all(cp.internal_ip, cp.external_ip).apply(
            lambda ips: (
                ("node-name", cp.node_name),
                ("takes-workloads", "true" if control_plane_takes_workloads else "false"),
                ("kata-label", kata_label),
                (
                    "config-b64",
                    b64(
                        render_init_config(
                            InitSpec(
                                node=node_registration(
                                    cp.node_name, ips[0], control_plane_takes_workloads, control_plane=True
                                ),
                                external_ip=ips[1],
                                kubernetes_version=args.kubernetes_version,
                                pod_cidr=args.pod_cidr,
                                service_cidr=args.service_cidr,
                            )
                        )
                    ),
                ),
            )
        )
        self.init = remote_step(
            f"{name}-init",
            NodeStep("kubeadm-init", "50-kubeadm-init.sh", ()),
            cp_connection,
            pulumi.ResourceOptions(parent=self, depends_on=[args.provisioned[cp.node_name]]),
            extra_triggers=[cp.instance_id],
            args=init_args,
        )
        self.admin_conf = command.remote.Command(
            f"{name}-admin-conf",
            connection=cp_connection,
            create=f"sudo -n cat {ADMIN_CONF}",
            triggers=[self.init.id],
            add_previous_output_in_env=False,
            logging=command.remote.Logging.NONE,
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[self.init], additional_secret_outputs=["stdout"]
            ),
        )
        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(pulumi.Output.secret(self.admin_conf.stdout), cp.external_ip).apply(
                lambda values: external_kubeconfig(values[0], values[1])
            )
        )
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.init]),
        )
        self.pod_network = self._flannel(name, args.pod_cidr)

        self.joins = [self._join(worker, args, cp_connection) for worker in args.workers]
        nodes_ready = NodeStep(
            "nodes-ready",
            "90-wait-nodes-ready.sh",
            (
                ("node-names", " ".join(vm.node_name for vm in [cp, *args.workers])),
                ("timeout-seconds", str(NODES_READY_TIMEOUT_SECONDS)),
            ),
        )
        self.ready = remote_step(
            f"{name}-nodes-ready",
            nodes_ready,
            cp_connection,
            pulumi.ResourceOptions(parent=self, depends_on=[self.pod_network, *self.joins]),
            extra_triggers=[self.init.id],
        )
        self.register_outputs({"kubeconfig": self.kubeconfig})

    def _flannel(self, name: str, pod_cidr: str) -> k8s.helm.v3.Release:
        child = pulumi.ResourceOptions(parent=self, provider=self.provider)
        # Flannel's pods need host networking and privileges: the namespace says so for
        # Pod Security admission.
        namespace = k8s.core.v1.Namespace(
            f"{name}-kube-flannel",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=versions.FLANNEL_NAMESPACE,
                labels={"pod-security.kubernetes.io/enforce": "privileged"},
            ),
            opts=child,
        )
        return k8s.helm.v3.Release(
            f"{name}-flannel",
            name="flannel",
            chart=versions.FLANNEL_CHART,
            version=versions.FLANNEL_CHART_VERSION,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=versions.FLANNEL_CHART_REPOSITORY),
            namespace=namespace.metadata.name,
            values={"podCidr": pod_cidr, "flannel": {"backend": "vxlan"}},
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[namespace])),
        )

    def _join(
        self, worker: NodeVm, args: ClusterArgs, cp_connection: command.remote.ConnectionArgs
    ) -> command.remote.Command:
        token = remote_step(
            f"{worker.node_name}-join-token",
            NodeStep(
                "join-token",
                "60-join-token.sh",
                (("node-name", worker.node_name), ("ttl", JOIN_TOKEN_TTL)),
            ),
            cp_connection,
            pulumi.ResourceOptions(parent=self, depends_on=[self.init]),
            # A new or replaced worker (or a new control plane) gets a fresh token, whenever it comes.
            extra_triggers=[worker.instance_id, self.init.id],
            secret_stdout=True,
        )
        # The engine marks stdout secret (additional_secret_outputs); say so here as well, so the
        # token can never reach a plain input.
        join_args = pulumi.Output.all(pulumi.Output.secret(token.stdout), worker.internal_ip).apply(
            lambda values: (
                (
                    "config-b64",
                    b64(
                        render_join_config(
                            node_registration(worker.node_name, values[1], True, control_plane=False),
                            parse_join_command(values[0]),
                        )
                    ),
                ),
            )
        )
        join = remote_step(
            f"{worker.node_name}-join",
            NodeStep("kubeadm-join", "70-kubeadm-join.sh", (("node-name", worker.node_name),)),
            ssh_connection(worker.external_ip, args.admin_user, args.private_key),
            pulumi.ResourceOptions(parent=self, depends_on=[token, args.provisioned[worker.node_name]]),
            extra_triggers=[worker.instance_id, self.init.id],
            secret_args=join_args,
        )
        removal = NodeStep(
            "remove-node",
            "80-remove-node.sh",
            (("node-name", worker.node_name), ("timeout-seconds", str(NODE_REMOVAL_TIMEOUT_SECONDS))),
        )
        # Does nothing on create; when the worker leaves the settings (or the stack is destroyed)
        # Pulumi deletes this before the worker's VM, and its delete drains and removes the Node.
        command.remote.Command(
            f"{worker.node_name}-drain-on-removal",
            connection=cp_connection,
            create="cat >/dev/null",
            delete=removal.command_line,
            stdin=removal.script_text,
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[join]),
        )
        return join
