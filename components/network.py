"""The cluster's own VPC, subnet and firewall: what the nodes need from each other, SSH, the API and
the ingress gateway, each from its own sources only; with private nodes, Cloud NAT for their
egress and SSH to them from the bastion only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

# Network tags the firewall rules target; NodeVm puts them on the instances.
NODE_TAG = "kata-mesh-node"
CONTROL_PLANE_TAG = "kata-mesh-control-plane"
BASTION_TAG = "kata-mesh-bastion"
# Cloud NAT's ports per node: dynamic allocation from MIN up to MAX, so a node pulling many
# images at once gets more, and one NAT address (64,512 ports) serves 252 nodes at their minimum.
NAT_MIN_PORTS_PER_VM = 256
NAT_MAX_PORTS_PER_VM = 8192
SSH_PORT = "22"
API_PORT = "6443"


@dataclass(frozen=True)
class InternalRule:
    """One node-to-node ingress rule: what it lets in, from which nodes to which, and why."""

    # The rule's name is <prefix>-allow-<rule>.
    rule: str
    protocol: str
    # Empty: the whole protocol (ICMP has no ports).
    ports: tuple[str, ...]
    source_tag: str
    target_tag: str
    # The rule's description in GCE.
    why: str


# Only what a kubeadm cluster with Flannel needs between its nodes, from Kubernetes' "Ports and
# Protocols" (https://kubernetes.io/docs/reference/networking/ports-and-protocols/). Source and
# target tags match the VMs' internal addresses only, so no other VM in the project is let in.
# Left out on purpose, as the same page says only "Self" or a load balancer uses them:
# kube-scheduler (10259) and kube-controller-manager (10257), which kubeadm binds to 127.0.0.1,
# and kube-proxy's health check (10256), which only a Service load balancer would call (the API's
# load balancer checks 6443, components/api_endpoint.py). Loopback never crosses the VPC firewall.
INTERNAL_RULES = (
    InternalRule(
        "api-internal",
        "tcp",
        (API_PORT,),
        NODE_TAG,
        CONTROL_PLANE_TAG,
        "Kubernetes API server from the nodes: pods reach it through the kubernetes Service, whose "
        "endpoints are the control planes' own addresses",
    ),
    InternalRule(
        "etcd",
        "tcp",
        ("2379-2380",),
        CONTROL_PLANE_TAG,
        CONTROL_PLANE_TAG,
        "etcd client and peer API between control planes only (stacked members, their API servers)",
    ),
    InternalRule(
        "kubelet",
        "tcp",
        ("10250",),
        CONTROL_PLANE_TAG,
        NODE_TAG,
        "Kubelet API from the control planes: the API server's logs, exec, attach and port-forward",
    ),
    InternalRule(
        "vxlan",
        "udp",
        ("8472",),
        NODE_TAG,
        NODE_TAG,
        "Flannel VXLAN: every pod-to-pod packet between nodes (runc and Kata pods alike) travels in it",
    ),
    InternalRule(
        "nodeports",
        "tcp",
        ("30000-32767",),
        NODE_TAG,
        NODE_TAG,
        "NodePort Services from the nodes; outside clients get their own rule",
    ),
    InternalRule(
        "icmp",
        "icmp",
        (),
        NODE_TAG,
        NODE_TAG,
        "ICMP between nodes: path MTU discovery under the VXLAN overlay, and ping",
    ),
)


@dataclass(frozen=True)
class NetworkArgs:
    name_prefix: str
    region: str
    subnet_cidr: str
    ssh_allowed_cidrs: Sequence[str]
    api_allowed_cidrs: Sequence[str]
    # The Istio ingress gateway's NodePort, opened to gateway_allowed_cidrs; None keeps it closed.
    gateway_node_port: int | None = None
    # Who may reach the gateway's NodePort. None falls back to api_allowed_cidrs, as before the
    # setting existed; __main__.py passes settings.gateway_allowed_cidrs.
    gateway_allowed_cidrs: Sequence[str] | None = None
    # Nodes without external addresses: a Cloud Router and Cloud NAT (one static address) give
    # them egress, and SSH reaches them from the bastion only (ssh_allowed_cidrs reach the bastion).
    private_nodes: bool = False


class Network(pulumi.ComponentResource):
    """A VPC without auto subnets, one subnet, and ingress rules for a kubeadm cluster."""

    network: gcp.compute.Network
    subnet: gcp.compute.Subnetwork
    # INTERNAL_RULES' firewall rules, by rule.
    internal_firewalls: dict[str, gcp.compute.Firewall]
    # Where private nodes' traffic to the internet comes from (the API load balancer's address
    # included): Cloud NAT's static address. Empty with public nodes.
    nat_ips: list[pulumi.Output[str]]

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
        self.internal_firewalls = {
            rule.rule: gcp.compute.Firewall(
                f"{name}-allow-{rule.rule}",
                name=f"{prefix}-allow-{rule.rule}",
                network=self.network.id,
                direction="INGRESS",
                allows=[
                    gcp.compute.FirewallAllowArgs(protocol=rule.protocol, ports=list(rule.ports) or None)
                ],
                source_tags=[rule.source_tag],
                target_tags=[rule.target_tag],
                description=rule.why,
                opts=child,
            )
            for rule in INTERNAL_RULES
        }

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

        self.nat_ips = []
        if args.private_nodes:
            self.ssh_firewall = gcp.compute.Firewall(
                f"{name}-allow-ssh",
                name=f"{prefix}-allow-ssh",
                network=self.network.id,
                direction="INGRESS",
                allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[SSH_PORT])],
                source_tags=[BASTION_TAG],
                target_tags=[NODE_TAG],
                description="SSH to the nodes from the bastion only",
                opts=child,
            )
            self.bastion_firewall = allow_tcp(
                "bastion-ssh", SSH_PORT, args.ssh_allowed_cidrs, BASTION_TAG, "SSH to the bastion"
            )
            self._nat(name, args, child)
        else:
            self.ssh_firewall = allow_tcp("ssh", SSH_PORT, args.ssh_allowed_cidrs, NODE_TAG, "SSH")
        self.api_firewall = allow_tcp(
            "api", API_PORT, args.api_allowed_cidrs, CONTROL_PLANE_TAG, "Kubernetes API"
        )
        if args.gateway_node_port is not None:
            gateway_cidrs = args.gateway_allowed_cidrs
            self.gateway_firewall = allow_tcp(
                "gateway",
                str(args.gateway_node_port),
                args.api_allowed_cidrs if gateway_cidrs is None else gateway_cidrs,
                NODE_TAG,
                "Istio ingress gateway (NodePort)",
            )
        self.register_outputs(
            {"network": self.network.id, "subnet": self.subnet.id, "natIps": self.nat_ips},
        )

    def _nat(self, name: str, args: NetworkArgs, child: pulumi.ResourceOptions) -> None:
        """Cloud NAT for the nodes' subnet on a static address, so the firewall in front of the API
        (which the nodes reach at the load balancer's external address) can name it."""
        prefix = args.name_prefix
        self.nat_address = gcp.compute.Address(
            f"{name}-nat-ip",
            name=f"{prefix}-nat",
            region=args.region,
            address_type="EXTERNAL",
            description="Private nodes' egress address (Cloud NAT)",
            opts=child,
        )
        self.router = gcp.compute.Router(
            f"{name}-router",
            name=f"{prefix}-router",
            region=args.region,
            network=self.network.id,
            opts=child,
        )
        self.nat = gcp.compute.RouterNat(
            f"{name}-nat",
            name=f"{prefix}-nat",
            router=self.router.name,
            region=args.region,
            nat_ip_allocate_option="MANUAL_ONLY",
            nat_ips=[self.nat_address.self_link],
            source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
            subnetworks=[
                gcp.compute.RouterNatSubnetworkArgs(
                    name=self.subnet.id, source_ip_ranges_to_nats=["ALL_IP_RANGES"]
                )
            ],
            enable_dynamic_port_allocation=True,
            enable_endpoint_independent_mapping=False,
            min_ports_per_vm=NAT_MIN_PORTS_PER_VM,
            max_ports_per_vm=NAT_MAX_PORTS_PER_VM,
            log_config=gcp.compute.RouterNatLogConfigArgs(enable=True, filter="ERRORS_ONLY"),
            opts=child,
        )
        self.nat_ips = [self.nat_address.address]
