"""The Kubernetes API's one address: a regional external passthrough Network Load Balancer in front
of every control plane, from the first `pulumi up` on.

Passthrough keeps the client's own address (a proxy load balancer would show Google's), so the
firewall still limits the API to apiAllowedCidrs and the nodes, and the port stays 6443. Its trap:
the guest environment puts the load balancer's address on every backend VM, so a backend that calls
that address is answered by itself. The cluster therefore adds a control plane to its zone's group
only once its own API server answers (components/cluster.py); until then its calls to the address
leave the VM and reach the control planes that are already serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.network import API_PORT, CONTROL_PLANE_TAG

# Where Google's health checks for external passthrough Network Load Balancers come from
# ("Firewall rules", Cloud Load Balancing docs): the firewall must let them reach 6443.
HEALTH_CHECK_RANGES = ("35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22")
# /readyz answers anonymous callers ("ok") only when the API server can serve, etcd included.
HEALTH_CHECK_PATH = "/readyz"
# Long enough for a request in flight to finish when a control plane leaves the backends.
CONNECTION_DRAINING_SECONDS = 30


@dataclass(frozen=True)
class PassthroughLoadBalancer:
    """The parts of a regional external passthrough Network Load Balancer."""

    static_address: gcp.compute.Address
    health_check: gcp.compute.RegionHealthCheck
    backend_service: gcp.compute.RegionBackendService
    forwarding_rule: gcp.compute.ForwardingRule


def passthrough_load_balancer(
    name: str,
    lb_name: str,
    region: str,
    port: int,
    address_description: str,
    groups: Sequence[gcp.compute.InstanceGroup],
    opts: pulumi.ResourceOptions,
    https_path: str | None = None,
) -> PassthroughLoadBalancer:
    """A static address, a health check on `port` (HTTPS on https_path, else TCP), a backend
    service of the groups balanced by connection, and a forwarding rule on exactly `port` (passthrough
    translates none): the GCE resources all named lb_name, the Pulumi ones after `name`."""
    static_address = gcp.compute.Address(
        f"{name}-ip",
        name=lb_name,
        region=region,
        address_type="EXTERNAL",
        description=address_description,
        opts=opts,
    )
    health_check = gcp.compute.RegionHealthCheck(
        f"{name}-health",
        name=lb_name,
        region=region,
        https_health_check=gcp.compute.RegionHealthCheckHttpsHealthCheckArgs(
            port=port, request_path=https_path
        )
        if https_path is not None
        else None,
        tcp_health_check=gcp.compute.RegionHealthCheckTcpHealthCheckArgs(port=port)
        if https_path is None
        else None,
        check_interval_sec=5,
        timeout_sec=5,
        healthy_threshold=2,
        unhealthy_threshold=3,
        opts=opts,
    )
    backend_service = gcp.compute.RegionBackendService(
        f"{name}-backends",
        name=lb_name,
        region=region,
        load_balancing_scheme="EXTERNAL",
        protocol="TCP",
        health_checks=health_check.id,
        connection_draining_timeout_sec=CONNECTION_DRAINING_SECONDS,
        backends=[
            gcp.compute.RegionBackendServiceBackendArgs(group=group.self_link, balancing_mode="CONNECTION")
            for group in groups
        ],
        opts=opts,
    )
    forwarding_rule = gcp.compute.ForwardingRule(
        f"{name}-rule",
        name=lb_name,
        region=region,
        ip_address=static_address.address,
        ip_protocol="TCP",
        ports=[str(port)],
        load_balancing_scheme="EXTERNAL",
        backend_service=backend_service.id,
        opts=opts,
    )
    return PassthroughLoadBalancer(static_address, health_check, backend_service, forwarding_rule)


@dataclass(frozen=True)
class ApiEndpointArgs:
    name_prefix: str
    region: str
    # One instance group per zone the control planes may use, so the backends never change when
    # control planes are added or removed, only the groups' members.
    zones: Sequence[str]
    network: pulumi.Input[str]
    # Where the nodes' calls to the load balancer (an external one) come from: their external
    # addresses, or Cloud NAT's with private nodes.
    node_egress_ips: Sequence[pulumi.Input[str]]


class ApiEndpoint(pulumi.ComponentResource):
    """A static address, a forwarding rule on 6443, a backend service of zonal instance groups
    with an HTTPS /readyz health check, and the firewall rules that let nodes and the checks in."""

    address: pulumi.Output[str]
    instance_groups: dict[str, gcp.compute.InstanceGroup]

    def __init__(self, name: str, args: ApiEndpointArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:api:ApiEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix = args.name_prefix
        self.instance_groups = {
            zone: gcp.compute.InstanceGroup(
                f"{name}-{zone}",
                name=f"{prefix}-cp-{zone}",
                zone=zone,
                network=args.network,
                description="Control planes serving the Kubernetes API in this zone",
                opts=child,
            )
            for zone in args.zones
        }
        balancer = passthrough_load_balancer(
            name,
            f"{prefix}-api",
            args.region,
            int(API_PORT),
            "The Kubernetes API's address (kubeadm controlPlaneEndpoint)",
            list(self.instance_groups.values()),
            child,
            https_path=HEALTH_CHECK_PATH,
        )
        self.static_address = balancer.static_address
        self.address = self.static_address.address
        self.health_check = balancer.health_check
        self.backend_service = balancer.backend_service
        self.forwarding_rule = balancer.forwarding_rule

        def allow_api(
            rule: str, rule_name: str, sources: pulumi.Input[list[str]], what: str
        ) -> gcp.compute.Firewall:
            return gcp.compute.Firewall(
                f"{name}-allow-{rule}",
                name=f"{prefix}-{rule_name}",
                network=args.network,
                direction="INGRESS",
                allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[API_PORT])],
                source_ranges=sources,
                target_tags=[CONTROL_PLANE_TAG],
                description=what,
                opts=child,
            )

        self.node_firewall = allow_api(
            "nodes",
            "allow-api-from-nodes",
            pulumi.Output.all(*args.node_egress_ips).apply(lambda ips: sorted(f"{ip}/32" for ip in ips)),
            "Kubelets and joining nodes reach the API through the load balancer's address",
        )
        self.health_check_firewall = allow_api(
            "health-checks",
            "allow-api-health-checks",
            list(HEALTH_CHECK_RANGES),
            "Google's load balancer health checks of the API servers",
        )
        self.register_outputs({"address": self.address})
