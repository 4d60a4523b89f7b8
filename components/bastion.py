"""The bastion: with private nodes, the one machine with an external address that SSH reaches, and
the hop every SSH step takes to the nodes (pulumi-command's connection `proxy`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_gcp as gcp

from components.host_key import make_host_key
from components.network import BASTION_TAG
from components.node_provisioning import SshTarget, remote_step, ssh_connection, wait_ready_step
from components.nodes import UBUNTU_IMAGE_FAMILY, UBUNTU_IMAGE_PROJECT, ssh_metadata


@dataclass(frozen=True)
class BastionArgs:
    name_prefix: str
    stack: str
    zone: str
    region: str
    machine_type: str
    subnet: pulumi.Input[str]
    ssh_keys_metadata: pulumi.Input[str]
    admin_user: str
    private_key: pulumi.Input[str]
    authorized_key: pulumi.Input[str]
    # The firewall rule that lets SSH in: created before the first SSH step, deleted after the last.
    after: Sequence[pulumi.Resource] = ()


class Bastion(pulumi.ComponentResource):
    """A small Ubuntu VM: a static external address, its own network tag (SSH from sshAllowedCidrs
    only, network.py), a pinned host key, no service account and no nested virtualization; it
    only forwards SSH connections to the nodes."""

    external_ip: pulumi.Output[str]
    ssh: SshTarget
    # Its first SSH step: booted, cloud-init done, host key as pinned. Node steps wait for it.
    ready: command.remote.Command

    def __init__(self, name: str, args: BastionArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:bastion:Bastion", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        host_name = f"{args.name_prefix}-bastion"
        self.host_key = make_host_key(name, self, args.admin_user, args.authorized_key)
        self.address = gcp.compute.Address(
            f"{name}-ip",
            name=f"{host_name}-ip",
            region=args.region,
            address_type="EXTERNAL",
            opts=child,
        )
        image = gcp.compute.get_image_output(
            family=UBUNTU_IMAGE_FAMILY,
            project=UBUNTU_IMAGE_PROJECT,
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        self.instance = gcp.compute.Instance(
            name,
            name=host_name,
            zone=args.zone,
            machine_type=args.machine_type,
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(image=image.self_link),
            ),
            network_interfaces=[
                gcp.compute.InstanceNetworkInterfaceArgs(
                    subnetwork=args.subnet,
                    access_configs=[
                        gcp.compute.InstanceNetworkInterfaceAccessConfigArgs(nat_ip=self.address.address)
                    ],
                )
            ],
            # No service_account: the bastion calls no Google API, so it holds no token to steal.
            shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(
                enable_secure_boot=True,
                enable_vtpm=True,
                enable_integrity_monitoring=True,
            ),
            metadata=ssh_metadata(args.ssh_keys_metadata, self.host_key),
            labels={"app": "kata-mesh", "stack": args.stack, "role": "bastion"},
            tags=[BASTION_TAG],
            allow_stopping_for_update=True,
            opts=pulumi.ResourceOptions(
                parent=self,
                ignore_changes=["bootDisk.initializeParams.image"],
                # GCE names are unique: a replacement can only be made once the old VM is gone.
                delete_before_replace=True,
            ),
        )
        self.external_ip = self.address.address
        self.ssh = SshTarget(
            host=self.external_ip,
            user=args.admin_user,
            private_key=args.private_key,
            host_key=self.host_key.public_key_openssh,
        )
        self.ready = remote_step(
            f"{name}-wait-ready",
            wait_ready_step(),
            ssh_connection(self.ssh, wait_for_boot=True),
            pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.instance, *args.after],
                custom_timeouts=pulumi.CustomTimeouts(create="20m"),
            ),
            extra_triggers=[self.instance.instance_id],
        )
        self.register_outputs({"externalIp": self.external_ip})
