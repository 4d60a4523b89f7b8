"""The ingress gateway's load balancer (privateNodes) under the mock engine: built beside the API's
endpoint as __main__.py builds it, on the API's own groups of control planes, as preview and as up."""

from __future__ import annotations

import pytest
from harness import PROJECT, ProgramRun, Registration, cached_run, stack_config

STACK = "prod"
PREFIX = f"kata-mesh-{STACK}"
REGION = "europe-west4"
ZONES = ("europe-west4-a", "europe-west4-b", "europe-west4-c")
# prod's NodePort as its config gives it (Pulumi.yaml's default; a port passed anywhere else is
# caught by test_firewall's gateway on another port).
NODE_PORT = int(stack_config(STACK)[f"{PROJECT}:gatewayNodePort"])
COMPONENT = "kata-mesh:gateway:GatewayEndpoint"
ADDRESS = "gcp:compute/address:Address"
GROUP = "gcp:compute/instanceGroup:InstanceGroup"
HEALTH_CHECK = "gcp:compute/regionHealthCheck:RegionHealthCheck"
BACKEND_SERVICE = "gcp:compute/regionBackendService:RegionBackendService"
FORWARDING_RULE = "gcp:compute/forwardingRule:ForwardingRule"
FIREWALL = "gcp:compute/firewall:Firewall"
CONTROL_PLANE = "kata-mesh-control-plane"
# Written from Google's documents, not from components/api_endpoint.py: the probe ranges of
# backend service-based external passthrough Network Load Balancers (Cloud Load Balancing,
# "Firewall rules" and "Health checks overview", probe IP ranges).
GOOGLE_PROBE_RANGES = {"35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22"}
MODES = [pytest.param(True, id="preview"), pytest.param(False, id="up")]


def run(preview: bool) -> ProgramRun:
    """prod (private nodes, the gateway on) as __main__.py builds it."""
    return cached_run(STACK, preview)


def gateway_children(program: ProgramRun) -> list[Registration]:
    [component] = program.of_type(COMPONENT)
    return [r for r in program.registrations if r.parent == component.urn]


def one(program: ProgramRun, type_: str) -> Registration:
    [found] = [r for r in gateway_children(program) if r.type == type_]
    return found


def gateway_address(program: ProgramRun) -> str:
    return program.states[one(program, ADDRESS).urn]["address"]


@pytest.mark.parametrize("preview", MODES)
def test_the_gateway_declares_its_own_chain_and_no_instance_group_of_its_own(preview):
    program = run(preview)
    children = gateway_children(program)
    assert sorted(r.type for r in children) == sorted(
        [ADDRESS, HEALTH_CHECK, BACKEND_SERVICE, FORWARDING_RULE, FIREWALL]
    )
    # The same resources as preview and as up: none is declared inside an apply.
    assert sorted(r.name for r in children) == sorted(r.name for r in gateway_children(run(not preview)))
    # The only groups are the API endpoint's, one per zone.
    assert sorted(g.inputs["zone"] for g in program.of_type(GROUP)) == list(ZONES)
    assert all(not g.parent.endswith("::gateway") for g in program.of_type(GROUP))
    for r in children:
        assert r.inputs["name"].startswith(f"{PREFIX}-"), r.name
    assert one(program, ADDRESS).inputs["name"] == f"{PREFIX}-gateway"


@pytest.mark.parametrize("preview", MODES)
def test_clients_probes_and_firewall_all_use_exactly_the_node_port(preview):
    program = run(preview)
    rule = one(program, FORWARDING_RULE).inputs
    check = one(program, HEALTH_CHECK).inputs
    firewall = one(program, FIREWALL).inputs
    # Passthrough translates no port: the rule listens on the NodePort itself, nothing else.
    assert rule["ports"] == [str(NODE_PORT)]
    assert "portRange" not in rule and not rule.get("allPorts")
    assert set(check) & {"tcpHealthCheck", "httpHealthCheck", "httpsHealthCheck"} == {"tcpHealthCheck"}
    assert check["tcpHealthCheck"] == {"port": NODE_PORT}
    assert firewall["allows"] == [{"protocol": "tcp", "ports": [str(NODE_PORT)]}]


@pytest.mark.parametrize("preview", MODES)
def test_every_part_is_external_tcp_in_the_region_and_chained_together(preview):
    program = run(preview)
    address = one(program, ADDRESS).inputs
    check = one(program, HEALTH_CHECK).inputs
    service = one(program, BACKEND_SERVICE).inputs
    rule = one(program, FORWARDING_RULE).inputs
    assert address["addressType"] == "EXTERNAL"
    assert service["loadBalancingScheme"] == rule["loadBalancingScheme"] == "EXTERNAL"
    assert service["protocol"] == rule["ipProtocol"] == "TCP"
    assert address["region"] == check["region"] == service["region"] == rule["region"] == REGION
    if not preview:
        # The mock engine's ids are "<name>-id".
        assert service["healthChecks"] == f"{check['name']}-id"
        assert rule["backendService"] == f"{service['name']}-id"
        assert rule["ipAddress"] == gateway_address(program)


def test_the_backends_are_exactly_the_api_s_groups_balanced_by_connection():
    program = run(False)
    service = one(program, BACKEND_SERVICE).inputs
    api_groups = [g for g in program.of_type(GROUP) if g.parent.endswith("::api")]
    assert len(program.of_type(GROUP)) == len(api_groups)
    assert len(api_groups) == len(ZONES)
    assert sorted(b["group"] for b in service["backends"]) == sorted(
        program.states[g.urn]["selfLink"] for g in api_groups
    )
    assert [b["balancingMode"] for b in service["backends"]] == ["CONNECTION"] * len(ZONES)


@pytest.mark.parametrize("preview", MODES)
def test_only_google_s_probes_get_a_rule_on_the_control_planes(preview):
    program = run(preview)
    [firewall] = [r.inputs for r in gateway_children(program) if r.type == FIREWALL]
    assert set(firewall["sourceRanges"]) == GOOGLE_PROBE_RANGES
    assert len(firewall["sourceRanges"]) == len(GOOGLE_PROBE_RANGES)
    assert firewall["targetTags"] == [CONTROL_PLANE]
    assert firewall["direction"] == "INGRESS"
    if not preview:
        # The mock engine's ids are "<name>-id".
        assert firewall["network"] == f"{PREFIX}-vpc-id"
    assert "sourceTags" not in firewall
    assert firewall["name"] == f"{PREFIX}-allow-gateway-health-checks"


def test_the_url_is_the_gateway_s_own_address_on_the_node_port():
    program = run(False)
    address = gateway_address(program)
    api_address = next(
        program.states[r.urn]["address"] for r in program.of_type(ADDRESS) if r.parent.endswith("::api")
    )
    assert address != api_address
    assert program.output("httpbinUrl") == f"http://{address}:{NODE_PORT}/get"
