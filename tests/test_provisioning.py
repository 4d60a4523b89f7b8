"""Node provisioning under the mock engine: each node's steps in order, each node on its own; six
steps on a stock node, three on a node that boots from the node image."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from harness import (
    PROJECT,
    SECRET_SIG,
    STACKS,
    ProgramRun,
    Registration,
    assert_connects_to,
    cached_mode_run,
    cached_run,
    node_vms,
    run_program,
    stack_config,
    stack_modes,
)
from seed import SEED_LINKS, SEED_MODULES

from components import versions
from components.node_image import baked_node_steps
from components.node_provisioning import SCRIPTS_DIR, NodeStep, ProvisioningSpec, node_steps
from components.settings import parse_settings

COMMAND = "command:remote:Command"
INSTANCE = "gcp:compute/instance:Instance"
STEP_ORDER = {
    "stock": ["wait-ready", "prerequisites", "metadata-block", "containerd", "kata", "kubernetes"],
    # The image holds the prerequisites, containerd, Kata and Kubernetes: checked, not installed.
    "baked": ["wait-ready", "node-image", "metadata-block"],
}


run = cached_run


def steps_by_node(program: ProgramRun, mode: str = "baked") -> dict[str, list[Registration]]:
    nodes: dict[str, list[Registration]] = {}
    for vm in node_vms(program):
        name = vm.inputs["name"]
        commands = {r.name: r for r in program.of_type(COMMAND) if r.name.startswith(f"{name}-provision-")}
        nodes[name] = [commands[f"{name}-provision-{step}"] for step in STEP_ORDER[mode]]
        assert len(commands) == len(STEP_ORDER[mode]), sorted(commands)
    return nodes


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
@pytest.mark.parametrize(("stack", "mode"), stack_modes())
def test_every_node_gets_its_steps_in_order(stack, mode, preview):
    program = cached_mode_run(stack, mode, preview)
    nodes = steps_by_node(program, mode)
    provisioning = [
        r for r in program.of_type(COMMAND) if "kata-mesh:provisioning:NodeProvisioning$" in r.urn
    ]
    assert len(provisioning) == len(STEP_ORDER[mode]) * len(nodes)
    for name, steps in nodes.items():
        vm = program.one(INSTANCE, name)
        assert vm.urn in steps[0].dependencies
        for previous, step in itertools.pairwise(steps):
            assert previous.urn in step.dependencies, f"{step.name} does not wait for {previous.name}"


@pytest.mark.parametrize(("stack", "mode"), stack_modes())
def test_no_node_waits_for_another_nodes_resources(stack, mode):
    program = cached_mode_run(stack, mode)
    nodes = steps_by_node(program, mode)
    for name, steps in nodes.items():
        others = [other for other in nodes if other != name]
        for step in steps:
            for dependency in step.dependencies:
                assert not any(f"::{other}" in dependency for other in others), (step.name, dependency)


@pytest.mark.parametrize(("stack", "mode"), stack_modes())
def test_steps_run_their_script_over_ssh_with_explicit_arguments(stack, mode):
    program = cached_mode_run(stack, mode)
    expected = {s.name: s for s in node_steps_for(stack, mode)}
    for name, steps in steps_by_node(program, mode).items():
        for registered, step_name in zip(steps, STEP_ORDER[mode], strict=True):
            inputs = registered.inputs
            step = expected[step_name]
            assert inputs["create"] == step.command_line
            assert inputs["stdin"] == step.script_text
            assert inputs["stdin"].startswith((SCRIPTS_DIR / "lib.sh").read_text())
            instance_id = program.states[program.one(INSTANCE, name).urn]["instanceId"]
            if step_name in ("containerd", "kata", "kubernetes", "node-image"):
                # Once per VM: a change on a live node is rolled node by node (tests/test_rollout.py).
                assert inputs["triggers"] == [instance_id]
            else:
                assert inputs["triggers"] == [step.content_hash, instance_id]
            assert inputs["addPreviousOutputInEnv"] is False
            assert "environment" not in inputs
            # The connection carries the private key, so the whole of it travels as a secret.
            assert registered.raw_inputs["connection"][SECRET_SIG]
            connection = inputs["connection"]["value"]
            assert_connects_to(program, connection, name)
            assert connection["user"] == "kata-admin"
            assert connection["privateKey"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
            # Bounded (-1 would retry a host key mismatch until the step times out, hiding it);
            # a booting VM gets minutes of dials, a running one a few.
            if step_name == "wait-ready":
                assert 60 <= connection["dialErrorLimit"] <= 200
            else:
                assert connection["dialErrorLimit"] == 10
            if "proxy" in connection:
                assert connection["proxy"]["dialErrorLimit"] == connection["dialErrorLimit"]
            # Only the triggers run a step again; any other change runs a no-op.
            assert inputs["update"] == ":"
            runner = "bash -s --" if step_name == "wait-ready" else "sudo -n bash -s --"
            assert inputs["create"].startswith(runner)


def node_steps_for(stack: str, mode: str = "stock", **overrides: str) -> list[NodeStep]:
    """The steps the program should send for a stack's new node, from the same settings it reads."""
    config = {k.removeprefix(f"{PROJECT}:"): v for k, v in stack_config(stack, overrides).items()}
    settings = parse_settings(config, stack)
    spec = ProvisioningSpec(
        settings.kubernetes_version, settings.kata, settings.artifact_mirror_url, settings.pod_cidr
    )
    return baked_node_steps(spec) if mode == "baked" else node_steps(spec)


def test_step_arguments_carry_the_pins_and_the_seeds_links():
    steps = {s.name: dict(s.args) for s in node_steps_for("dev")}
    # REFERENCE section 2 (kubespray's checksums; Kata's pinned by hand).
    assert steps["kata"]["kata-sha256"] == "1449ecea50bd91fa73a94648db195d18950fe869ba4b1f12d05f55f1fa7c1b01"
    assert steps["kata"]["kata-url"] == (
        "https://github.com/kata-containers/kata-containers/releases/download/3.32.0/kata-static-3.32.0-amd64.tar.zst"
    )
    assert steps["kata"]["links"].split() == list(SEED_LINKS)
    assert steps["kata"]["prefix"] == "/opt/kata"
    assert steps["containerd"]["containerd-sha256"] == (
        "9d68969855fbf676cdb8ed758e420fb048d61f984f61de3e53eddfebe484d168"
    )
    assert (
        steps["containerd"]["runc-sha256"]
        == "f6ae8efc0fa40079e1475e97cbe9d1bd3f106a28d6af78a11d9f1bd565515e60"
    )
    assert (
        steps["containerd"]["cni-sha256"]
        == "b98f74a0f8522f0a83867178729c1aa70f2158f90c45a2ca8fa791db1c76b303"
    )
    assert steps["kubernetes"]["apt-repository"] == "https://pkgs.k8s.io/core:/stable:/v1.36/deb/"
    assert steps["kubernetes"]["kubernetes-version"] == "1.36.4"
    # The kubernetes step puts back the pinned CNI plugins the containerd step downloaded.
    cni_file = steps["containerd"]["cni-url"].rsplit("/", 1)[1]
    assert steps["kubernetes"]["cni-tarball"] == f"{steps['containerd']['cache-dir']}/{cni_file}"
    assert steps["kubernetes"]["cni-sha256"] == steps["containerd"]["cni-sha256"]
    assert steps["prerequisites"]["modules"].split() == SEED_MODULES


def test_a_mirror_serves_the_same_files_with_the_same_checksums():
    mirror = "https://storage.googleapis.com/acme-artifacts/kata-mesh"
    upstream = {s.name: dict(s.args) for s in node_steps_for("dev")}
    mirrored = {
        s.name: dict(s.args) for s in node_steps_for("dev", **{f"{PROJECT}:artifactMirrorUrl": mirror + "/"})
    }
    assert mirrored["kata"]["kata-url"] == f"{mirror}/kata-static-3.32.0-amd64.tar.zst"
    assert mirrored["containerd"]["containerd-url"] == f"{mirror}/containerd-2.3.4-linux-amd64.tar.gz"
    assert mirrored["containerd"]["runc-url"] == f"{mirror}/runc.amd64"
    for step in ("kata", "containerd"):
        assert {k: v for k, v in mirrored[step].items() if "sha256" in k} == {
            k: v for k, v in upstream[step].items() if "sha256" in k
        }


# Two more runs of the program: with the system tests (the plain suite's time budget).
@pytest.mark.system
@pytest.mark.parametrize("mode", ["baked", "stock"])
def test_bumping_kata_reruns_no_provisioning_step_and_rolls_the_nodes_one_by_one(monkeypatch, mode):
    current = run_program("dev", preview=False, overrides={f"{PROJECT}:nodeImage": mode})
    bumped_release = dataclasses.replace(
        versions.KATA_RELEASES["3.32.0"],
        version="3.33.0",
        upstream_url=versions.KATA_RELEASES["3.32.0"].upstream_url.replace("3.32.0", "3.33.0"),
        sha256="0" * 64,
    )
    monkeypatch.setitem(versions.KATA_RELEASES, "3.33.0", bumped_release)
    bumped = run_program(
        "dev", preview=False, overrides={f"{PROJECT}:kataVersion": "3.33.0", f"{PROJECT}:nodeImage": mode}
    )

    before = {r.urn: r.inputs for r in current.registrations}
    after = {r.urn: r.inputs for r in bumped.registrations}
    assert before.keys() == after.keys()
    changed = sorted(urn.rsplit("::", 1)[1] for urn in before if before[urn] != after[urn])
    # The proof, which vouched for the old Kata.
    proof = [
        "kata-mesh-dev-cp-0-kata-evidence",
        "kata-mesh-dev-worker-0-kata-evidence",
        "proof-mesh-facts",
        "proof-verdict",
    ]
    # Each node's turn: its check, drain, Kata step, Kubernetes step (which records the rollout)
    # and release; not its containerd step, whose pins did not move.
    rollout = [
        f"kata-mesh-dev-{node}-rollout-{step}"
        for node in ("cp-0", "worker-0")
        for step in ("check", "drain", "kata", "kubernetes", "release")
    ]
    # The provisioning steps' commands name the new pins (a new VM gets them), their triggers
    # (the VM) do not change: no live node runs them again.
    provisioning = [
        f"kata-mesh-dev-{node}-provision-{step}"
        for node in ("cp-0", "worker-0")
        for step in (("kata", "kubernetes") if mode == "stock" else ("node-image",))
    ]
    # Baked: a new VM boots from the new version's image; a live one keeps its disk (the image is
    # in its ignoreChanges), and the rollout brings it to the new version.
    vms = [f"kata-mesh-dev-{node}" for node in ("cp-0", "worker-0")] if mode == "baked" else []
    assert changed == sorted([*provisioning, *rollout, *proof, *vms])
    for vm in node_vms(bumped):
        assert "bootDisk.initializeParams.image" in vm.ignore_changes
    for urn in before:
        if "-provision-" in urn:
            assert before[urn]["triggers"] == after[urn]["triggers"], urn


@pytest.mark.parametrize("stack", STACKS)
def test_the_metadata_block_keeps_the_stacks_pods_off_the_metadata_server(stack):
    block = dict(next(s for s in node_steps_for(stack) if s.name == "metadata-block").args)
    assert block["pod-cidr"] == stack_config(stack)[f"{PROJECT}:podCidr"]
    assert block["metadata-ip"] == "169.254.169.254"


def test_a_new_pod_cidr_reruns_only_the_metadata_block_and_replaces_no_vm():
    current = run("dev", False)
    moved = run_program("dev", preview=False, overrides={f"{PROJECT}:podCidr": "10.200.0.0/16"})
    before = {r.urn: r.inputs for r in current.registrations}
    after = {r.urn: r.inputs for r in moved.registrations}
    assert before.keys() == after.keys()
    changed_steps = sorted(
        urn.rsplit("::", 1)[1] for urn in before if "-provision-" in urn and before[urn] != after[urn]
    )
    assert changed_steps == [
        "kata-mesh-dev-cp-0-provision-metadata-block",
        "kata-mesh-dev-worker-0-provision-metadata-block",
    ]
    for urn in before:
        if urn.endswith("-provision-metadata-block"):
            assert "--pod-cidr 10.200.0.0/16 " in after[urn]["create"]
    vms = [r.urn for r in node_vms(current)]
    assert vms and all(before[urn] == after[urn] for urn in vms)


def test_a_replaced_vm_reruns_every_step_on_it():
    """Every step's triggers carry its VM's id, which a replacement changes."""
    program = run("dev", False)
    for name, steps in steps_by_node(program).items():
        instance_id = program.states[program.one(INSTANCE, name).urn]["instanceId"]
        assert instance_id
        assert [step.inputs["triggers"][-1] for step in steps] == [instance_id] * len(STEP_ORDER["baked"])
