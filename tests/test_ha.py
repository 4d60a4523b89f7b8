"""The highly available control plane under the mock engine: control planes across zones behind a
regional external passthrough load balancer, the certificate key kept secret, joins in order,
scaling 1 -> 3 -> 5 -> 3, and a bounded number of SSH sessions to the first control plane."""

from __future__ import annotations

import base64
import functools
import re

import pytest
import yaml
from harness import (
    SECRET_SIG,
    ProgramRun,
    Registration,
    cached_run,
    command_args,
    node_vms,
    plain_strings,
    run_program,
)

from offline.plan import Graph

COMMAND = "command:remote:Command"
INSTANCE = "gcp:compute/instance:Instance"
ADDRESS = "gcp:compute/address:Address"
MEMBERSHIP = "gcp:compute/instanceGroupMembership:InstanceGroupMembership"
GROUP = "gcp:compute/instanceGroup:InstanceGroup"
BACKEND_SERVICE = "gcp:compute/regionBackendService:RegionBackendService"
HEALTH_CHECK = "gcp:compute/regionHealthCheck:RegionHealthCheck"
FORWARDING_RULE = "gcp:compute/forwardingRule:ForwardingRule"
FIREWALL = "gcp:compute/firewall:Firewall"
RANDOM_BYTES = "random:index/randomBytes:RandomBytes"
# Google's probes for external passthrough Network Load Balancers (Cloud Load Balancing docs,
# "Health checks overview", probe IP ranges).
GOOGLE_PROBE_RANGES = {"35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22"}
HEX_KEY = re.compile(r"\b[0-9a-f]{64}\b")


@functools.cache
def scaled(control_planes: int, workers: int = 3, allow_shrink: bool = False) -> ProgramRun:
    if (control_planes, workers, allow_shrink) == (3, 3, False):
        return cached_run("prod")  # the prod stack as it is
    return run_program(
        "prod",
        preview=False,
        overrides={
            "kata-mesh:controlPlaneCount": control_planes,
            "kata-mesh:workerCount": workers,
            "kata-mesh:allowControlPlaneShrink": allow_shrink,
        },
    )


def value(v: object) -> object:
    """A secret input's plain value (the mock engine keeps the secret marker)."""
    return v["value"] if isinstance(v, dict) and "value" in v else v


def commands(program: ProgramRun) -> dict[str, Registration]:
    return {r.name: r for r in program.of_type(COMMAND)}


def stdin_args(registration: Registration) -> dict[str, str]:
    """The secret arguments a step carries on the first line of its stdin."""
    first_line = str(value(registration.inputs["stdin"])).split("\n", 1)[0]
    assert first_line.startswith('set -- "$@" '), first_line
    return command_args(first_line)


def kubeadm_documents(encoded: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(base64.b64decode(encoded).decode())}


def api_address(program: ProgramRun) -> str:
    [address] = [r for r in program.of_type(ADDRESS) if r.inputs["name"] == "kata-mesh-prod-api"]
    return program.states[address.urn]["address"]


def test_public_nodes_reach_the_api_load_balancer_from_their_own_addresses():
    program = cached_run("dev")
    rules = {r.inputs["name"]: r.inputs for r in program.of_type(FIREWALL)}
    nodes = {
        f"{program.states[r.urn]['address']}/32"
        for r in program.of_type(ADDRESS)
        if re.fullmatch(r"kata-mesh-dev-(cp|worker)-\d+-ip", r.inputs["name"])
    }
    assert len(nodes) == len(node_vms(program))
    assert set(rules["kata-mesh-dev-allow-api-from-nodes"]["sourceRanges"]) == nodes
    assert program.of_type("gcp:compute/routerNat:RouterNat") == []


def api_only(program: ProgramRun, kind: str) -> list[Registration]:
    """The API load balancer's resources of a kind (prod's gateway has a load balancer too)."""
    return [r for r in program.of_type(kind) if r.inputs["name"] == "kata-mesh-prod-api"]


def test_prod_runs_three_control_planes_in_three_distinct_zones_of_its_region():
    program = cached_run("prod")
    control_planes = {
        r.inputs["name"]: r.inputs["zone"] for r in node_vms(program) if "-cp-" in r.inputs["name"]
    }
    assert control_planes == {
        "kata-mesh-prod-cp-0": "europe-west4-a",
        "kata-mesh-prod-cp-1": "europe-west4-b",
        "kata-mesh-prod-cp-2": "europe-west4-c",
    }
    workers = [r.inputs["zone"] for r in node_vms(program) if "-worker-" in r.inputs["name"]]
    assert sorted(workers) == ["europe-west4-a", "europe-west4-b", "europe-west4-c"]


def test_the_load_balancer_chain_is_complete_and_points_at_every_zone():
    program = cached_run("prod")
    [rule] = api_only(program, FORWARDING_RULE)
    [service] = api_only(program, BACKEND_SERVICE)
    [check] = api_only(program, HEALTH_CHECK)
    groups = program.of_type(GROUP)
    assert rule.inputs["loadBalancingScheme"] == "EXTERNAL"
    assert rule.inputs["ipProtocol"] == "TCP" and rule.inputs["ports"] == ["6443"]
    assert rule.inputs["ipAddress"] == api_address(program)
    # The mock engine's ids are "<name>-id".
    assert rule.inputs["backendService"] == f"{service.inputs['name']}-id"
    assert rule.inputs["region"] == service.inputs["region"] == check.inputs["region"] == "europe-west4"
    assert service.inputs["loadBalancingScheme"] == "EXTERNAL" and service.inputs["protocol"] == "TCP"
    assert service.inputs["healthChecks"] == f"{check.inputs['name']}-id"
    assert check.inputs["httpsHealthCheck"] == {"port": 6443, "requestPath": "/readyz"}
    assert sorted(g.inputs["zone"] for g in groups) == ["europe-west4-a", "europe-west4-b", "europe-west4-c"]
    assert sorted(b["group"] for b in service.inputs["backends"]) == sorted(
        program.states[g.urn]["selfLink"] for g in groups
    )
    assert {b["balancingMode"] for b in service.inputs["backends"]} == {"CONNECTION"}
    # Each control plane is a member of its own zone's group.
    group_by_name = {g.inputs["name"]: g.inputs["zone"] for g in groups}
    instance_zone = {program.states[i.urn]["selfLink"]: i.inputs["zone"] for i in node_vms(program)}
    members = program.of_type(MEMBERSHIP)
    assert len(members) == 3
    for member in members:
        assert group_by_name[member.inputs["instanceGroup"]] == member.inputs["zone"]
        assert instance_zone[member.inputs["instance"]] == member.inputs["zone"]


def test_the_api_is_open_to_the_admins_the_nodes_and_googles_health_checks_only():
    program = cached_run("prod")
    rules = {r.inputs["name"]: r.inputs for r in program.of_type(FIREWALL)}
    # prod's nodes are private: their calls to the load balancer's (external) address leave
    # through Cloud NAT, from its one static address.
    [nat_address] = [r for r in program.of_type(ADDRESS) if r.inputs["name"] == "kata-mesh-prod-nat"]
    [nat] = program.of_type("gcp:compute/routerNat:RouterNat")
    assert nat.inputs["natIpAllocateOption"] == "MANUAL_ONLY"
    assert nat.inputs["natIps"] == [program.states[nat_address.urn]["selfLink"]]
    from_nodes = rules["kata-mesh-prod-allow-api-from-nodes"]
    assert from_nodes["sourceRanges"] == [f"{program.states[nat_address.urn]['address']}/32"]
    assert set(rules["kata-mesh-prod-allow-api-health-checks"]["sourceRanges"]) == GOOGLE_PROBE_RANGES
    # Inside the VPC, the nodes by tag: pods reach the API servers through the kubernetes Service.
    internal = rules["kata-mesh-prod-allow-api-internal"]
    assert (internal["sourceTags"], "sourceRanges" in internal) == (["kata-mesh-node"], False)
    for name in ("allow-api", "allow-api-from-nodes", "allow-api-health-checks", "allow-api-internal"):
        rule = rules[f"kata-mesh-prod-{name}"]
        assert rule["allows"] == [{"protocol": "tcp", "ports": ["6443"]}]
        assert rule["targetTags"] == ["kata-mesh-control-plane"]

    # No other rule lets anyone reach 6443 (a rule without ports opens every port of its protocol).
    def opens_6443(allow: dict) -> bool:
        spans = [ports.partition("-") for ports in allow.get("ports", ["1-65535"])]
        return allow["protocol"] in ("tcp", "all") and any(
            int(first) <= 6443 <= int(last or first) for first, _, last in spans
        )

    reaching_api = {name for name, rule in rules.items() if any(opens_6443(a) for a in rule["allows"])}
    assert reaching_api == {
        f"kata-mesh-prod-{name}"
        for name in ("allow-api", "allow-api-from-nodes", "allow-api-health-checks", "allow-api-internal")
    }


def test_every_kubeadm_document_uses_the_load_balancer_as_its_endpoint():
    program = cached_run("prod")
    endpoint = f"{api_address(program)}:6443"
    steps = commands(program)
    init = kubeadm_documents(command_args(steps["cluster-init"].inputs["create"])["--config-b64"])
    assert init["ClusterConfiguration"]["controlPlaneEndpoint"] == endpoint
    assert init["ClusterConfiguration"]["apiServer"]["certSANs"] == [api_address(program)]
    joins = [name for name in steps if name.endswith("-join")]
    assert len(joins) == 2 + 3
    for name in joins:
        join = kubeadm_documents(stdin_args(steps[name])["--config-b64"])["JoinConfiguration"]
        assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == endpoint, name
    kubeconfig = yaml.safe_load(str(value(program.raw_stack_outputs["kubeconfig"])))
    assert [c["cluster"]["server"] for c in kubeconfig["clusters"]] == [f"https://{endpoint}"]


def test_the_certificate_key_is_random_secret_and_only_ever_on_stdin():
    program = cached_run("prod")
    key_resource = program.one(RANDOM_BYTES, "cluster-certificate-key")
    assert key_resource.inputs["length"] == 32
    key = program.states[key_resource.urn]["hex"]
    assert HEX_KEY.fullmatch(key)
    steps = commands(program)
    carriers = {}
    for name, step in steps.items():
        assert key not in str(step.inputs.get("create", "")), f"{name}: the key is on a command line"
        assert key not in str(step.inputs.get("delete", "")), name
        if key in str(value(step.inputs.get("stdin", ""))):
            carriers[name] = step
    # As an argument: init and the control planes' tokens (the joins carry it inside their
    # base64 JoinConfiguration, below).
    assert sorted(carriers) == [
        "cluster-init",
        "kata-mesh-prod-cp-1-join-token",
        "kata-mesh-prod-cp-2-join-token",
    ]
    for name in carriers:
        assert steps[name].raw_inputs["stdin"][SECRET_SIG], name
    assert stdin_args(steps["cluster-init"])["--certificate-key"] == key
    assert "--upload-certs" in str(value(steps["cluster-init"].inputs["stdin"]))
    for cp in ("cp-1", "cp-2"):
        join = kubeadm_documents(stdin_args(steps[f"kata-mesh-prod-{cp}-join"])["--config-b64"])
        assert join["JoinConfiguration"]["controlPlane"]["certificateKey"] == key
    # Nothing plain (state, outputs) holds it.
    for registration in program.registrations:
        assert all(key not in text for text in plain_strings(registration.inputs)), registration.name
    assert all(key not in text for text in plain_strings(program.raw_stack_outputs))


def encryption_config(registration: Registration) -> dict:
    [document] = list(
        yaml.safe_load_all(base64.b64decode(stdin_args(registration)["--encryption-config-b64"]))
    )
    return document


# Runs of the program of their own: with the system tests (the plain suite's time budget).
@pytest.mark.system
@pytest.mark.parametrize("count", [3, 5])
def test_the_encryption_key_is_random_secret_on_stdin_only_and_every_control_plane_gets_it(count):
    """The EncryptionConfiguration's secretbox key is a RandomBytes' 32 bytes; the whole file
    travels as a secret stdin argument to init and to every control plane's join (whose API server
    starts on it), to no other step, on no command line, and in nothing plain."""
    program = scaled(count)
    key_resource = program.one(RANDOM_BYTES, "cluster-encryption-key")
    assert key_resource.inputs["length"] == 32
    key = program.states[key_resource.urn]["base64"]
    assert len(base64.b64decode(key)) == 32
    steps = commands(program)
    init = encryption_config(steps["cluster-init"])
    assert init["resources"][0]["providers"][0] == {"secretbox": {"keys": [{"name": "key1", "secret": key}]}}
    joins = [f"kata-mesh-prod-cp-{i}-join" for i in range(1, count)]
    for name in joins:
        assert encryption_config(steps[name]) == init, name
        assert command_args(steps[name].inputs["create"])["--control-plane"] == "true"
    rendered = stdin_args(steps["cluster-init"])["--encryption-config-b64"]
    carriers = {
        name
        for name, step in steps.items()
        if key in str(value(step.inputs.get("stdin", "")))
        or rendered in str(value(step.inputs.get("stdin", "")))
    }
    assert carriers == {"cluster-init", *joins}
    for name in carriers:
        assert steps[name].raw_inputs["stdin"][SECRET_SIG], name
    for name, step in steps.items():
        for part in ("create", "delete"):
            assert key not in str(step.inputs.get(part, "")) and rendered not in str(
                step.inputs.get(part, "")
            ), name
    for registration in program.registrations:
        assert all(key not in text and rendered not in text for text in plain_strings(registration.inputs)), (
            registration.name
        )
    assert all(key not in text for text in plain_strings(program.raw_stack_outputs))


def test_every_control_plane_gets_the_audit_policy_and_the_hardened_cluster_configuration():
    program = scaled(5)
    steps = commands(program)
    init_args = command_args(steps["cluster-init"].inputs["create"])
    policy = init_args["--audit-policy-b64"]
    assert yaml.safe_load(base64.b64decode(policy))["kind"] == "Policy"
    for i in range(1, 5):
        assert (
            command_args(steps[f"kata-mesh-prod-cp-{i}-join"].inputs["create"])["--audit-policy-b64"]
            == policy
        )
    # The joining control planes build their API servers from init's ClusterConfiguration (kubeadm
    # uploads it): the flags that name both files are there, once.
    cluster = kubeadm_documents(init_args["--config-b64"])["ClusterConfiguration"]
    flags = {a["name"]: a["value"] for a in cluster["apiServer"]["extraArgs"]}
    assert flags["encryption-provider-config"] == "/etc/kubernetes/encryption/config.yaml"
    assert flags["audit-policy-file"] == "/etc/kubernetes/audit/policy.yaml"
    # Workers run no API server: neither file reaches them.
    for name, step in steps.items():
        if re.fullmatch(r"kata-mesh-prod-worker-\d+-join", name):
            assert "--audit-policy-b64" not in command_args(step.inputs["create"]), name
            assert "--encryption-config-b64" not in stdin_args(step), name


def test_control_planes_join_after_init_become_backends_after_joining_and_before_workers_are_ready():
    program = cached_run("prod")
    graph = Graph(program)
    urn = {r.name: r.urn for r in program.registrations}
    init, ready = urn["cluster-init"], urn["cluster-nodes-ready"]
    assert urn["kata-mesh-prod-cp-0-api-backend"] in graph.ancestors(init), "cp-0 serves init's calls"
    # ... through the load balancer's address, which it answers itself once the rule exists.
    assert urn["api-rule"] in graph.ancestors(urn["kata-mesh-prod-cp-0-api-backend"])
    # The API's firewall rules come before the cluster, so `pulumi destroy` removes them after it.
    for rule in ("network-allow-api", "api-allow-nodes", "api-allow-health-checks"):
        assert urn[rule] in graph.ancestors(init), rule
    # A replaced control-plane VM (same name, same self link) is added to its group again.
    for cp in ("cp-0", "cp-1", "cp-2"):
        backend = program.one(MEMBERSHIP, f"kata-mesh-prod-{cp}-api-backend")
        assert backend.delete_before_replace
        assert backend.replace_with == [urn[f"kata-mesh-prod-{cp}"]]
    for cp in ("cp-1", "cp-2"):
        join, backend = urn[f"kata-mesh-prod-{cp}-join"], urn[f"kata-mesh-prod-{cp}-api-backend"]
        assert init in graph.ancestors(join)
        assert join in graph.ancestors(backend), f"{cp} would be a backend before its API server answers"
        assert backend in graph.ancestors(ready) and join in graph.ancestors(ready)
    # Control planes join in parallel: neither waits for the other.
    one, two = urn["kata-mesh-prod-cp-1-join"], urn["kata-mesh-prod-cp-2-join"]
    assert one not in graph.ancestors(two) and two not in graph.ancestors(one)
    join_step = command_args(commands(program)["kata-mesh-prod-cp-1-join"].inputs["create"])
    assert join_step["--control-plane"] == "true"
    assert join_step["--takes-workloads"] == "false"


def _cp_resources(program: ProgramRun) -> set[str]:
    """The names of every resource about one control plane (its VM, address, steps, backend)."""
    return {r.name for r in program.registrations if re.search(r"-cp-\d", r.name)}


@pytest.mark.parametrize(
    ("count", "zones"), [(1, ["a"]), (3, ["a", "b", "c"]), (5, ["a", "b", "c", "a", "b"])]
)
def test_each_control_plane_count_declares_what_it_needs(count, zones):
    program = scaled(count)
    names = [f"kata-mesh-prod-cp-{i}" for i in range(count)]
    instances = {r.inputs["name"]: r.inputs["zone"] for r in node_vms(program) if "-cp-" in r.inputs["name"]}
    assert instances == {n: f"europe-west4-{z}" for n, z in zip(names, zones, strict=True)}
    members = {r.name for r in program.of_type(MEMBERSHIP)}
    assert members == {f"{n}-api-backend" for n in names}
    steps = commands(program)
    assert {n for n in steps if re.fullmatch(r"kata-mesh-prod-cp-\d-join", n)} == {
        f"{n}-join" for n in names[1:]
    }
    assert {n for n in steps if n.endswith("-leave-on-removal")} == {
        f"{n}-leave-on-removal" for n in names[1:]
    }
    # The load balancer exists whatever the count: growing changes no endpoint.
    assert len(api_only(program, FORWARDING_RULE)) == 1


def test_scaling_1_3_5_3_adds_and_removes_exactly_the_control_planes_concerned():
    one, three, five, back = scaled(1), scaled(3), scaled(5), scaled(3)
    assert _cp_resources(one) < _cp_resources(three) < _cp_resources(five)
    removed = _cp_resources(five) - _cp_resources(back)
    assert removed and all(re.search(r"-cp-[34]", name) for name in removed)
    assert {n for n in removed if n.endswith("-leave-on-removal")} == {
        "kata-mesh-prod-cp-3-leave-on-removal",
        "kata-mesh-prod-cp-4-leave-on-removal",
    }
    # Shared resources keep their inputs: the endpoint, the groups and cp-0's init do not change.
    for kind in (FORWARDING_RULE, BACKEND_SERVICE, GROUP):
        # (The engine registers resources in whatever order their inputs resolve.)
        assert {r.name: r.inputs for r in five.of_type(kind)} == {
            r.name: r.inputs for r in back.of_type(kind)
        }
    assert commands(five)["cluster-init"].inputs == commands(back)["cluster-init"].inputs


def test_a_removed_control_plane_leaves_the_load_balancer_before_etcd_and_etcd_before_its_vm():
    """Pulumi deletes in reverse dependency order: what waits for a resource goes before it."""
    program = scaled(5)
    graph = Graph(program)
    urn = {r.name: r.urn for r in program.registrations}
    for cp in ("cp-3", "cp-4"):
        leave = urn[f"kata-mesh-prod-{cp}-leave-on-removal"]
        assert leave in graph.ancestors(urn[f"kata-mesh-prod-{cp}-api-backend"])
        assert urn[f"kata-mesh-prod-{cp}"] in graph.ancestors(leave)
        step = commands(program)[f"kata-mesh-prod-{cp}-leave-on-removal"]
        assert "create" not in step.inputs, "no SSH session until the control plane is removed"
        args = command_args(step.inputs["delete"])
        assert args["--node-name"] == f"kata-mesh-prod-{cp}"
        assert args["--policy-file"] == "/etc/kata-mesh/control-plane-policy"
        assert "etcdctl" in str(step.inputs["stdin"]) and "member remove" in str(step.inputs["stdin"])


# Runs of the program of their own: with the system tests (the plain suite's time budget).
@pytest.mark.system
@pytest.mark.parametrize(("allow", "shrink"), [(False, "refused"), (True, "allowed")])
def test_the_shrink_policy_on_cp0_follows_the_setting_and_says_destroying_when_deleted(allow, shrink):
    program = scaled(3, allow_shrink=allow)
    policy = commands(program)["cluster-control-plane-policy"]
    assert command_args(policy.inputs["create"])["--shrink"] == shrink
    assert command_args(policy.inputs["delete"])["--shrink"] == "destroying"
    assert policy.delete_before_replace
    graph = Graph(program)
    # At destroy it goes first: every removal step is one of its dependencies.
    removal = [
        r.urn for r in program.of_type(COMMAND) if r.name.endswith(("-leave-on-removal", "-drain-on-removal"))
    ]
    assert removal and set(removal) <= graph.ancestors(policy.urn)


def max_concurrent(graph: Graph, urns: list[str]) -> int:
    """The most of these resources the engine can run at once: the largest set with no dependency
    path between any two (Dilworth: its size is len(urns) minus a maximum matching of the
    'comes before' relation)."""
    before = {u: [v for v in urns if u in graph.ancestors(v)] for u in urns}
    matched_to: dict[str, str] = {}

    def augment(u: str, seen: set[str]) -> bool:
        for v in before[u]:
            if v not in seen:
                seen.add(v)
                if v not in matched_to or augment(matched_to[v], seen):
                    matched_to[v] = u
                    return True
        return False

    return len(urns) - sum(augment(u, set()) for u in urns)


def test_the_concurrency_measure_counts_parallel_and_chained_resources():
    program = scaled(3)
    graph = Graph(program)
    urn = {r.name: r.urn for r in program.registrations}
    instances = [urn[f"kata-mesh-prod-{node}"] for node in ("cp-0", "cp-1", "cp-2", "worker-0", "worker-1")]
    assert max_concurrent(graph, instances) == 5
    chain = [urn["cluster-init"], urn["cluster-admin-conf"], urn["cluster-nodes-ready"]]
    assert max_concurrent(graph, chain) == 1


@pytest.mark.system
def test_fifty_workers_never_open_more_than_a_few_ssh_sessions_to_the_first_control_plane():
    program = scaled(3, workers=50)
    graph = Graph(program)
    # Where the SSH steps reach cp-0: its external address, or (private nodes) its internal one.
    node = program.output("nodes")["kata-mesh-prod-cp-0"]
    cp0 = node["externalIp"] or node["internalIp"]
    on_cp0 = [r for r in program.of_type(COMMAND) if value(r.inputs["connection"])["host"] == cp0]
    # pulumi-command connects only to run a command: on create (or update) when it has one, on
    # delete when it has one. Pulumi deletes in reverse dependency order, so the same measure
    # bounds both.
    at_create = [r.urn for r in on_cp0 if "create" in r.inputs]
    at_delete = [r.urn for r in on_cp0 if "delete" in r.inputs]
    assert len(at_create) > 50 and len(at_delete) > 50
    # sshd's MaxStartups starts refusing past 10 connections in the handshake at once.
    assert max_concurrent(graph, at_create) <= 4
    assert max_concurrent(graph, at_delete) <= 4
    tokens = [r for r in on_cp0 if r.name.endswith("-join-token")]
    assert len(tokens) == 52 and max_concurrent(graph, [r.urn for r in tokens]) == 3
    # Tokens are still one per node.
    assert len({command_args(r.inputs["create"])["--node-name"] for r in tokens}) == 52


def test_a_control_plane_joining_again_first_has_its_old_etcd_member_forgotten_on_cp0():
    program = cached_run("prod")
    node = program.output("nodes")["kata-mesh-prod-cp-0"]
    cp0_host = node["externalIp"] or node["internalIp"]
    cp0_id = program.states[program.one(INSTANCE, "kata-mesh-prod-cp-0").urn]["instanceId"]
    for name in ("kata-mesh-prod-cp-1", "kata-mesh-prod-cp-2"):
        forget = program.one(COMMAND, f"{name}-forget-member")
        join = program.one(COMMAND, f"{name}-join")
        assert forget.urn in join.dependencies
        assert program.one(COMMAND, f"{name}-join-token").urn in forget.dependencies
        assert value(forget.inputs["connection"])["host"] == cp0_host
        assert command_args(forget.inputs["create"])["--node-name"] == name
        # Runs when that node's VM is new (its instance id), not cp-0's.
        vm_id = program.states[program.one(INSTANCE, name).urn]["instanceId"]
        assert vm_id in forget.inputs["triggers"] and cp0_id not in forget.inputs["triggers"]
        # Nothing else runs it again: not its script's content, not a new init.
        assert forget.inputs["triggers"] == [vm_id]
    assert not [r for r in program.of_type(COMMAND) if r.name == "kata-mesh-prod-cp-0-forget-member"]
