"""offline/estimate.py: time estimates from the resource graph (issue 15), the same model for
every design: a fixed cost per resource, summed along the heaviest chain of waits."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest
from harness import STACKS, cached_images_run, run_program

from components.node_provisioning import SCRIPTS_DIR, NodeStep
from offline import estimate, plan
from offline.engine import SECRET_SIG, SECRET_VALUE, UNKNOWN, ProgramRun, Registration

COMMAND = plan.COMMAND_TYPE
INSTANCE = estimate.INSTANCE_TYPE
NETWORK = "gcp:compute/network:Network"
SUBNET = "gcp:compute/subnetwork:Subnetwork"
FIREWALL = "gcp:compute/firewall:Firewall"
BAKED_IMAGE = "https://www.googleapis.com/compute/v1/projects/p/global/images/kata-mesh-node-0123abcd"
STOCK_IMAGE = "https://www.googleapis.com/compute/v1/projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"

# --- small programs built by hand ---------------------------------------------------------------


def urn(name: str, type_: str) -> str:
    return f"urn:pulumi:t::kata-mesh::{type_}::{name}"


def resource(
    name: str, type_: str, waits: Sequence[Registration] = (), inputs: dict[str, Any] | None = None
) -> Registration:
    values = inputs or {}
    return Registration(
        urn=urn(name, type_),
        type=type_,
        name=name,
        parent="",
        custom=True,
        inputs=values,
        raw_inputs=values,
        dependencies=[w.urn for w in waits],
        ignore_changes=[],
        additional_secret_outputs=[],
        delete_before_replace=False,
        provider="",
    )


def script_text(script: str) -> str:
    """What the program sends on stdin for a node script."""
    return NodeStep(script, script, ()).script_text


def step(
    name: str,
    script: str | None,
    waits: Sequence[Registration] = (),
    host: str = "10.0.0.5",
    create: str | None = "sudo -n bash -s -- --x y",
    update: str | None = ":",
    triggers: Sequence[str] = ("t1",),
) -> Registration:
    """A remote command as remote_step makes it: the script on stdin, run by `bash -s`."""
    inputs: dict[str, Any] = {"connection": {"host": host, "user": "kata-admin"}, "triggers": list(triggers)}
    if script is not None:
        inputs["stdin"] = script_text(script)
    if create is not None:
        inputs["create"] = create
    if update is not None:
        inputs["update"] = update
    return resource(name, COMMAND, waits, inputs)


def instance(name: str, image: str, internal: str, external: str | None = None, waits=()) -> Registration:
    nic: dict[str, Any] = {"networkIp": internal}
    if external is not None:
        nic["accessConfigs"] = [{"natIp": external}]
    inputs = {"name": name, "bootDisk": {"initializeParams": {"image": image}}, "networkInterfaces": [nic]}
    return resource(name, INSTANCE, waits, inputs)


def run(*registrations: Registration) -> ProgramRun:
    return ProgramRun("t", True, list(registrations))


def deploy(*registrations: Registration) -> estimate.Estimate:
    return estimate.estimate_deploy(plan.Graph(run(*registrations)))


def change(before: Sequence[Registration], after: Sequence[Registration]) -> estimate.Estimate:
    return estimate.estimate_change(run(*before), run(*after))


S = estimate.SCRIPT_SECONDS
G = estimate.GCP_SECONDS

# --- the first deploy ---------------------------------------------------------------------------


def test_a_chain_of_waits_adds_up():
    network = resource("vpc", NETWORK)
    subnet = resource("subnet", SUBNET, [network])
    vm = instance("n", STOCK_IMAGE, "10.0.0.5", waits=[subnet])
    ready = step("ready", "00-wait-ready.sh", [vm])
    result = deploy(network, subnet, vm, ready)
    assert result.seconds == G[NETWORK] + G[SUBNET] + G[INSTANCE] + S["00-wait-ready"] == 120
    assert result.path == [("vpc", 25), ("subnet", 15), ("n", 35), ("ready", 45)]
    assert result.minutes == 2.0
    # Three short steps in a row outlast one longer step beside them (75 s against 55 s).
    heavy = step("kata", "30-kata.sh")
    longer = deploy(network, subnet, vm, heavy)
    assert longer.seconds == 75 and [name for name, _ in longer.path] == ["vpc", "subnet", "n"]


def test_parallel_branches_take_the_longest_and_the_path_goes_through_it():
    root = resource("vpc", NETWORK)
    slow = step("kata", "30-kata.sh", [root])
    fast = step("containerd", "20-containerd.sh", [root])
    # Waits for both, declared so that the fast branch comes first.
    end = step("verdict", "97-verdict.sh", [fast, slow])
    result = deploy(root, fast, slow, end)
    assert result.seconds == 25 + S["30-kata"] + S["97-verdict"] == 83
    assert [name for name, _ in result.path] == ["vpc", "kata", "verdict"]
    # Two resources that wait for nothing: the heavier one is the estimate.
    alone = deploy(resource("fw", FIREWALL), resource("vpc", NETWORK))
    assert alone.seconds == 25 and alone.path == [("vpc", 25)]


def test_a_command_with_no_create_costs_nothing_when_created():
    vm = instance("n", STOCK_IMAGE, "10.0.0.5")
    # The rollout's steps run only on update; the removal steps only on delete.
    update_only = step("rollout-kata", "30-kata.sh", [vm], create=None, update="sudo -n bash -s -- --k v")
    empty = step("drain", "84-rollout-drain.sh", [update_only], create="")
    after = step("verdict", "97-verdict.sh", [empty])
    result = deploy(vm, update_only, empty, after)
    assert result.seconds == G[INSTANCE] + S["97-verdict"]
    assert dict(result.path) == {"n": 35, "rollout-kata": 0, "drain": 0, "verdict": 3}


def test_a_command_that_runs_no_script_costs_one_ssh_round():
    cat = step("admin-conf", None, create="sudo -n cat /etc/kubernetes/admin.conf", update=None)
    # A script sent on stdin but written to a file, not run, is no script run either.
    install = step(
        "install", "98-restart-meshed-workloads.sh", create="sudo -n install -D -m 0644 /dev/fd/0 /x.sh"
    )
    assert deploy(cat).seconds == estimate.NO_SCRIPT_SECONDS == 3
    assert deploy(install).seconds == estimate.NO_SCRIPT_SECONDS


def test_pulls_are_not_counted_for_a_node_booted_from_the_baked_image():
    baked = instance("baked", BAKED_IMAGE, "10.0.0.5", external="203.0.113.5")
    stock = instance("stock", STOCK_IMAGE, "10.0.0.6", external="203.0.113.6")
    for script in ("50-kubeadm-init", "47-etcd-tools", "70-kubeadm-join"):
        # Reached at either of its addresses: the external one, or the internal one (private nodes).
        for host in ("203.0.113.5", "10.0.0.5"):
            on_baked = deploy(baked, step("s", f"{script}.sh", [baked], host=host))
            assert on_baked.seconds == G[INSTANCE] + S[script] - estimate.PULL_SECONDS[script], (script, host)
        on_stock = deploy(stock, step("s", f"{script}.sh", [stock], host="203.0.113.6"))
        assert on_stock.seconds == G[INSTANCE] + S[script], script
    # A script with no pull in it costs the same on both.
    assert (
        deploy(baked, step("s", "30-kata.sh", [baked], host="10.0.0.5")).seconds == G[INSTANCE] + S["30-kata"]
    )
    assert deploy(step("s", "30-kata.sh", host="10.0.0.5")).seconds == S["30-kata"]
    # An unknown host (no instance at it) is not taken for a baked node.
    assert deploy(step("s", "50-kubeadm-init.sh", host="192.0.2.9")).seconds == S["50-kubeadm-init"]


def test_the_node_of_a_command_is_the_instance_at_its_host_also_through_a_secret_connection():
    vm = instance("cp-0", BAKED_IMAGE, "10.0.0.5", external="203.0.113.5")
    command = step("init", "50-kubeadm-init.sh", [vm], host="203.0.113.5")
    command.raw_inputs["connection"] = {SECRET_SIG: SECRET_VALUE, "value": command.raw_inputs["connection"]}
    pricer = estimate.Pricer(run(vm, command))
    node = pricer.node_of(command)
    assert node is not None and node.name == "cp-0"
    assert pricer.baked(node)
    assert (
        deploy(vm, command).seconds
        == G[INSTANCE] + S["50-kubeadm-init"] - estimate.PULL_SECONDS["50-kubeadm-init"]
    )


def test_resource_types_cost_what_the_table_says():
    def alone(type_: str, inputs: dict[str, Any] | None = None) -> float:
        return deploy(resource("r", type_, inputs=inputs)).seconds

    assert alone("gcp:compute/routerNat:RouterNat") == 20
    assert alone("gcp:storage/bucketIAMMember:BucketIAMMember") == estimate.IAM_MEMBER_SECONDS
    assert alone("gcp:projects/iAMMember:IAMMember") == estimate.IAM_MEMBER_SECONDS
    assert alone("gcp:compute/instanceGroupMembership:InstanceGroupMembership") == estimate.OTHER_GCP_SECONDS
    assert alone("kubernetes:core/v1:Namespace") == estimate.KUBERNETES_OBJECT_SECONDS
    assert alone("kubernetes:apps/v1:Deployment") == estimate.DEPLOYMENT_SECONDS
    assert alone("kubernetes:apps/v1:DaemonSet") == 30
    assert alone(estimate.RELEASE_TYPE, {"chart": "flannel"}) == 25
    assert alone(estimate.RELEASE_TYPE, {"chart": "istiod"}) == 45
    assert alone(estimate.RELEASE_TYPE, {"chart": "base"}) == 10
    assert alone(estimate.RELEASE_TYPE, {"chart": "cert-manager"}) == estimate.OTHER_RELEASE_SECONDS
    for free in (
        "pulumi:providers:kubernetes",
        "tls:index/privateKey:PrivateKey",
        "random:index/randomId:RandomId",
    ):
        assert alone(free) == 0, free


def test_a_join_whose_stdin_a_preview_cannot_know_is_named_by_its_arguments():
    """A join carries its token on secret stdin, unknown in a preview: its arguments name it."""
    join = step("join", None, create="sudo -n bash -s -- --node-name w-0 --token-step w-0-join-token")
    join.raw_inputs["stdin"] = {SECRET_SIG: SECRET_VALUE, "value": UNKNOWN}
    assert estimate.script_by_arguments(join.raw_inputs["create"]) == "70-kubeadm-join"
    assert deploy(join).seconds == S["70-kubeadm-join"]
    # Arguments no single script takes name none, and the estimate says so.
    unknown = step("odd", None, create="sudo -n bash -s -- --no-such-argument 1")
    result = deploy(unknown)
    assert result.seconds == estimate.UNPRICED_SCRIPT_SECONDS and result.unpriced
    assert "has no figure" in result.render()


def test_every_node_script_has_a_figure_and_pulls_are_part_of_their_script():
    scripts = {p.stem for p in SCRIPTS_DIR.glob("[0-9][0-9]-*.sh")}
    assert scripts - set(estimate.SCRIPT_SECONDS) - estimate.DELETE_ONLY_SCRIPTS == set()
    for script, pull in estimate.PULL_SECONDS.items():
        assert 0 < pull < estimate.SCRIPT_SECONDS[script], script


def test_render_gives_the_total_then_the_steps_that_cost_something():
    network = resource("vpc", NETWORK)
    free = resource("key", "tls:index/privateKey:PrivateKey", [network])
    vm = instance("n-0", STOCK_IMAGE, "10.0.0.5", waits=[free])
    text = deploy(network, free, vm).render()
    lines = text.splitlines()
    assert lines[0] == "First deploy: 1.0 min (60 s), the longest chain of waits:"
    assert re.fullmatch(r"\s+25 s\s+to 0:25\s+vpc", lines[1])
    assert re.fullmatch(r"\s+35 s\s+to 1:00\s+n-0", lines[2])
    assert "key" not in text and len(lines) == 3


# --- a change -----------------------------------------------------------------------------------


def cluster(workers: int, proof_trigger: str = "p1") -> list[Registration]:
    """A small cluster: a network, a control plane, workers that join it, a proof after them all."""
    network = resource("vpc", NETWORK)
    cp = instance("cp-0", STOCK_IMAGE, "10.0.0.2", waits=[network])
    init = step("init", "50-kubeadm-init.sh", [cp], host="10.0.0.2")
    joined = []
    machines: list[Registration] = []
    for i in range(workers):
        vm = instance(f"w-{i}", STOCK_IMAGE, f"10.0.0.{3 + i}", waits=[network])
        join = step(f"w-{i}-join", "70-kubeadm-join.sh", [vm, init], host=f"10.0.0.{3 + i}")
        machines += [vm, join]
        joined.append(join)
    proof = step("verdict", "97-verdict.sh", [init, *joined], host="10.0.0.2", triggers=[proof_trigger])
    return [network, cp, init, *machines, proof]


def test_nothing_changed_costs_nothing_and_a_deletion_costs_nothing():
    assert change(cluster(1), cluster(1)).seconds == 0
    assert "(nothing to wait for)" in change(cluster(1), cluster(1)).render()
    # A worker fewer: its resources go (nothing to wait for), everything else stays as it is.
    assert change(cluster(2), cluster(1)).seconds == 0


def test_an_unchanged_resource_costs_nothing_in_a_change_and_a_new_one_its_create():
    result = change(cluster(1), cluster(2))
    # The new worker's VM and join; the control plane and its init, unchanged, cost nothing.
    assert result.seconds == G[INSTANCE] + S["70-kubeadm-join"]
    steps = dict(result.path)
    assert steps["w-1"] == G[INSTANCE] and steps["w-1-join"] == S["70-kubeadm-join"]
    assert steps.get("init", 0) == 0 and steps.get("vpc", 0) == 0


def test_a_changed_trigger_replaces_a_command_and_costs_its_create():
    result = change(cluster(1, proof_trigger="p1"), cluster(1, proof_trigger="p2"))
    assert result.seconds == S["97-verdict"]
    assert result.steps[-1].name == "verdict" and result.steps[-1].why.startswith("replaced")
    # Even when its update would run nothing.
    before = step("kata", "30-kata.sh", triggers=["a"])
    after = step("kata", "30-kata.sh", triggers=["b"])
    assert change([before], [after]).seconds == S["30-kata"]


def test_a_command_changed_but_not_its_triggers_costs_its_update():
    before = step("kata", "30-kata.sh")
    # A new connection (a rotated key, a new bastion): pulumi-command runs `update`, here `:`.
    moved = step("kata", "30-kata.sh", host="10.0.0.9")
    assert change([before], [moved]).seconds == estimate.TRIVIAL_UPDATE_SECONDS == 2
    # An update-only command whose update line changed runs its script.
    rollout_before = step("rollout", "30-kata.sh", create=None, update="sudo -n bash -s -- --kata-url a")
    rollout_after = step("rollout", "30-kata.sh", create=None, update="sudo -n bash -s -- --kata-url b")
    assert change([rollout_before], [rollout_after]).seconds == S["30-kata"]
    # Likewise a script installed on the node and run from there (components/mesh_rollout.py).
    installed = "sudo -n bash /usr/local/lib/kata-mesh/restart-meshed-workloads.sh --istio-version"
    restart_before = step("restart", None, create=None, update=f"{installed} 1.30.4", triggers=())
    restart_after = step("restart", None, create=None, update=f"{installed} 1.30.5", triggers=())
    assert change([restart_before], [restart_after]).seconds == S["98-restart-meshed-workloads"]
    # With no update, pulumi-command runs `create` again.
    no_update_before = step("admin", None, create="sudo -n cat /a", update=None)
    no_update_after = step("admin", None, create="sudo -n cat /b", update=None)
    assert change([no_update_before], [no_update_after]).seconds == estimate.NO_SCRIPT_SECONDS


def test_a_value_known_only_after_deploy_changes_when_what_it_comes_from_is_made_anew():
    """In a preview an output of another resource is unknown in both runs: it is taken as changed
    when a resource it is made from (its property dependencies) is new or replaced in this `up`,
    else not, whatever else the resource merely waits for."""

    def proof(source: Registration, *waits: Registration) -> Registration:
        verdict = step("verdict", "97-verdict.sh", [source, *waits], triggers=["script", UNKNOWN])
        verdict.property_dependencies = {"triggers": [source.urn]}
        return verdict

    vm = instance("w-0", STOCK_IMAGE, "10.0.0.3")
    assert change([vm, proof(vm)], [vm, proof(vm)]).seconds == 0
    added = instance("w-1", STOCK_IMAGE, "10.0.0.4")
    # The new VM's output goes into the trigger: the step runs again after it.
    result = change([vm, proof(vm)], [vm, added, proof(added)])
    assert result.seconds == G[INSTANCE] + S["97-verdict"]
    assert result.steps[-1].why.startswith("replaced")
    # Only ordered after the new VM (depends_on), made from the old one: nothing runs again.
    assert change([vm, proof(vm)], [vm, added, proof(vm, added)]).seconds == G[INSTANCE]
    # A resource changed in place keeps its outputs: what waits for it stays as it is.
    fw = resource("fw", FIREWALL, inputs={"sourceRanges": ["198.51.100.0/24"]})
    widened = resource("fw", FIREWALL, inputs={"sourceRanges": ["198.51.100.0/23"]})
    assert change([fw, proof(fw)], [widened, proof(widened)]).seconds == G[FIREWALL]


def test_the_path_runs_to_the_last_step_even_when_it_costs_nothing():
    vm = instance("w-1", STOCK_IMAGE, "10.0.0.4")
    verdict = step("verdict", None, [vm], create=None)
    assert [name for name, _ in deploy(vm, verdict).path] == ["w-1", "verdict"]


def test_another_changed_resource_costs_its_create_unless_the_change_is_ignored():
    before = resource("fw", FIREWALL, inputs={"sourceRanges": ["198.51.100.0/24"], "labels": {"a": "1"}})
    after = resource("fw", FIREWALL, inputs={"sourceRanges": ["198.51.100.0/25"], "labels": {"a": "1"}})
    assert change([before], [after]).seconds == G[FIREWALL]
    relabelled = resource("fw", FIREWALL, inputs={"sourceRanges": ["198.51.100.0/24"], "labels": {"a": "2"}})
    relabelled.ignore_changes.append("labels")
    assert change([before], [relabelled]).seconds == 0


# --- every stack, from the program as it is -----------------------------------------------------

_runs: dict[str, tuple[ProgramRun, estimate.Estimate, estimate.Estimate]] = {}


def estimates_of(stack: str) -> tuple[ProgramRun, estimate.Estimate, estimate.Estimate]:
    if stack not in _runs:
        program = estimate.preview_run(stack)
        _runs[stack] = (
            program,
            estimate.first_deploy(stack, program),
            estimate.one_more_worker(stack, program),
        )
    return _runs[stack]


@pytest.mark.system
@pytest.mark.parametrize("stack", STACKS)
def test_each_stacks_estimates_are_sane_for_any_design(stack):
    program, first, worker = estimates_of(stack)
    print(f"\n{first.render()}{worker.render()}")
    assert not first.unpriced and not worker.unpriced
    assert 0 < worker.seconds < first.seconds
    # The first deploy ends with the proof's verdict: the cluster is verified.
    graph = plan.Graph(program)
    verdicts = [
        r for r in graph.of_type(COMMAND) if plan.script_of(r.raw_inputs.get("stdin")) == "97-verdict.sh"
    ]
    assert [s.urn for s in first.steps[-1:]] == [v.urn for v in verdicts]
    # Both paths are real chains of waits, and the first deploy's starts at the network.
    for result in (first, worker):
        assert result.graph is not None
        for earlier, later in zip(result.steps, result.steps[1:], strict=False):
            assert earlier.urn in result.graph.waits_for[later.urn], (earlier.name, later.name)
    assert first.steps[0].type == NETWORK
    # The new worker's VM and its join are on the way.
    types = [s.type for s in worker.steps]
    assert INSTANCE in types and any("70-kubeadm-join" in s.why for s in worker.steps)


@pytest.mark.system
@pytest.mark.parametrize("stack", STACKS)
def test_the_estimate_finds_each_commands_node_and_script_as_the_plan_does(stack):
    config, _ = plan.plan_config(stack)
    mocks = plan.PlanMocks(config)
    program = estimate.run_program(stack, True, config, estimate.RecordingMonitor(mocks))
    pricer = estimate.Pricer(program)
    for r in program.of_type(COMMAND):
        host = plan._connection_host(r.raw_inputs.get("connection"))
        node = pricer.node_of(r)
        assert (node.inputs["name"] if node else None) == mocks.node_by_address.get(host), r.name
        create = r.raw_inputs.get("create")
        named = plan.script_of(r.raw_inputs.get("stdin"))
        if isinstance(create, str) and "bash -s" in create and named is not None:
            # Where both can name the script, the arguments name the one stdin sends.
            assert estimate.script_by_arguments(create) in (named.removesuffix(".sh"), None), r.name
    # Every node boots as the stack says; the bastion, no node, boots Ubuntu.
    baked = config.get(f"{estimate.PROJECT}:nodeImage") == "baked"
    for vm in program.of_type(INSTANCE):
        node = vm.inputs.get("labels", {}).get("role") != "bastion"
        assert pricer.baked(vm) == (baked and node), vm.name


@pytest.mark.system
def test_the_plan_summary_gives_both_estimates_and_estimate_md_their_paths(tmp_path):
    result = plan.make_plan("dev", tmp_path / "dev", None, offline=True)
    result.write()
    _, first, worker = estimates_of("dev")
    summary = (tmp_path / "dev" / "summary.txt").read_text()
    assert f"Estimated first deploy of dev: {first.minutes:.1f} min" in summary
    assert f"Estimated one more worker in dev (1 -> 2): {worker.minutes:.1f} min" in summary
    written = (tmp_path / "dev" / "estimate.md").read_text()
    for name, seconds in [*first.path, *worker.path]:
        if seconds:
            assert name in written


# --- issue 15's targets, on the graph, with the same table for both modes -----------------------

NODE_IMAGE = f"{estimate.PROJECT}:nodeImage"
# Steps that install at a node's boot: none on a baked node's path.
INSTALL_SCRIPTS = ("10-prerequisites", "20-containerd", "30-kata", "40-kubernetes")


def change_with(stack: str, mode: str, workers: tuple[int, int]) -> estimate.Estimate:
    before = estimate.preview_run(stack, {NODE_IMAGE: mode, "kata-mesh:workerCount": str(workers[0])})
    after = estimate.preview_run(stack, {NODE_IMAGE: mode, "kata-mesh:workerCount": str(workers[1])})
    return estimate.estimate_change(before, after, f"{stack} {mode}, workers {workers[0]} -> {workers[1]}")


@pytest.mark.system
def test_dev_from_a_project_holding_its_node_image_to_a_verified_cluster_in_8_minutes_or_less():
    baked = estimate.first_deploy("dev")
    stock = estimate.estimate_deploy(
        plan.Graph(estimate.preview_run("dev", {NODE_IMAGE: "stock"})), "First deploy of dev, stock"
    )
    print(f"\n{baked.render()}{stock.render()}")
    assert baked.seconds <= 8 * 60 < stock.seconds
    assert not [s.name for s in baked.steps if any(script in s.why for script in INSTALL_SCRIPTS)]
    assert [s.why for s in stock.steps if "30-kata" in s.why]


@pytest.mark.system
@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_one_more_worker_joins_a_running_cluster_in_2_5_minutes_or_less(stack):
    workers = int(plan.plan_config(stack)[0]["kata-mesh:workerCount"])
    baked = change_with(stack, "baked", (workers, workers + 1))
    stock = change_with(stack, "stock", (workers, workers + 1))
    print(f"\n{baked.render()}{stock.render()}")
    assert baked.seconds <= 2.5 * 60 < stock.seconds
    # The new node's own evidence and the verdict, not the proof's cluster-wide facts again.
    names = [s.name for s in baked.steps if s.seconds]
    assert names[-2:] == [f"kata-mesh-{stack}-worker-{workers}-kata-evidence", "proof-verdict"]


@pytest.mark.system
def test_dev_adding_workers_prints_what_it_costs():
    """dev's first added worker also scales httpbin to two replicas with a disruption budget (see
    "The mesh and the app"), so its proof runs again; later ones add only their evidence."""
    first = change_with("dev", "baked", (1, 2))
    later = change_with("dev", "baked", (2, 3))
    stock = change_with("dev", "stock", (2, 3))
    print(f"\n{first.render()}{later.render()}{stock.render()}")
    assert "proof-mesh-facts" in [s.name for s in first.steps]
    assert "proof-mesh-facts" not in [s.name for s in later.steps if s.seconds]
    assert later.seconds < first.seconds and later.seconds < stock.seconds / 2


@pytest.mark.system
@pytest.mark.parametrize("mode", ["baked", "stock"])
@pytest.mark.parametrize("stack", STACKS)
def test_pulumi_up_with_nothing_changed_runs_no_remote_step(stack, mode):
    before = run_program(stack, False, {NODE_IMAGE: mode})
    again = run_program(stack, False, {NODE_IMAGE: mode})
    commands = {r.urn: r.inputs for r in before.of_type(COMMAND)}
    assert commands and commands == {r.urn: r.inputs for r in again.of_type(COMMAND)}
    assert estimate.estimate_change(before, again).seconds == 0


@pytest.mark.system
def test_the_first_image_build_is_estimated_from_the_images_projects_graph():
    build = estimate.estimate_deploy(plan.Graph(cached_images_run()), "First node image build")
    print(f"\n{build.render()}")
    names = [s.name for s in build.steps]
    assert names[-2:] == [names[-1].removesuffix("-image") + "-snapshot", names[-1]]
    assert any("30-kata" in s.why for s in build.steps) and any("99-seal-image" in s.why for s in build.steps)
