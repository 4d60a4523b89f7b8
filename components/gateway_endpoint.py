"""The Istio ingress gateway's own address when the nodes have none (privateNodes): a regional
external passthrough Network Load Balancer in front of the gateway's NodePort on the control planes.

kube-proxy answers a NodePort on every node and forwards to a gateway pod wherever it runs, so the
control planes the API's load balancer already groups by zone serve as backends too: this reuses
those groups (components/api_endpoint.py) and creates none. Passthrough translates no port, so the
forwarding rule listens on the NodePort itself and the URL is http://<address>:<nodePort>/get.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.api_endpoint import HEALTH_CHECK_RANGES, passthrough_load_balancer
from components.network import CONTROL_PLANE_TAG


@dataclass(frozen=True)
class GatewayEndpointArgs:
    name_prefix: str
    region: str
    # The gateway Service's NodePort (settings.gateway_node_port): the port clients call, the
    # health check probes and the firewall opens to the probes.
    node_port: int
    network: pulumi.Input[str]
    # The backends: the API endpoint's per-zone groups of control planes (api.instance_groups).
    instance_groups: Sequence[gcp.compute.InstanceGroup]


class GatewayEndpoint(pulumi.ComponentResource):
    """A static address, a forwarding rule on the NodePort, a backend service of the given groups
    with a TCP health check on the NodePort, and the firewall rule that lets the checks in."""

    address: pulumi.Output[str]
    url: pulumi.Output[str]

    def __init__(
        self, name: str, args: GatewayEndpointArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("kata-mesh:gateway:GatewayEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix = args.name_prefix
        port = str(args.node_port)
        # TCP, not HTTP: a connection accepted on the NodePort is what says this node can forward
        # to a gateway pod (kube-proxy rejects it while the Service has no ready endpoint), and
        # the gateway routes by Host, so an HTTP probe's path would say little more.
        balancer = passthrough_load_balancer(
            name,
            f"{prefix}-gateway",
            args.region,
            args.node_port,
            "The Istio ingress gateway's address (its NodePort behind a load balancer)",
            args.instance_groups,
            child,
        )
        self.static_address = balancer.static_address
        self.address = self.static_address.address
        self.health_check = balancer.health_check
        self.backend_service = balancer.backend_service
        self.forwarding_rule = balancer.forwarding_rule
        # Only the probes get a rule here. Clients need none of their own: passthrough keeps the
        # client's source address, so network.py's gateway rule (gatewayAllowedCidrs to the
        # NodePort on every node, control planes included) already decides who gets in.
        self.health_check_firewall = gcp.compute.Firewall(
            f"{name}-allow-health-checks",
            name=f"{prefix}-allow-gateway-health-checks",
            network=args.network,
            direction="INGRESS",
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[port])],
            source_ranges=list(HEALTH_CHECK_RANGES),
            target_tags=[CONTROL_PLANE_TAG],
            description="Google's load balancer health checks of the ingress gateway's NodePort",
            opts=child,
        )
        self.url = self.address.apply(lambda ip: f"http://{ip}:{port}/get")
        self.register_outputs({"address": self.address, "url": self.url})
