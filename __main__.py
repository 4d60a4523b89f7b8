"""kata-mesh: a kubeadm cluster on GCE whose nodes run Kata Containers beside runc, meshed by Istio."""

import dataclasses
import datetime

import pulumi

from components.api_endpoint import ApiEndpoint, ApiEndpointArgs
from components.backup_config import backup_object_prefix
from components.backups import (
    BackupBucket,
    BackupBucketArgs,
    BackupSchedule,
    BackupScheduleArgs,
    ControlPlaneRestore,
    ControlPlaneRestoreArgs,
)
from components.bastion import Bastion, BastionArgs
from components.bookinfo import Bookinfo, BookinfoArgs
from components.cert_renewal import RenewalSchedule, RenewalScheduleArgs
from components.cluster import ClusterArgs, KubeadmCluster
from components.gateway_endpoint import GatewayEndpoint, GatewayEndpointArgs
from components.kubeadm_config import kubeconfig_period
from components.mesh import IstioMesh, MeshArgs
from components.mesh_rollout import MeshRollout, MeshRolloutArgs
from components.network import API_PORT, Network, NetworkArgs
from components.node_image import ImageInputs, baked_node_steps, find_node_image
from components.node_provisioning import NodeProvisioning, NodeProvisioningArgs, ProvisioningSpec, node_steps
from components.nodes import ClusterNodes, ClusterNodesArgs, MachineSpec
from components.proof import OUTSIDE_NAMESPACE, Proof, ProofArgs, app_namespaces, fingerprint
from components.proof_access import ProofAccess, ProofAccessArgs
from components.rollout import NodeRollout, RolloutArgs
from components.settings import BOOKINFO_NAMESPACE, load_settings
from components.ssh_access import SshAccess, SshAccessArgs, SshHost, render_known_hosts, render_ssh_config
from components.workloads import HTTPBIN_PORT, HttpbinApp, HttpbinArgs, KataRuntimeClass

settings = load_settings()
provisioning_spec = ProvisioningSpec(
    kubernetes_version=settings.kubernetes_version,
    kata=settings.kata,
    artifact_mirror_url=settings.artifact_mirror_url,
    pod_cidr=settings.pod_cidr,
)
# What every node runs and a rollout brings live nodes to (pins, checksums, configs).
node_steps_for_stack = node_steps(provisioning_spec)
# Baked: new VMs boot from the node image made for these inputs (refused, saying why, when there
# is none) and run only what is theirs; stock: Ubuntu, and everything installed at boot.
baked = settings.node_image == "baked"
node_image = (
    find_node_image(settings.stack, ImageInputs(settings.kubernetes_version, settings.kata), settings.project)
    if baked
    else None
)
boot_steps = baked_node_steps(provisioning_spec) if baked else node_steps_for_stack
gateway_node_port = settings.gateway_node_port if settings.ingress_gateway else None

network = Network(
    "network",
    NetworkArgs(
        name_prefix=settings.name_prefix,
        region=settings.region,
        subnet_cidr=settings.subnet_cidr,
        ssh_allowed_cidrs=settings.ssh_allowed_cidrs,
        api_allowed_cidrs=settings.api_allowed_cidrs,
        gateway_node_port=gateway_node_port,
        gateway_allowed_cidrs=settings.gateway_allowed_cidrs,
        private_nodes=settings.private_nodes,
    ),
)
ssh = SshAccess("ssh", SshAccessArgs(admin_user=settings.admin_user, private_key=settings.ssh_private_key))
bastion = (
    Bastion(
        "bastion",
        BastionArgs(
            name_prefix=settings.name_prefix,
            stack=settings.stack,
            zone=settings.zones[0],
            region=settings.region,
            machine_type=settings.bastion_machine_type,
            subnet=network.subnet.id,
            ssh_keys_metadata=ssh.ssh_keys_metadata,
            admin_user=settings.admin_user,
            private_key=ssh.private_key_openssh,
            authorized_key=ssh.public_key_openssh,
            after=[network.bastion_firewall],
        ),
    )
    if settings.private_nodes
    else None
)
nodes = ClusterNodes(
    "nodes",
    ClusterNodesArgs(
        name_prefix=settings.name_prefix,
        stack=settings.stack,
        machine=MachineSpec(
            zones=settings.zones,
            region=settings.region,
            machine_type=settings.machine_type,
            min_cpu_platform=settings.min_cpu_platform,
            spot=settings.spot,
            boot_disk_size_gb=settings.boot_disk_size_gb,
            boot_disk_type=settings.boot_disk_type,
            secure_boot=settings.secure_boot,
        ),
        control_plane_count=settings.control_plane_count,
        worker_count=settings.worker_count,
        subnet=network.subnet.id,
        ssh_keys_metadata=ssh.ssh_keys_metadata,
        admin_user=settings.admin_user,
        private_key=ssh.private_key_openssh,
        authorized_key=ssh.public_key_openssh,
        bastion=bastion.ssh if bastion else None,
        allow_control_plane_replacement=settings.allow_control_plane_replacement,
        image=node_image,
    ),
)
provisioning = {
    vm.node_name: NodeProvisioning(
        f"{vm.node_name}-provision",
        NodeProvisioningArgs(
            ssh=vm.ssh,
            instance_id=vm.instance_id,
            instance=vm.instance,
            steps=boot_steps,
            # SSH must be open first, and stays open until the last SSH step is gone (destroy).
            # With private nodes, also Cloud NAT: the first steps download packages and releases.
            after=[network.ssh_firewall, *([network.nat, bastion.ready] if bastion else [])],
        ),
    )
    for vm in nodes.all
}
backup_prefix = backup_object_prefix(settings.name_prefix)
backups = BackupBucket(
    "backups",
    BackupBucketArgs(
        name_prefix=settings.name_prefix,
        region=settings.region,
        node_service_account_email=nodes.service_account.email,
        prefix=backup_prefix,
        retention_days=settings.backup_retention_days,
        force_destroy=settings.backup_force_destroy,
    ),
)
restore = ControlPlaneRestore(
    "restore",
    ControlPlaneRestoreArgs(
        control_planes=nodes.control_planes,
        provisioned={name: p.last for name, p in provisioning.items()},
        kubernetes_version=settings.kubernetes_version,
        bucket=backups.name,
        prefix=backup_prefix,
        backup_object=settings.backup_object,
        bucket_access=backups.node_access,
    ),
)
api = ApiEndpoint(
    "api",
    ApiEndpointArgs(
        name_prefix=settings.name_prefix,
        region=settings.region,
        zones=settings.zones,
        network=network.network.id,
        node_egress_ips=network.nat_ips
        if settings.private_nodes
        else [vm.external_ip for vm in nodes.all if vm.external_ip],
    ),
)
# Private nodes have no address of their own to reach the gateway's NodePort at: it gets a load
# balancer, in front of the control planes' groups (kube-proxy serves a NodePort on every node).
gateway_endpoint = (
    GatewayEndpoint(
        "gateway",
        GatewayEndpointArgs(
            name_prefix=settings.name_prefix,
            region=settings.region,
            node_port=gateway_node_port,
            network=network.network.id,
            instance_groups=list(api.instance_groups.values()),
        ),
    )
    if settings.private_nodes and gateway_node_port is not None
    else None
)
cluster = KubeadmCluster(
    "cluster",
    ClusterArgs(
        control_planes=nodes.control_planes,
        workers=nodes.workers,
        provisioned={name: p.last for name, p in provisioning.items()},
        kubernetes_version=settings.kubernetes_version,
        pod_cidr=settings.pod_cidr,
        service_cidr=settings.service_cidr,
        endpoint=api.address,
        backend_groups=api.instance_groups,
        load_balancer=api.forwarding_rule,
        api_access=[
            network.api_firewall,
            *network.internal_firewalls.values(),
            api.node_firewall,
            api.health_check_firewall,
        ],
        allow_control_plane_shrink=settings.allow_control_plane_shrink,
        before_init=[restore.restore],
        rejoin=restore.rejoin,
        kubeconfig_period=kubeconfig_period(datetime.datetime.now(datetime.UTC).date()),
    ),
)
backup_schedule = BackupSchedule(
    "backup-schedule",
    BackupScheduleArgs(
        control_planes=nodes.control_planes,
        served=cluster.served,
        tools=restore.tools,
        bucket=backups.name,
        prefix=backup_prefix,
        interval_hours=settings.backup_interval_hours,
        after=[cluster.ready],
    ),
)
# Later changes of what the nodes run, node by node (nothing on a first deploy).
rollout = NodeRollout(
    "rollout",
    RolloutArgs(
        control_planes=nodes.control_planes,
        workers=nodes.workers,
        steps=node_steps_for_stack,
        kubernetes_version=settings.kubernetes_version,
        after=[cluster.ready],
    ),
)
RenewalSchedule(
    "renewal-schedule",
    # After each node's backup timer: one step at a time on a control plane (SSH sessions on cp-0).
    RenewalScheduleArgs(control_planes=nodes.control_planes, served=backup_schedule.timers),
)

# Istio and the app's API objects once the API answers and the pod network is installed, not after
# every node is Ready: istiod's release waits for its pod, which runs on the first node Ready.
mesh = IstioMesh(
    "mesh",
    MeshArgs(
        istio_version=settings.istio_version,
        provider=cluster.provider,
        cluster_ready=cluster.pod_network,
        gateway_node_port=gateway_node_port,
    ),
)
kata_runtime = KataRuntimeClass("kata-runtime", cluster.provider, cluster.pod_network)
app = HttpbinApp(
    "httpbin",
    HttpbinArgs(
        namespace=settings.app_namespace,
        image=settings.httpbin_image,
        provider=cluster.provider,
        runtime_class=kata_runtime.runtime_class,
        mesh_ready=mesh.istiod,
        runc_twin=settings.runc_twin,
        gateway=settings.ingress_gateway,
        # One per node with 2 or more workers, so a drained node leaves one serving; else one.
        replicas=2 if settings.worker_count >= 2 else 1,
    ),
    opts=pulumi.ResourceOptions(depends_on=[mesh.gateway] if mesh.gateway else None),
)

if settings.bookinfo:
    Bookinfo(
        "bookinfo",
        BookinfoArgs(
            namespace=BOOKINFO_NAMESPACE,
            provider=cluster.provider,
            runtime_class=kata_runtime.runtime_class,
            mesh_ready=mesh.istiod,
        ),
    )
proof_args = ProofArgs(
    control_plane=nodes.control_plane,
    nodes=nodes.all,
    namespace=settings.app_namespace,
    app="httpbin",
    runc_twin="httpbin-runc" if settings.runc_twin else None,
    app_resources=[app],
    app_fingerprint=app.fingerprint,
    run_id=settings.verification_run,
    control_planes=nodes.control_planes,
    api_endpoint=api.address.apply(lambda ip: f"{ip}:{API_PORT}"),
    # A worker is not a load-balancer backend, so its request really goes through it.
    probe_node=(nodes.workers or nodes.control_planes)[0],
    # Runtime versions and node config (each step's content), a new cluster; a replaced VM
    # replaces the proof's steps, an added one brings its own evidence (components/proof.py).
    vouched_for=fingerprint([*(step.content_hash for step in node_steps_for_stack), cluster.init.id]),
)
# The proof acts in the cluster as this ServiceAccount only, with what its steps need.
proof_access = ProofAccess(
    "proof-access",
    ProofAccessArgs(
        provider=cluster.provider,
        apps=app_namespaces(proof_args),
        client_namespace=proof_args.namespace,
        outside_namespace=OUTSIDE_NAMESPACE,
        after=[app],
    ),
)
# After an Istio upgrade the meshed apps restart onto the new sidecar (nothing on a first deploy);
# the proof comes after it, and runs again for a new Istio version.
mesh_rollout = MeshRollout(
    "mesh-rollout",
    MeshRolloutArgs(
        control_plane=nodes.control_plane,
        istio_version=settings.istio_version,
        apps=app_namespaces(proof_args),
        after=[mesh.base, mesh.istiod, *([mesh.gateway] if mesh.gateway else []), app],
    ),
)
proof_args = dataclasses.replace(
    proof_args, after=[mesh_rollout.restart], istio_version=settings.istio_version
)
proof = Proof("proof", dataclasses.replace(proof_args, app_resources=[app, proof_access, rollout.done]))

key_file = f"~/.ssh/{settings.name_prefix}"
ssh_files = {
    "sshPrivateKey": key_file,
    "sshKnownHosts": f"{key_file}.known_hosts",
    "sshConfig": f"{key_file}.config",
}
bastion_alias = f"{settings.name_prefix}-bastion"
ssh_hosts = pulumi.Output.all(
    *(
        pulumi.Output.all(vm.ssh.host, vm.ssh.host_key).apply(
            lambda parts, vm=vm: SshHost(vm.node_name, parts[0], parts[1], bastion_alias if bastion else None)
        )
        for vm in nodes.all
    ),
    *(
        [
            pulumi.Output.all(bastion.ssh.host, bastion.ssh.host_key).apply(
                lambda parts: SshHost(bastion_alias, *parts)
            )
        ]
        if bastion
        else []
    ),
)
pulumi.export("apiEndpoint", api.address.apply(lambda ip: f"https://{ip}:{API_PORT}"))
if bastion:
    pulumi.export("bastionExternalIp", bastion.external_ip)
else:
    pulumi.export("controlPlaneExternalIp", nodes.control_plane.external_ip)
pulumi.export(
    "nodes",
    {
        vm.node_name: {"zone": vm.zone, "internalIp": vm.internal_ip, "externalIp": vm.external_ip}
        for vm in nodes.all
    },
)
pulumi.export("sshKnownHosts", ssh_hosts.apply(render_known_hosts))
pulumi.export(
    "sshConfig",
    ssh_hosts.apply(
        lambda hosts: render_ssh_config(hosts, settings.admin_user, key_file, ssh_files["sshKnownHosts"])
    ),
)
# The files are made anew under umask 077: readable by their owner only from their first byte.
pulumi.export(
    "sshCommand",
    "(umask 077 && mkdir -p ~/.ssh"
    + "".join(
        f" && rm -f {path} && pulumi stack output {output} --show-secrets --stack {settings.stack} > {path}"
        for output, path in ssh_files.items()
    )
    + f") && ssh -F {ssh_files['sshConfig']} {nodes.control_plane.node_name}",
)
pulumi.export("sshPrivateKey", ssh.private_key_openssh)
pulumi.export("kubeconfig", cluster.kubeconfig)
if gateway_node_port is None:
    httpbin_url: pulumi.Input[str] = (
        f"kubectl --kubeconfig kubeconfig -n {settings.app_namespace} port-forward svc/httpbin "
        f"{HTTPBIN_PORT}:{HTTPBIN_PORT}  # then open http://localhost:{HTTPBIN_PORT}/get"
    )
elif gateway_endpoint is not None:
    httpbin_url = gateway_endpoint.url
else:
    httpbin_url = pulumi.Output.from_input(nodes.control_plane.ssh.host).apply(
        lambda ip: f"http://{ip}:{gateway_node_port}/get"
    )
pulumi.export("httpbinUrl", httpbin_url)
pulumi.export("verification", proof.report)
pulumi.export("backupBucket", backups.name)
# Renewed by the timer on every control plane 90 days ahead; read again with admin.conf each month.
pulumi.export("adminCertificateExpiry", cluster.admin_certificate_expiry)
# Read from the bucket at every `pulumi up` (no SSH): PREFIX/<UTC time>-<node>, or null.
pulumi.export("newestBackup", backups.newest)
