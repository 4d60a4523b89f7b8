"""kata-mesh: a kubeadm cluster on GCE whose nodes run Kata Containers beside runc, meshed by Istio."""

import pulumi

from components.api_endpoint import ApiEndpoint, ApiEndpointArgs
from components.bookinfo import Bookinfo, BookinfoArgs
from components.cluster import ClusterArgs, KubeadmCluster
from components.mesh import IstioMesh, MeshArgs
from components.network import API_PORT, Network, NetworkArgs
from components.node_provisioning import NodeProvisioning, NodeProvisioningArgs, ProvisioningSpec, node_steps
from components.nodes import ClusterNodes, ClusterNodesArgs, MachineSpec
from components.proof import Proof, ProofArgs
from components.settings import BOOKINFO_NAMESPACE, load_settings
from components.ssh_access import SshAccess, SshAccessArgs
from components.workloads import HTTPBIN_PORT, HttpbinApp, HttpbinArgs, KataRuntimeClass

settings = load_settings()
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
    ),
)
ssh = SshAccess("ssh", SshAccessArgs(admin_user=settings.admin_user, private_key=settings.ssh_private_key))
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
    ),
)

node_steps_for_stack = node_steps(
    ProvisioningSpec(
        kubernetes_version=settings.kubernetes_version,
        kata=settings.kata,
        artifact_mirror_url=settings.artifact_mirror_url,
        pod_cidr=settings.pod_cidr,
    )
)
provisioning = {
    vm.node_name: NodeProvisioning(
        f"{vm.node_name}-provision",
        NodeProvisioningArgs(
            host=vm.external_ip,
            user=settings.admin_user,
            private_key=ssh.private_key_openssh,
            instance_id=vm.instance_id,
            instance=vm.instance,
            steps=node_steps_for_stack,
        ),
    )
    for vm in nodes.all
}
api = ApiEndpoint(
    "api",
    ApiEndpointArgs(
        name_prefix=settings.name_prefix,
        region=settings.region,
        zones=settings.zones,
        network=network.network.id,
        node_external_ips=[vm.external_ip for vm in nodes.all],
    ),
)
cluster = KubeadmCluster(
    "cluster",
    ClusterArgs(
        control_planes=nodes.control_planes,
        workers=nodes.workers,
        provisioned={name: p.last for name, p in provisioning.items()},
        admin_user=settings.admin_user,
        private_key=ssh.private_key_openssh,
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
    ),
)

mesh = IstioMesh(
    "mesh",
    MeshArgs(
        istio_version=settings.istio_version,
        provider=cluster.provider,
        cluster_ready=cluster.ready,
        gateway_node_port=gateway_node_port,
    ),
)
kata_runtime = KataRuntimeClass("kata-runtime", cluster.provider, cluster.ready)
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
proof = Proof(
    "proof",
    ProofArgs(
        control_plane=nodes.control_plane,
        nodes=nodes.all,
        admin_user=settings.admin_user,
        private_key=ssh.private_key_openssh,
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
    ),
)

key_file = f"~/.ssh/{settings.name_prefix}"
pulumi.export("apiEndpoint", api.address.apply(lambda ip: f"https://{ip}:{API_PORT}"))
pulumi.export("controlPlaneExternalIp", nodes.control_plane.external_ip)
pulumi.export(
    "nodes",
    {
        vm.node_name: {"zone": vm.zone, "internalIp": vm.internal_ip, "externalIp": vm.external_ip}
        for vm in nodes.all
    },
)
pulumi.export(
    "sshCommand",
    nodes.control_plane.external_ip.apply(
        # The key file is made anew under umask 077: readable by its owner only from its first byte.
        lambda ip: (
            f"(umask 077 && mkdir -p ~/.ssh && rm -f {key_file} && pulumi stack output sshPrivateKey "
            f"--show-secrets --stack {settings.stack} > {key_file}) && ssh -i {key_file} {settings.admin_user}@{ip}"
        )
    ),
)
pulumi.export("sshPrivateKey", ssh.private_key_openssh)
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export(
    "httpbinUrl",
    nodes.control_plane.external_ip.apply(lambda ip: f"http://{ip}:{gateway_node_port}/get")
    if gateway_node_port is not None
    else (
        f"kubectl --kubeconfig kubeconfig -n {settings.app_namespace} port-forward svc/httpbin "
        f"{HTTPBIN_PORT}:{HTTPBIN_PORT}  # then open http://localhost:{HTTPBIN_PORT}/get"
    ),
)
pulumi.export("verification", proof.report)
