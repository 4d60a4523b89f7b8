"""The firewall of every stack, in mock runs as preview and as up: between nodes only what kubeadm
and Flannel need, each outside port open to its own setting's ranges, nothing open to the world
unless allowWorldAccess says so."""

from __future__ import annotations

import ipaddress

import pytest
from harness import OPERATOR_CONFIG, PROJECT, STACKS, cached_run, run_program

from components.settings import SettingsError
from offline.engine import stack_file_values as stack_file

FIREWALL = "gcp:compute/firewall:Firewall"
MODES = [pytest.param(True, id="preview"), pytest.param(False, id="up")]
NODE = "kata-mesh-node"
CONTROL_PLANE = "kata-mesh-control-plane"
BASTION = "kata-mesh-bastion"
SSH_CIDRS = OPERATOR_CONFIG[f"{PROJECT}:sshAllowedCidrs"]
API_CIDRS = OPERATOR_CONFIG[f"{PROJECT}:apiAllowedCidrs"]
GATEWAY_CIDRS = OPERATOR_CONFIG[f"{PROJECT}:gatewayAllowedCidrs"]

# Written from the upstream documents, not from components/network.py.
# Kubernetes, "Ports and Protocols" (https://kubernetes.io/docs/reference/networking/ports-and-protocols/):
#   control plane  TCP 6443 API server (used by: all); TCP 2379-2380 etcd server client API
#                  (kube-apiserver, etcd); TCP 10250 kubelet API (self, control plane);
#                  TCP 10259 kube-scheduler (self); TCP 10257 kube-controller-manager (self)
#   worker nodes   TCP 10250 kubelet API (self, control plane); TCP 10256 kube-proxy (self, load
#                  balancers); TCP 30000-32767 NodePort Services (all)
# Flannel's vxlan backend (flannel Documentation/backends.md): UDP 8472, the Linux kernel's VXLAN
# port, carries the pod network between nodes. ICMP: path MTU discovery (RFC 1191) and ping.
# Self-only ports need no rule (loopback never reaches the VPC firewall; kubeadm binds
# kube-scheduler and kube-controller-manager to 127.0.0.1), and the only load balancer here is
# the API's, which checks 6443.
INTERNAL_RULES = {
    # rule: (allows, source tag, target tag)
    "allow-api-internal": ([{"protocol": "tcp", "ports": ["6443"]}], NODE, CONTROL_PLANE),
    "allow-etcd": ([{"protocol": "tcp", "ports": ["2379-2380"]}], CONTROL_PLANE, CONTROL_PLANE),
    "allow-kubelet": ([{"protocol": "tcp", "ports": ["10250"]}], CONTROL_PLANE, NODE),
    "allow-vxlan": ([{"protocol": "udp", "ports": ["8472"]}], NODE, NODE),
    "allow-nodeports": ([{"protocol": "tcp", "ports": ["30000-32767"]}], NODE, NODE),
    "allow-icmp": ([{"protocol": "icmp"}], NODE, NODE),
}
SELF_ONLY_PORTS = {10256, 10257, 10259}
# The API load balancer's own rules (nodes, health checks), checked in test_ha.py.
API_ENDPOINT_RULES = {"api-allow-nodes", "api-allow-health-checks"}
# A source range shorter than /8 counts as open to the world.
WORLD_OPEN_PREFIX = 8


def firewalls(stack: str, preview: bool) -> dict[str, dict]:
    return {r.name: r.inputs for r in cached_run(stack, preview).of_type(FIREWALL)}


def port_range(ports: str) -> range:
    first, _, last = ports.partition("-")
    return range(int(first), int(last or first) + 1)


def opened_ports(rule: dict, protocol: str) -> set[int]:
    return {
        port
        for allow in rule["allows"]
        if allow["protocol"] == protocol
        for ports in allow.get("ports", [])
        for port in port_range(ports)
    }


@pytest.mark.parametrize("preview", MODES)
@pytest.mark.parametrize("stack", STACKS)
def test_the_firewall_holds_exactly_the_node_rules_and_one_rule_per_outside_port(stack, preview):
    expected = {f"network-{rule}" for rule in INTERNAL_RULES} | API_ENDPOINT_RULES
    expected |= {"network-allow-ssh", "network-allow-api"}
    private = stack_file(stack).get(f"{PROJECT}:privateNodes")
    if private:
        expected.add("network-allow-bastion-ssh")
    if stack_file(stack).get(f"{PROJECT}:ingressGateway"):
        expected.add("network-allow-gateway")
        if private:
            # The gateway's load balancer checks the NodePort from Google's ranges.
            expected.add("gateway-allow-health-checks")
    rules = firewalls(stack, preview)
    assert set(rules) == expected
    for rule in rules.values():
        assert rule["direction"] == "INGRESS"
        assert rule["name"].startswith(f"kata-mesh-{stack}-")


@pytest.mark.parametrize("preview", MODES)
@pytest.mark.parametrize("stack", STACKS)
def test_nodes_let_each_other_in_on_exactly_the_ports_kubeadm_and_flannel_need(stack, preview):
    rules = firewalls(stack, preview)
    # SSH from the bastion (private nodes) is checked with the other SSH rules.
    internal = {
        name: rule for name, rule in rules.items() if "sourceTags" in rule and name != "network-allow-ssh"
    }
    assert set(internal) == {f"network-{rule}" for rule in INTERNAL_RULES}
    for rule, (allows, source, target) in INTERNAL_RULES.items():
        inputs = internal[f"network-{rule}"]
        assert inputs["name"] == f"kata-mesh-{stack}-{rule}"
        assert inputs["allows"] == allows, rule
        assert (inputs["sourceTags"], inputs["targetTags"]) == ([source], [target]), rule
        assert "sourceRanges" not in inputs, rule
        assert inputs["description"].strip(), rule


@pytest.mark.parametrize("preview", MODES)
@pytest.mark.parametrize("stack", STACKS)
def test_no_rule_allows_every_protocol_self_only_ports_or_etcd_beyond_the_control_planes(stack, preview):
    for name, rule in firewalls(stack, preview).items():
        assert all(allow["protocol"] in ("tcp", "udp", "icmp") for allow in rule["allows"]), name
        assert all(allow.get("ports") for allow in rule["allows"] if allow["protocol"] != "icmp"), name
        assert not opened_ports(rule, "tcp") & SELF_ONLY_PORTS, name
        if opened_ports(rule, "tcp") & {2379, 2380}:
            assert rule.get("sourceTags") == [CONTROL_PLANE], name
            assert rule["targetTags"] == [CONTROL_PLANE], name
            assert "sourceRanges" not in rule, name


@pytest.mark.parametrize("preview", MODES)
@pytest.mark.parametrize("stack", STACKS)
def test_ssh_and_the_api_are_open_to_their_own_ranges_only(stack, preview):
    rules = firewalls(stack, preview)
    ssh = rules["network-allow-ssh"]
    assert ssh["allows"] == [{"protocol": "tcp", "ports": ["22"]}]
    assert ssh["targetTags"] == [NODE]
    if stack_file(stack).get(f"{PROJECT}:privateNodes"):
        # The nodes take SSH from the bastion only; sshAllowedCidrs reach the bastion only.
        assert ssh["sourceTags"] == [BASTION]
        assert "sourceRanges" not in ssh
        ssh = rules["network-allow-bastion-ssh"]
        assert ssh["allows"] == [{"protocol": "tcp", "ports": ["22"]}]
        assert ssh["targetTags"] == [BASTION]
    else:
        assert "network-allow-bastion-ssh" not in rules
    assert ssh["sourceRanges"] == SSH_CIDRS
    api = rules["network-allow-api"]
    assert api["allows"] == [{"protocol": "tcp", "ports": ["6443"]}]
    assert api["sourceRanges"] == API_CIDRS
    assert api["targetTags"] == [CONTROL_PLANE]
    for rule in (ssh, api):
        assert "sourceTags" not in rule


@pytest.mark.parametrize("preview", MODES)
def test_the_gateway_is_open_to_gateway_allowed_cidrs_not_to_the_api_s(preview):
    assert set(GATEWAY_CIDRS).isdisjoint(API_CIDRS), "the operator config must tell the two apart"
    gateway = firewalls("prod", preview)["network-allow-gateway"]
    assert gateway["allows"] == [{"protocol": "tcp", "ports": ["30080"]}]
    assert gateway["sourceRanges"] == GATEWAY_CIDRS
    assert gateway["targetTags"] == [NODE]
    assert "sourceTags" not in gateway


def test_a_gateway_turned_on_anywhere_takes_its_own_ranges_and_port():
    program = run_program(
        "dev",
        preview=False,
        overrides={
            f"{PROJECT}:ingressGateway": True,
            f"{PROJECT}:gatewayNodePort": 31000,
            f"{PROJECT}:gatewayAllowedCidrs": ["192.0.2.64/26", "198.51.100.200/32"],
        },
    )
    gateway = next(r.inputs for r in program.of_type(FIREWALL) if r.name == "network-allow-gateway")
    assert gateway["allows"] == [{"protocol": "tcp", "ports": ["31000"]}]
    assert gateway["sourceRanges"] == ["192.0.2.64/26", "198.51.100.200/32"]
    # Public nodes: the gateway's NodePort on cp-0's own address, no load balancer of its own.
    assert program.output("httpbinUrl") == f"http://{program.output('controlPlaneExternalIp')}:31000/get"
    assert not [
        r for r in program.of_type("gcp:compute/address:Address") if r.inputs["name"].endswith("-gateway")
    ]


def test_without_the_gateway_its_ranges_open_nothing():
    assert not stack_file("dev").get(f"{PROJECT}:ingressGateway")
    rules = firewalls("dev", False)
    assert "network-allow-gateway" not in rules
    for rule in rules.values():
        assert not set(GATEWAY_CIDRS) & set(rule.get("sourceRanges", [])), rule["name"]


def world_open(cidr: str) -> bool:
    return ipaddress.ip_network(cidr).prefixlen < WORLD_OPEN_PREFIX


@pytest.mark.parametrize("preview", MODES)
@pytest.mark.parametrize("stack", STACKS)
def test_no_rule_is_open_to_the_world_without_allow_world_access(stack, preview):
    assert not stack_file(stack).get(f"{PROJECT}:allowWorldAccess")
    for name, rule in firewalls(stack, preview).items():
        ranges = rule.get("sourceRanges", [])
        # The nodes' addresses (api-allow-nodes) are known only after deploy.
        if isinstance(ranges, list):
            assert not [cidr for cidr in ranges if world_open(cidr)], name


WORLD = {
    f"{PROJECT}:sshAllowedCidrs": ["0.0.0.0/0"],
    f"{PROJECT}:apiAllowedCidrs": ["198.51.100.7/32", "0.0.0.0/1", "128.0.0.0/1"],
    f"{PROJECT}:ingressGateway": True,
    f"{PROJECT}:gatewayAllowedCidrs": ["0.0.0.0/0"],
}


def test_world_open_ranges_stop_the_program_before_any_resource():
    with pytest.raises(SettingsError) as caught:
        run_program("dev", preview=True, overrides=WORLD)
    found = [(p.key, p.index) for p in caught.value.problems]
    assert found == [
        ("sshAllowedCidrs", 0),
        ("apiAllowedCidrs", 1),
        ("apiAllowedCidrs", 2),
        ("gatewayAllowedCidrs", 0),
    ]
    assert all("allowWorldAccess true" in p.fix for p in caught.value.problems)


def test_allow_world_access_opens_exactly_the_listed_world_ranges():
    program = run_program("dev", preview=False, overrides={**WORLD, f"{PROJECT}:allowWorldAccess": True})
    rules = {r.name: r.inputs for r in program.of_type(FIREWALL)}
    assert rules["network-allow-ssh"]["sourceRanges"] == ["0.0.0.0/0"]
    assert rules["network-allow-api"]["sourceRanges"] == ["198.51.100.7/32", "0.0.0.0/1", "128.0.0.0/1"]
    assert rules["network-allow-gateway"]["sourceRanges"] == ["0.0.0.0/0"]
    # The override widens what was listed, nothing else: node-to-node rules stay tag-only.
    opened = {
        name for name, rule in rules.items() if any(world_open(c) for c in rule.get("sourceRanges", []))
    }
    assert opened == {"network-allow-ssh", "network-allow-api", "network-allow-gateway"}


def depends_on(program, registration) -> set[str]:
    """Every URN the resource waits for on create, and outlives on destroy: its dependencies, its
    provider's, and theirs."""
    by_urn = {r.urn: r for r in program.registrations}
    seen: set[str] = set()
    todo = [registration.urn]
    while todo:
        current = by_urn.get(todo.pop())
        if current is None:
            continue
        provider = current.provider.rsplit("::", 1)[0] if current.provider else ""
        for urn in [*current.dependencies, *([provider] if provider else [])]:
            if urn not in seen:
                seen.add(urn)
                todo.append(urn)
    return seen


@pytest.mark.parametrize("stack", STACKS)
def test_every_ssh_step_and_every_cluster_object_outlives_the_rules_that_let_it_in(stack):
    """Pulumi deletes a resource only after everything that depends on it: the drain, removal and
    Helm uninstalls at `pulumi destroy` still find SSH and the API open."""
    program = cached_run(stack, False)
    rules = {r.name: r.urn for r in program.of_type(FIREWALL)}
    ssh_rules = {rules["network-allow-ssh"]}
    if stack_file(stack).get(f"{PROJECT}:privateNodes"):
        ssh_rules.add(rules["network-allow-bastion-ssh"])
    commands = program.of_type("command:remote:Command")
    assert commands
    for command in commands:
        needed = ssh_rules - ({rules["network-allow-ssh"]} if command.name == "bastion-wait-ready" else set())
        assert needed <= depends_on(program, command), command.name
    kubernetes = [r for r in program.registrations if r.custom and r.type.startswith("kubernetes:")]
    assert kubernetes
    for resource in kubernetes:
        if resource.type == "pulumi:providers:kubernetes":
            continue
        assert rules["network-allow-api"] in depends_on(program, resource), resource.name
