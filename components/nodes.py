"""The cluster's machines: GCE VMs with nested virtualization, for the control plane and workers."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.host_key import HostKey, make_host_key
from components.network import CONTROL_PLANE_TAG, NODE_TAG
from components.node_provisioning import SshTarget

# Looked up by family so new stacks get the current image; running nodes ignore later images.
UBUNTU_IMAGE_FAMILY = "ubuntu-2404-lts-amd64"
UBUNTU_IMAGE_PROJECT = "ubuntu-os-cloud"
# Nodes write logs and metrics; they get no other cloud API access.
NODE_SCOPES = (
    "https://www.googleapis.com/auth/logging.write",
    "https://www.googleapis.com/auth/monitoring.write",
)
# Control planes also upload and read their backups (components/backups.py): Cloud Storage
# read-write, limited to the backup bucket by its IAM members (the account has no project role).
CONTROL_PLANE_SCOPES = (*NODE_SCOPES, "https://www.googleapis.com/auth/devstorage.read_write")
CONTROL_PLANE = "control-plane"
WORKER = "worker"


def ssh_metadata(ssh_keys_metadata: pulumi.Input[str], host_key: HostKey) -> dict[str, pulumi.Input[str]]:
    """Instance metadata for SSH: only the stack's key may log in, with the pinned host key."""
    return {
        "ssh-keys": ssh_keys_metadata,
        # Only the stack's key: no project-wide keys, and OS Login would ignore ssh-keys.
        "block-project-ssh-keys": "true",
        "enable-oslogin": "false",
        # cloud-init installs the host key the program pins (components/host_key.py).
        "user-data": host_key.user_data,
    }


@dataclass(frozen=True)
class MachineSpec:
    """What every node VM shares."""

    # The zones of the region that nodes are spread over, each role round-robin in this order.
    zones: tuple[str, ...]
    region: str
    machine_type: str
    min_cpu_platform: str | None
    spot: bool
    boot_disk_size_gb: int
    boot_disk_type: str
    secure_boot: bool


@dataclass(frozen=True)
class NodeVmArgs:
    name: str
    role: str
    stack: str
    zone: str
    machine: MachineSpec
    image: pulumi.Input[str]
    subnet: pulumi.Input[str]
    service_account_email: pulumi.Input[str]
    ssh_keys_metadata: pulumi.Input[str]
    admin_user: str
    private_key: pulumi.Input[str]
    # The stack's public key, which cloud-init authorizes for admin_user at first boot.
    authorized_key: pulumi.Input[str]
    # With a bastion the node has no external address: SSH goes through the bastion, egress through
    # Cloud NAT. None: a static external address, SSH straight to it.
    bastion: SshTarget | None = None
    # Pulumi refuses to replace or delete the VM (a control plane holding the cluster's only data).
    protect: bool = False


def _scheduling(spot: bool) -> gcp.compute.InstanceSchedulingArgs:
    if spot:
        # GCE requires these fields together for Spot VMs; STOP keeps the disk across preemption.
        return gcp.compute.InstanceSchedulingArgs(
            provisioning_model="SPOT",
            preemptible=True,
            automatic_restart=False,
            on_host_maintenance="TERMINATE",
            instance_termination_action="STOP",
        )
    return gcp.compute.InstanceSchedulingArgs(provisioning_model="STANDARD", automatic_restart=True)


class NodeVm(pulumi.ComponentResource):
    """One node: an Ubuntu VM with nested virtualization, its pinned SSH host key, and a static
    external address unless it is reached through the bastion."""

    name: pulumi.Output[str]
    internal_ip: pulumi.Output[str]
    # None for a private node.
    external_ip: pulumi.Output[str] | None
    instance_id: pulumi.Output[str]
    ssh: SshTarget

    def __init__(self, name: str, args: NodeVmArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:nodes:NodeVm", name, None, opts)
        self.node_name = args.name
        self.zone = args.zone
        machine = args.machine
        self.host_key = make_host_key(name, self, args.admin_user, args.authorized_key)
        access_configs = None
        self.external_ip = None
        if args.bastion is None:
            # Static, so a stopped and restarted (or preempted) node keeps the address SSH uses.
            self.address = gcp.compute.Address(
                f"{name}-ip",
                name=f"{args.name}-ip",
                region=machine.region,
                address_type="EXTERNAL",
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.external_ip = self.address.address
            access_configs = [gcp.compute.InstanceNetworkInterfaceAccessConfigArgs(nat_ip=self.external_ip)]
        tags = [NODE_TAG, CONTROL_PLANE_TAG] if args.role == CONTROL_PLANE else [NODE_TAG]
        self.instance = gcp.compute.Instance(
            name,
            name=args.name,
            zone=args.zone,
            machine_type=machine.machine_type,
            min_cpu_platform=machine.min_cpu_platform,
            advanced_machine_features=gcp.compute.InstanceAdvancedMachineFeaturesArgs(
                enable_nested_virtualization=True,
            ),
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=args.image,
                    size=machine.boot_disk_size_gb,
                    type=machine.boot_disk_type,
                ),
            ),
            network_interfaces=[
                gcp.compute.InstanceNetworkInterfaceArgs(
                    subnetwork=args.subnet,
                    # None: no external address at all (a private node).
                    access_configs=access_configs,
                )
            ],
            scheduling=_scheduling(machine.spot),
            service_account=gcp.compute.InstanceServiceAccountArgs(
                email=args.service_account_email,
                scopes=list(CONTROL_PLANE_SCOPES if args.role == CONTROL_PLANE else NODE_SCOPES),
            ),
            shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(
                enable_secure_boot=machine.secure_boot,
                enable_vtpm=True,
                enable_integrity_monitoring=True,
            ),
            metadata=ssh_metadata(args.ssh_keys_metadata, self.host_key),
            labels={"app": "kata-mesh", "stack": args.stack, "role": args.role},
            tags=tags,
            allow_stopping_for_update=True,
            opts=pulumi.ResourceOptions(
                parent=self,
                # A newer image in the family must not replace a running node.
                ignore_changes=["bootDisk.initializeParams.image"],
                protect=args.protect,
                # GCE names are unique: a replacement can only be made once the old VM is gone.
                delete_before_replace=True,
            ),
        )
        self.name = self.instance.name
        self.internal_ip = self.instance.network_interfaces.apply(lambda nics: nics[0].network_ip or "")
        self.instance_id = self.instance.instance_id
        self.ssh = SshTarget(
            host=self.internal_ip if self.external_ip is None else self.external_ip,
            user=args.admin_user,
            private_key=args.private_key,
            host_key=self.host_key.public_key_openssh,
            proxy=args.bastion,
        )
        self.register_outputs(
            {"name": self.name, "internalIp": self.internal_ip, "externalIp": self.external_ip}
        )


@dataclass(frozen=True)
class ClusterNodesArgs:
    name_prefix: str
    stack: str
    machine: MachineSpec
    control_plane_count: int
    worker_count: int
    subnet: pulumi.Input[str]
    ssh_keys_metadata: pulumi.Input[str]
    admin_user: str
    private_key: pulumi.Input[str]
    authorized_key: pulumi.Input[str]
    # Private nodes: every SSH step goes through this bastion, and no node has an external address.
    bastion: SshTarget | None = None
    # Whether a control plane's VM may be replaced or deleted (allowControlPlaneReplacement).
    allow_control_plane_replacement: bool = True
    # The image new VMs boot from: the stack's node image (components/node_image.py), or None for
    # Ubuntu's current image of its family.
    image: pulumi.Input[str] | None = None


def zone_for(zones: tuple[str, ...], index: int) -> str:
    """Node `index` of a role: round-robin over the zones, so each role spreads as evenly as it can
    and a node keeps its zone when nodes are added after it."""
    return zones[index % len(zones)]


class ClusterNodes(pulumi.ComponentResource):
    """The control planes and the workers, with the node service account and image they share."""

    control_planes: list[NodeVm]
    workers: list[NodeVm]

    def __init__(self, name: str, args: ClusterNodesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:nodes:ClusterNodes", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # The cluster's own identity instead of the Compute Engine default account (Editor).
        self.service_account = gcp.serviceaccount.Account(
            f"{name}-sa",
            account_id=f"km-{args.stack}-nodes",
            display_name=f"kata-mesh {args.stack} nodes",
            opts=child,
        )
        image = (
            args.image
            if args.image is not None
            else gcp.compute.get_image_output(
                family=UBUNTU_IMAGE_FAMILY,
                project=UBUNTU_IMAGE_PROJECT,
                opts=pulumi.InvokeOutputOptions(parent=self),
            ).self_link
        )

        def node(role: str, index: int) -> NodeVm:
            node_name = f"{args.name_prefix}-{'cp' if role == CONTROL_PLANE else 'worker'}-{index}"
            return NodeVm(
                node_name,
                NodeVmArgs(
                    name=node_name,
                    role=role,
                    stack=args.stack,
                    zone=zone_for(args.machine.zones, index),
                    machine=args.machine,
                    image=image,
                    subnet=args.subnet,
                    service_account_email=self.service_account.email,
                    ssh_keys_metadata=args.ssh_keys_metadata,
                    admin_user=args.admin_user,
                    private_key=args.private_key,
                    authorized_key=args.authorized_key,
                    bastion=args.bastion,
                    protect=role == CONTROL_PLANE and not args.allow_control_plane_replacement,
                ),
                opts=child,
            )

        self.control_planes = [node(CONTROL_PLANE, i) for i in range(args.control_plane_count)]
        self.workers = [node(WORKER, i) for i in range(args.worker_count)]
        self.register_outputs({"controlPlaneIps": [vm.internal_ip for vm in self.control_planes]})

    @property
    def control_plane(self) -> NodeVm:
        """The first control plane: the one `kubeadm init` runs on, never removed by scaling."""
        return self.control_planes[0]

    @property
    def all(self) -> list[NodeVm]:
        return [*self.control_planes, *self.workers]
