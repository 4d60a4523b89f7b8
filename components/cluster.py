"""The Kubernetes cluster: kubeadm init, the pod network, workers joining, the kubeconfig."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s
import pulumi_random as random
import pulumi_tls as tls

from components import versions
from components.backup_config import RESTORE_MARKER
from components.kubeadm_config import (
    AUDIT_LOG_DIR,
    AUDIT_POLICY_FILE,
    ENCRYPTION_CONFIG_FILE,
    INIT_TOKEN_DESCRIPTION,
    KATA_NODE_LABEL,
    SECRETBOX_KEY_BYTES,
    InitSpec,
    NodeRegistration,
    admin_client_certificate,
    external_kubeconfig,
    parse_join_command,
    render_audit_policy,
    render_encryption_config,
    render_init_config,
    render_join_config,
    secretbox_key,
)
from components.node_provisioning import NodeStep, b64, remote_step, ssh_connection
from components.nodes import NodeVm

# Each node gets its own token, made when it joins; it need not outlive the join.
JOIN_TOKEN_TTL = "1h"
CERTIFICATE_KEY_BYTES = 32
# Concurrent SSH sessions to cp-0 from per-node steps: join tokens, and removal steps.
TOKEN_LANES = 3
REMOVAL_LANES = 3
CONTROL_PLANE_POLICY_FILE = "/etc/kata-mesh/control-plane-policy"
KATA_LABEL = "=".join(KATA_NODE_LABEL)
NODE_REMOVAL_TIMEOUT_SECONDS = 120
NODES_READY_TIMEOUT_SECONDS = 900
ADMIN_CONF = "/etc/kubernetes/admin.conf"
CLUSTER_CA_CERTIFICATE = "/etc/kubernetes/pki/ca.crt"
# Where the init and control-plane join steps put the API server's files: the paths the
# ClusterConfiguration gives every control plane's API server.
API_SERVER_FILES = (
    ("encryption-config-file", ENCRYPTION_CONFIG_FILE),
    ("audit-policy-file", AUDIT_POLICY_FILE),
    ("audit-log-dir", AUDIT_LOG_DIR),
)


@dataclass(frozen=True)
class Rejoin:
    """How a new VM of the first control plane joins the control planes that survive it
    (components/backups.py, ControlPlaneRestore, made it on one of them)."""

    # `kubeadm token create --print-join-command` printed there, or "" when nothing survives.
    join_command: pulumi.Output[str]
    # The key the control-plane certificates were uploaded with for this join.
    certificate_key: pulumi.Output[str]
    # That survivor's internal address: its API server answers the join.
    via: pulumi.Output[str]


@dataclass(frozen=True)
class ClusterArgs:
    # cp-0 first: `kubeadm init` runs there, and scaling never removes it.
    control_planes: Sequence[NodeVm]
    workers: Sequence[NodeVm]
    # The last provisioning step of each node, by node name.
    provisioned: Mapping[str, pulumi.Resource]
    kubernetes_version: str
    pod_cidr: str
    service_cidr: str
    # The load balancer's address: kubeadm's controlPlaneEndpoint.
    endpoint: pulumi.Input[str]
    # The load balancer's instance group in each zone; a control plane joins its zone's group.
    backend_groups: Mapping[str, gcp.compute.InstanceGroup]
    # The load balancer's forwarding rule: once it exists, a backend answers its address itself.
    load_balancer: pulumi.Resource
    # The firewall rules the cluster needs (admins, nodes and health checks to the API; etcd,
    # kubelet and VXLAN between nodes): the cluster waits for them, so `pulumi destroy` removes
    # them only after everything that uses them.
    api_access: Sequence[pulumi.Resource]
    allow_control_plane_shrink: bool
    # What `kubeadm init` waits for besides cp-0's provisioning (the restore from a backup).
    before_init: Sequence[pulumi.Resource] = ()
    # admin.conf is read again whenever this changes (kubeconfig_period: once a month).
    kubeconfig_period: str = ""
    # With 3 or more control planes: the first one's new VM joins the survivors, if any.
    rejoin: Rejoin | None = None


def node_registration(
    name: str, internal_ip: str, runs_workloads: bool, control_plane: bool
) -> NodeRegistration:
    """Nodes that take workloads run Kata and say so; a control plane with no workers takes them."""
    labels: dict[str, str] = dict([KATA_NODE_LABEL]) if runs_workloads else {}
    taints = [] if control_plane and runs_workloads else None
    return NodeRegistration(name=name, internal_ip=internal_ip, labels=labels, taints=taints)


class SshLanes:
    """At most `width` of the resources placed here run at once: each one waits for the one
    `width` places before it. sshd's default MaxStartups (10:30:100) starts dropping connections
    past 10 in the handshake at once, and 50 workers would each want one to the first control plane."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.placed: list[pulumi.Resource] = []

    def after(self) -> list[pulumi.Resource]:
        """What the next resource must wait for."""
        return [self.placed[-self.width]] if len(self.placed) >= self.width else []

    def place(self, resource: pulumi.Resource) -> pulumi.Resource:
        self.placed.append(resource)
        return resource


class KubeadmCluster(pulumi.ComponentResource):
    """kubeadm init on the first control plane, the others joining it, Flannel, one join per
    worker, each control plane behind the load balancer once it serves, and the cluster's provider."""

    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    ready: command.remote.Command

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:cluster:KubeadmCluster", name, None, opts)
        cp = args.control_planes[0]
        self.cp_connection = cp_connection = ssh_connection(cp.ssh)
        # Workers' and further control planes' steps on cp-0, in two sets of lanes: tokens, made
        # right after init, and removal steps, made after each join. Sharing lanes would make a
        # token wait for an earlier node's join.
        self.token_lanes = SshLanes(TOKEN_LANES)
        self.removal_lanes = SshLanes(REMOVAL_LANES)
        self.control_planes_take_workloads = not args.workers
        # Encrypts the control-plane certificates kubeadm uploads for the other control planes.
        self.certificate_key = random.RandomBytes(
            f"{name}-certificate-key", length=CERTIFICATE_KEY_BYTES, opts=pulumi.ResourceOptions(parent=self)
        )
        certificate_key_arg = self.certificate_key.hex.apply(lambda key: (("certificate-key", key),))
        # Encrypts Secrets in etcd. Every control plane's API server reads the same
        # EncryptionConfiguration, which reaches the nodes on stdin only (a secret argument). The
        # key is the RandomBytes' 32 bytes, read from its hex output (the same bytes as its base64
        # output, and the one output the offline plan's stand-in fills in).
        self.encryption_key = random.RandomBytes(
            f"{name}-encryption-key", length=SECRETBOX_KEY_BYTES, opts=pulumi.ResourceOptions(parent=self)
        )
        self.encryption_config_b64 = pulumi.Output.secret(
            self.encryption_key.hex.apply(lambda key: b64(render_encryption_config(secretbox_key(key))))
        )
        # Not secret: it travels on the command line like the kubeadm config.
        self.audit_policy_b64 = b64(render_audit_policy())

        # cp-0 is a backend before init: `kubeadm init` itself talks to the endpoint, which the
        # guest environment answers on cp-0 itself; nothing else can be behind it yet.
        first_backend = self._backend(
            cp, args, [args.provisioned[cp.node_name], args.load_balancer, *args.api_access]
        )
        endpoint = pulumi.Output.from_input(args.endpoint)
        init_args = pulumi.Output.all(cp.internal_ip, endpoint).apply(
            lambda values: (
                ("node-name", cp.node_name),
                ("takes-workloads", "true" if self.control_planes_take_workloads else "false"),
                ("kata-label", KATA_LABEL),
                *API_SERVER_FILES,
                ("audit-policy-b64", self.audit_policy_b64),
                ("init-token-description", INIT_TOKEN_DESCRIPTION),
                # Written by the restore step when it brought a backup back (components/backups.py).
                ("restored-marker", RESTORE_MARKER),
                (
                    "config-b64",
                    b64(
                        render_init_config(
                            InitSpec(
                                node=node_registration(
                                    cp.node_name,
                                    values[0],
                                    self.control_planes_take_workloads,
                                    control_plane=True,
                                ),
                                endpoint=values[1],
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
            pulumi.ResourceOptions(
                parent=self, depends_on=[args.provisioned[cp.node_name], first_backend, *args.before_init]
            ),
            extra_triggers=[cp.instance_id],
            args=init_args,
            secret_args=pulumi.Output.all(
                self.certificate_key.hex, self.encryption_config_b64, self._rejoin_args(cp, args.rejoin)
            ).apply(
                lambda values: (
                    ("certificate-key", values[0]),
                    ("encryption-config-b64", values[1]),
                    *values[2],
                )
            ),
        )
        self.admin_conf = command.remote.Command(
            f"{name}-admin-conf",
            connection=cp_connection,
            create=f"sudo -n cat {ADMIN_CONF}",
            # Again each month: renewed certificates reach the kubeconfig and the provider.
            triggers=[self.init.id, args.kubeconfig_period],
            add_previous_output_in_env=False,
            logging=command.remote.Logging.NONE,
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[self.init], additional_secret_outputs=["stdout"]
            ),
        )
        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(pulumi.Output.secret(self.admin_conf.stdout), endpoint).apply(
                lambda values: external_kubeconfig(values[0], values[1])
            )
        )
        # When admin.conf's certificate (renewed with the others) expires; the certificate is no
        # secret, only the key beside it is.
        admin_certificate = pulumi.Output.unsecret(
            pulumi.Output.secret(self.admin_conf.stdout).apply(admin_client_certificate)
        )
        self.admin_certificate_expiry = tls.get_certificate_output(
            content=admin_certificate, opts=pulumi.InvokeOutputOptions(parent=self)
        ).certificates.apply(lambda certificates: certificates[0].not_after)
        # The cluster is its CA: a restored or rejoined first control plane brings the same one
        # back. Read once per VM, not with each init (a new script re-runs init on the same
        # cluster), so that the provider is replaced, with every object it made, only for a
        # cluster that is new.
        self.cluster_ca = command.remote.Command(
            f"{name}-cluster-ca",
            connection=cp_connection,
            create=f"openssl x509 -noout -fingerprint -sha256 -in {CLUSTER_CA_CERTIFICATE}",
            triggers=[cp.instance_id],
            add_previous_output_in_env=False,
            # After admin.conf's read: one SSH session to cp-0 at a time besides the token lanes.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.init, self.admin_conf]),
        )
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            # admin.conf read again (each month, a renewed certificate) updates the provider.
            cluster_identifier=self.cluster_ca.stdout,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.init]),
        )
        self.pod_network = self._flannel(name, args.pod_cidr)

        self.backends: list[pulumi.Resource] = [first_backend]
        self.control_plane_joins = [
            self._join_control_plane(vm, args, certificate_key_arg) for vm in args.control_planes[1:]
        ]
        # What makes each control plane serve, by name: init on the first, its join on the others.
        self.served: dict[str, pulumi.Resource] = {
            cp.node_name: self.init,
            **{
                vm.node_name: join
                for vm, join in zip(args.control_planes[1:], self.control_plane_joins, strict=True)
            },
        }
        self.worker_joins = [self._join_worker(worker, args) for worker in args.workers]
        self.policy = self._control_plane_policy(name, args)
        nodes_ready = NodeStep(
            "nodes-ready",
            "90-wait-nodes-ready.sh",
            (
                ("node-names", " ".join(vm.node_name for vm in [*args.control_planes, *args.workers])),
                ("timeout-seconds", str(NODES_READY_TIMEOUT_SECONDS)),
            ),
        )
        self.ready = remote_step(
            f"{name}-nodes-ready",
            nodes_ready,
            cp_connection,
            pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.pod_network, *self.control_plane_joins, *self.worker_joins, *self.backends],
            ),
            extra_triggers=[self.init.id],
        )
        self.register_outputs({"kubeconfig": self.kubeconfig})

    def _rejoin_args(self, cp: NodeVm, rejoin: Rejoin | None) -> pulumi.Output[tuple[tuple[str, str], ...]]:
        """50-kubeadm-init.sh's arguments to join the survivors instead of init: none when there
        are none."""
        if rejoin is None:
            return pulumi.Output.from_input(())
        takes_workloads = self.control_planes_take_workloads

        def render(values: list[str]) -> tuple[tuple[str, str], ...]:
            join_command, key, via, internal_ip = values
            if not join_command.strip():
                return ()
            node = node_registration(cp.node_name, internal_ip, takes_workloads, control_plane=True)
            config = render_join_config(node, parse_join_command(join_command), certificate_key=key)
            return (("join-config-b64", b64(config)), ("rejoin-via", via))

        return pulumi.Output.all(
            rejoin.join_command, rejoin.certificate_key, rejoin.via, cp.internal_ip
        ).apply(render)

    def _backend(
        self, vm: NodeVm, args: ClusterArgs, after: Sequence[pulumi.Resource]
    ) -> gcp.compute.InstanceGroupMembership:
        """The control plane in its zone's instance group: from here on the load balancer sends to
        it (once its health check passes), and the VM answers the endpoint's address itself."""
        return gcp.compute.InstanceGroupMembership(
            f"{vm.node_name}-api-backend",
            zone=vm.zone,
            instance_group=args.backend_groups[vm.zone].name,
            instance=vm.instance.self_link,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=list(after),
                # A replaced VM keeps its name (and so its self link), but GCE drops the old VM from
                # the group: the new one must be added again, after the old entry went.
                replace_with=[vm.instance],
                delete_before_replace=True,
            ),
        )

    def _token(
        self,
        vm: NodeVm,
        control_plane: bool,
        secret_args: pulumi.Output[tuple[tuple[str, str], ...]] | None,
    ) -> command.remote.Command:
        token = remote_step(
            f"{vm.node_name}-join-token",
            NodeStep(
                "join-token",
                "60-join-token.sh",
                (
                    ("node-name", vm.node_name),
                    ("ttl", JOIN_TOKEN_TTL),
                    ("control-plane", "true" if control_plane else "false"),
                ),
            ),
            self.cp_connection,
            pulumi.ResourceOptions(parent=self, depends_on=[self.init, *self.token_lanes.after()]),
            # A new or replaced node gets a fresh token, whenever it comes.
            extra_triggers=[vm.instance_id, self.init.id],
            secret_stdout=True,
            secret_args=secret_args,
        )
        self.token_lanes.place(token)
        return token

    def _join_control_plane(
        self,
        vm: NodeVm,
        args: ClusterArgs,
        certificate_key_arg: pulumi.Output[tuple[tuple[str, str], ...]],
    ) -> command.remote.Command:
        token = self._token(vm, control_plane=True, secret_args=certificate_key_arg)
        # A replaced VM (same name, new instance): its old etcd member, dead, goes first, or the
        # join would meet a member of its own name. Checked on cp-0; nothing to do on a first join.
        forget = remote_step(
            f"{vm.node_name}-forget-member",
            NodeStep(
                "forget-etcd-member",
                "65-forget-etcd-member.sh",
                (("node-name", vm.node_name), ("timeout-seconds", str(NODE_REMOVAL_TIMEOUT_SECONDS))),
            ),
            self.cp_connection,
            pulumi.ResourceOptions(parent=self, depends_on=[token, *self.token_lanes.after()]),
            # Only a new VM: run at any other time (a new script, a control plane rebooting) it
            # could take a member that is only slow to answer for a dead one.
            extra_triggers=[vm.instance_id],
            rerun_on_change=False,
        )
        self.token_lanes.place(forget)
        takes_workloads = self.control_planes_take_workloads
        join_args = pulumi.Output.all(
            pulumi.Output.secret(token.stdout),
            vm.internal_ip,
            self.certificate_key.hex,
            self.encryption_config_b64,
        ).apply(
            lambda values: (
                (
                    "config-b64",
                    b64(
                        render_join_config(
                            node_registration(vm.node_name, values[1], takes_workloads, control_plane=True),
                            parse_join_command(values[0]),
                            certificate_key=values[2],
                        )
                    ),
                ),
                # Its API server starts during the join, on the same file as every other one.
                ("encryption-config-b64", values[3]),
            )
        )
        join = remote_step(
            f"{vm.node_name}-join",
            NodeStep(
                "kubeadm-join",
                "70-kubeadm-join.sh",
                (
                    ("node-name", vm.node_name),
                    ("control-plane", "true"),
                    ("takes-workloads", "true" if takes_workloads else "false"),
                    ("kata-label", KATA_LABEL),
                    ("token-step", f"{vm.node_name}-join-token"),
                    *API_SERVER_FILES,
                    ("audit-policy-b64", self.audit_policy_b64),
                ),
            ),
            ssh_connection(vm.ssh),
            pulumi.ResourceOptions(
                parent=self,
                depends_on=[token, forget, args.provisioned[vm.node_name]],
                custom_timeouts=pulumi.CustomTimeouts(create="20m"),
            ),
            extra_triggers=[vm.instance_id, self.init.id],
            secret_args=join_args,
        )
        removal = NodeStep(
            "remove-control-plane",
            "85-remove-control-plane.sh",
            (
                ("node-name", vm.node_name),
                ("policy-file", CONTROL_PLANE_POLICY_FILE),
                ("timeout-seconds", str(NODE_REMOVAL_TIMEOUT_SECONDS)),
            ),
        )
        # Nothing on create. When the control plane leaves the settings, Pulumi deletes its
        # backend first (this waits for it), then this, whose delete checks etcd's quorum and the
        # shrink policy on cp-0 before it removes the member, then the VM.
        leave = self._on_removal(f"{vm.node_name}-leave-on-removal", removal, [join])
        self.backends.append(self._backend(vm, args, [leave]))
        return join

    def _join_worker(self, worker: NodeVm, args: ClusterArgs) -> command.remote.Command:
        token = self._token(worker, control_plane=False, secret_args=None)
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
            NodeStep(
                "kubeadm-join",
                "70-kubeadm-join.sh",
                (("node-name", worker.node_name), ("token-step", f"{worker.node_name}-join-token")),
            ),
            ssh_connection(worker.ssh),
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
        self._on_removal(f"{worker.node_name}-drain-on-removal", removal, [join])
        return join

    def _on_removal(
        self, resource_name: str, removal: NodeStep, after: Sequence[pulumi.Resource]
    ) -> command.remote.Command:
        """A step that runs on cp-0 only when it is deleted (its node left the settings, or the
        stack is destroyed). Its lanes bound how many run at once at `pulumi destroy`."""
        # No create command: pulumi-command then opens no SSH session until the delete.
        step = command.remote.Command(
            resource_name,
            connection=self.cp_connection,
            delete=removal.command_line,
            stdin=removal.script_text,
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*after, *self.removal_lanes.after()]),
        )
        self.removal_lanes.place(step)
        return step

    def _control_plane_policy(self, name: str, args: ClusterArgs) -> command.remote.Command:
        """Tells the removal steps on cp-0 whether going below 3 control planes is allowed.

        Pulumi deletes a removed control plane's steps at the end of an update, after this has
        been updated, so one `pulumi up` can both allow it and do it. At `pulumi destroy` this is
        deleted before every removal step (they are its dependencies), and says so: they then
        leave etcd alone, as the whole cluster is going.
        """

        def policy(shrink: str) -> NodeStep:
            return NodeStep(
                "control-plane-policy",
                "55-control-plane-policy.sh",
                (("policy-file", CONTROL_PLANE_POLICY_FILE), ("shrink", shrink)),
            )

        setting = policy("allowed" if args.allow_control_plane_shrink else "refused")
        return command.remote.Command(
            f"{name}-control-plane-policy",
            connection=self.cp_connection,
            create=setting.command_line,
            delete=policy("destroying").command_line,
            stdin=setting.script_text,
            triggers=[setting.content_hash, self.init.id],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.init, *self.removal_lanes.placed],
                # Replaced, the old one's delete must not write "destroying" after the new one wrote.
                delete_before_replace=True,
            ),
        )

    def _flannel(self, name: str, pod_cidr: str) -> k8s.helm.v3.Release:
        child = pulumi.ResourceOptions(parent=self, provider=self.provider)
        # Flannel's pods need host networking and privileges: the namespace says so for
        # Pod Security admission.
        namespace = k8s.core.v1.Namespace(
            f"{name}-kube-flannel",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=versions.FLANNEL_NAMESPACE,
                labels={
                    "pod-security.kubernetes.io/enforce": "privileged",
                    # Say what Flannel would break, in warnings and the audit log.
                    "pod-security.kubernetes.io/warn": "baseline",
                    "pod-security.kubernetes.io/audit": "restricted",
                },
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
