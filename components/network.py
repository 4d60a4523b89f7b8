"""The cluster's own VPC, subnet and firewall: node-to-node traffic, SSH and the API, nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

# Network tags the firewall rules target; NodeVm puts them on the instances.
NODE_TAG = "kata-mesh-node"
CONTROL_PLANE_TAG = "kata-mesh-control-plane"
SSH_PORT = "22"
API_PORT = "6443"


@dataclass(frozen=True)
class NetworkArgs:
    name_prefix: str
    region: str
    subnet_cidr: str
    ssh_allowed_cidrs: Sequence[str]
    api_allowed_cidrs: Sequence[str]
    # The Istio ingress gateway's NodePort, opened to api_allowed_cidrs; None keeps it closed.
    gateway_node_port: int | None = None


class Network(pulumi.ComponentResource):
    """A VPC without auto subnets, one subnet, and ingress rules for a kubeadm cluster."""

    network: gcp.compute.Network
    subnet: gcp.compute.Subnetwork

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:network:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix = args.name_prefix

        self.network = gcp.compute.Network(
            f"{name}-vpc",
            name=f"{prefix}-vpc",
            auto_create_subnetworks=False,
            routing_mode="REGIONAL",
            description="kata-mesh cluster network",
            opts=child,
        )
        self.subnet = gcp.compute.Subnetwork(
            f"{name}-subnet",
            name=f"{prefix}-nodes",
            network=self.network.id,
            region=args.region,
            ip_cidr_range=args.subnet_cidr,
            private_ip_google_access=True,
            opts=child,
        )
        # Node to node: kubelet, etcd, Flannel's VXLAN (UDP 8472), NodePorts, ICMP. Selected by the
        # node tag rather than by CIDR so only this cluster's VMs match.
        self.internal_firewall = gcp.compute.Firewall(
            f"{name}-allow-internal",
            name=f"{prefix}-allow-internal",
            network=self.network.id,
            direction="INGRESS",
            allows=[gcp.compute.FirewallAllowArgs(protocol="all")],
            source_tags=[NODE_TAG],
            target_tags=[NODE_TAG],
            description="All traffic between cluster nodes (includes Flannel VXLAN UDP 8472)",
            opts=child,
        )

        def allow_tcp(
            rule: str, port: str, cidrs: Sequence[str], target_tag: str, what: str
        ) -> gcp.compute.Firewall:
            return gcp.compute.Firewall(
                f"{name}-allow-{rule}",
                name=f"{prefix}-allow-{rule}",
                network=self.network.id,
                direction="INGRESS",
                allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[port])],
                source_ranges=list(cidrs),
                target_tags=[target_tag],
                description=f"{what} from the listed CIDRs only",
                opts=child,
            )

        self.ssh_firewall = allow_tcp("ssh", SSH_PORT, args.ssh_allowed_cidrs, NODE_TAG, "SSH")
        self.api_firewall = allow_tcp(
            "api", API_PORT, args.api_allowed_cidrs, CONTROL_PLANE_TAG, "Kubernetes API"
        )
        if args.gateway_node_port is not None:
            self.gateway_firewall = allow_tcp(
                "gateway",
                str(args.gateway_node_port),
                args.api_allowed_cidrs,
                NODE_TAG,
                "Istio ingress gateway (NodePort)",
            )
        self.register_outputs(
            {"network": self.network.id, "subnet": self.subnet.id},
        )
