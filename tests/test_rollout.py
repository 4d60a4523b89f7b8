"""Changes to live nodes roll one node at a time (issue 14), as every stack declares it (mock runs):
control planes first (cp-0 first of all: it runs `kubeadm upgrade apply`), then the workers, one
after another; in each node's turn a check on the node, a drain from cp-0, the containerd and Kata
steps again, Kubernetes, a release from cp-0. Nothing of it runs on a first deploy (no `create`
command), so the nodes are still provisioned in parallel. The scripts are tested by what they do in
tests/test_rollout_scripts.py."""

from __future__ import annotations

import itertools

import pytest
from harness import (
    LAST_PROVISIONING_STEP,
    PROJECT,
    ROLLOUT_MARKER_STEP,
    STACKS,
    assert_connects_to,
    cached_mode_run,
    cached_run,
    command_args,
    run_program,
    stack_modes,
    unsecret_value,
)
from test_ha import max_concurrent

from offline.engine import ProgramRun, Registration
from offline.plan import Graph

COMMAND = "command:remote:Command"
TURN = ("check", "drain", "containerd", "kata", "kubernetes", "release")
# Run on cp-0 (they need the cluster's admin credentials); the others on the node itself.
ON_CP0 = ("drain", "release")
NODE_ROLLOUT = "kata-mesh:rollout:NodeRollout$"


def rollout_steps(program: ProgramRun) -> list[Registration]:
    return [r for r in program.of_type(COMMAND) if NODE_ROLLOUT in r.urn]


def rollout_order(program: ProgramRun) -> list[str]:
    """The nodes in the order the stack's outputs list them: control planes, then workers."""
    names = list(program.output("nodes"))
    return sorted(names, key=lambda n: ("-worker-" in n, int(n.rsplit("-", 1)[1])))


def turn(program: ProgramRun, node: str) -> list[Registration]:
    return [program.one(COMMAND, f"{node}-rollout-{step}") for step in TURN]


@pytest.mark.parametrize("stack", STACKS)
def test_each_node_has_its_turn_and_nothing_runs_on_a_first_deploy(stack):
    program = cached_run(stack)
    nodes = rollout_order(program)
    cp0 = nodes[0]
    assert cp0.endswith("-cp-0")
    steps = rollout_steps(program)
    assert len(steps) == len(TURN) * len(nodes)
    for step in steps:
        # pulumi-command runs `create` when the resource is made: there is none. `update` runs
        # when the step's arguments change.
        assert "create" not in step.inputs and "triggers" not in step.inputs, step.name
        assert step.inputs["update"].startswith("sudo -n bash -s --"), step.name
    for node in nodes:
        for step_name, step in zip(TURN, turn(program, node), strict=True):
            where = cp0 if step_name in ON_CP0 else node
            assert_connects_to(program, unsecret_value(step.inputs["connection"]), where)


@pytest.mark.parametrize("stack", STACKS)
def test_control_planes_then_workers_one_node_at_a_time(stack):
    program = cached_run(stack)
    graph = Graph(program)
    nodes = rollout_order(program)
    chain = [step.urn for node in nodes for step in turn(program, node)]
    # Each step waits for the one before it, across nodes: one node out of service at a time.
    for before, after in itertools.pairwise(chain):
        assert before in graph.ancestors(after), (before, after)
    assert max_concurrent(graph, chain) == 1
    # The roles kubeadm's order asks for: upgrade apply on cp-0, upgrade node elsewhere.
    roles = [
        command_args(program.one(COMMAND, f"{n}-rollout-kubernetes").inputs["update"])["--role"]
        for n in nodes
    ]
    control_planes = sum("-cp-" in n for n in nodes)
    assert roles == ["first"] + ["control-plane"] * (control_planes - 1) + ["worker"] * (
        len(nodes) - control_planes
    )
    # After the cluster is up; the proof after the last node's turn.
    assert program.one(COMMAND, "cluster-nodes-ready").urn in graph.ancestors(chain[0])
    assert chain[-1] in graph.ancestors(program.one(COMMAND, "proof-verdict").urn)


@pytest.mark.parametrize(("stack", "mode"), stack_modes())
def test_a_first_deploy_still_provisions_the_nodes_in_parallel(stack, mode):
    program = cached_mode_run(stack, mode)
    graph = Graph(program)
    rollout = {r.urn for r in rollout_steps(program)}
    provisioning = [r for r in program.of_type(COMMAND) if "-provision-" in r.name]
    for step in provisioning:
        assert not rollout & graph.ancestors(step.urn), step.name
    last_steps = [
        r.urn for r in provisioning if r.name.endswith(f"-provision-{LAST_PROVISIONING_STEP[mode]}")
    ]
    assert max_concurrent(graph, last_steps) == len(rollout_order(program))


@pytest.mark.parametrize(("stack", "mode"), stack_modes())
def test_the_drain_and_the_release_hear_what_the_nodes_check_said(stack, mode):
    program = cached_mode_run(stack, mode)
    for node in rollout_order(program):
        check, drain, *_, upgrade, release = turn(program, node)
        rollout = command_args(check.inputs["update"])["--rollout"]
        assert len(rollout) == 64
        # The same rollout on every step of the turn, and the one a new VM is provisioned to.
        for step in (drain, upgrade, release):
            assert command_args(step.inputs["update"])["--rollout"] == rollout
        provisioned = program.one(COMMAND, f"{node}-provision-{ROLLOUT_MARKER_STEP[mode]}")
        assert command_args(provisioned.inputs["create"])["--rollout"] == rollout
        assert command_args(provisioned.inputs["create"])["--marker"] == "/var/lib/kata-mesh/rollout"
        # The mock check printed nothing (it never ran): the cp-0 steps got its answer as it is.
        assert command_args(drain.inputs["update"])["--needed"] == ""
        assert check.urn in drain.dependencies


# Two more runs of the program each: with the system tests (the plain suite's time budget).
@pytest.mark.system
def test_a_new_kubernetes_patch_rolls_every_node_and_reruns_no_provisioning_step():
    current = run_program("dev", preview=False)
    live = command_args(current.one(COMMAND, "kata-mesh-dev-cp-0-rollout-kubernetes").inputs["update"])[
        "--kubernetes-version"
    ]
    major, minor, patch = live.split(".")
    target = f"{major}.{minor}.{int(patch) + 1}"
    bumped = run_program("dev", preview=False, overrides={f"{PROJECT}:kubernetesVersion": target})
    before = {r.urn: r.inputs for r in current.registrations}
    after = {r.urn: r.inputs for r in bumped.registrations}
    assert before.keys() == after.keys()
    for urn in before:
        if "-provision-" in urn:
            # A new VM would get the new version; no live one runs its provisioning again.
            assert before[urn].get("triggers") == after[urn].get("triggers"), urn
    changed = {urn.rsplit("::", 1)[1] for urn in before if before[urn] != after[urn] and NODE_ROLLOUT in urn}
    # containerd and Kata are unchanged: their steps do not run in the turn.
    assert changed == {
        f"kata-mesh-dev-{node}-rollout-{step}"
        for node in ("cp-0", "worker-0")
        for step in ("check", "drain", "kubernetes", "release")
    }
    upgrade = command_args(bumped.one(COMMAND, "kata-mesh-dev-cp-0-rollout-kubernetes").inputs["update"])
    assert upgrade["--kubernetes-version"] == target
    assert upgrade["--apt-repository"] == f"https://pkgs.k8s.io/core:/stable:/v{major}.{minor}/deb/"
