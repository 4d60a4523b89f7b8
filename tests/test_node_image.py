"""The node image (issue 15): built once per inputs hash by the images project, booted by the
stacks that ask for those inputs, refused when it is missing or not what the stack asks for."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from harness import (
    PROJECT,
    ROOT,
    STACKS,
    KataMeshMocks,
    RecordingMonitor,
    cached_images_run,
    cached_mode_run,
    cached_run,
    command_args,
    node_vms,
    run_engine,
    stack_config,
)

from components import node_image, node_provisioning, versions
from components.images_project import ImagesSettingsError, parse_images_settings
from components.node_image import (
    IMAGE_FAMILY,
    ImageInputs,
    NodeImageError,
    find_node_image,
    image_name,
    inputs_hash,
)
from offline.plan import Graph, script_of

COMMAND = "command:remote:Command"
KATA = versions.KATA_RELEASES["3.32.0"]


def ancestors_by_name(program, name: str) -> set[str]:
    """The names of everything a resource waits for, directly or not."""
    graph = Graph(program)
    urn = next(r.urn for r in program.registrations if r.name == name and r.custom)
    return {graph.by_urn[u].name for u in graph.ancestors(urn)}


def program_run(stack: str, node_images: list[str] | None, **overrides: str):
    """The stack's `pulumi up` in a project where exactly `node_images` exist."""
    return run_engine(
        stack,
        False,
        stack_config(stack, {f"{PROJECT}:{k}": v for k, v in overrides.items()}),
        RecordingMonitor(KataMeshMocks(False, node_images=node_images)),
    )


# --- the inputs hash -------------------------------------------------------------------------


def test_the_hash_names_every_input_and_not_where_files_come_from(monkeypatch):
    base = ImageInputs("1.36.4", KATA)
    digest = inputs_hash(base)
    assert len(digest) == 64 and image_name(digest) == f"kata-mesh-node-{digest[:32]}"
    assert len(image_name(digest)) <= 63  # GCE's limit on names
    # Versions and pins.
    assert inputs_hash(ImageInputs("1.36.5", KATA)) != digest
    other_kata = dataclasses.replace(KATA, sha256="0" * 64)
    assert inputs_hash(ImageInputs("1.36.4", other_kata)) != digest
    monkeypatch.setattr(versions, "RUNC", dataclasses.replace(versions.RUNC, sha256="1" * 64))
    assert inputs_hash(base) != digest
    monkeypatch.undo()
    assert inputs_hash(base) == digest
    # The base image.
    monkeypatch.setattr(node_image, "BASE_IMAGE_FAMILY", "ubuntu-2604-lts-amd64")
    assert inputs_hash(base) != digest
    monkeypatch.undo()
    # A mirror serves the same files (same checksums): the same image.
    mirrored = node_image.build_steps(base, "https://mirror.example/kata-mesh")
    assert any("https://mirror.example/kata-mesh/" in value for step in mirrored for _, value in step.args)
    assert inputs_hash(base) == digest


@pytest.mark.parametrize(
    "script",
    [
        "lib.sh",
        "10-prerequisites.sh",
        "20-containerd.sh",
        "30-kata.sh",
        "40-kubernetes.sh",
        "42-pull-images.sh",
        "99-seal-image.sh",
    ],
)
def test_a_change_to_any_script_the_build_runs_asks_for_a_new_image(monkeypatch, script):
    digest = inputs_hash(ImageInputs("1.36.4", KATA))
    original = node_provisioning.script_source

    def edited(name: str) -> str:
        return original(name) + ("\n# edited\n" if name == script else "")

    monkeypatch.setattr(node_provisioning, "script_source", edited)
    assert inputs_hash(ImageInputs("1.36.4", KATA)) != digest


def test_a_change_to_a_node_only_script_keeps_the_image(monkeypatch):
    digest = inputs_hash(ImageInputs("1.36.4", KATA))
    original = node_provisioning.script_source

    def edited(name: str) -> str:
        return original(name) + ("\n# edited\n" if name in ("12-node-image.sh", "50-kubeadm-init.sh") else "")

    monkeypatch.setattr(node_provisioning, "script_source", edited)
    assert inputs_hash(ImageInputs("1.36.4", KATA)) == digest


# --- the images project ---------------------------------------------------------------------


def write_stacks(root: Path, stacks: dict[str, dict[str, str]]) -> None:
    shutil.copy(ROOT / "Pulumi.yaml", root / "Pulumi.yaml")
    (root / "stacks").mkdir()
    for name, values in stacks.items():
        config = {f"{PROJECT}:{key}": value for key, value in values.items()}
        (root / "stacks" / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump({"config": config}))


def images_raw(stacks: list[str], **extra: str) -> dict[str, str | None]:
    return {
        "gcp:region": "us-central1",
        "gcp:zone": "us-central1-a",
        "stacks": json.dumps(stacks),
        "sshAllowedCidrs": '["198.51.100.7/32"]',
        **extra,
    }


def test_stacks_asking_for_the_same_inputs_share_one_image(tmp_path):
    write_stacks(
        tmp_path,
        {
            "a": {},
            "b": {"podCidr": "10.200.0.0/16", "workerCount": "4"},  # node-specific: same image
            "c": {"kubernetesVersion": "1.35.2"},
            "d": {"nodeImage": "stock", "kubernetesVersion": "1.34.1"},
        },
    )
    settings = parse_images_settings(images_raw(["a", "b", "c", "d"]), tmp_path)
    by_stacks = {build.stacks: build.inputs for build in settings.builds.values()}
    default_version = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]["kubernetesVersion"][
        "default"
    ]
    assert by_stacks == {
        ("a", "b"): ImageInputs(default_version, KATA),
        ("c",): ImageInputs("1.35.2", KATA),
    }
    assert set(settings.builds) == {inputs_hash(inputs) for inputs in by_stacks.values()}


def test_the_images_settings_report_every_problem_at_once(tmp_path):
    write_stacks(tmp_path, {"a": {"kataVersion": "3.99.0"}})
    with pytest.raises(ImagesSettingsError) as raised:
        parse_images_settings(
            images_raw(["a", "missing"], sshAllowedCidrs='["0.0.0.0/0"]', machineType="n2d-standard-2")
            | {"gcp:zone": "europe-west4-a"},
            tmp_path,
        )
    problems = raised.value.problems
    assert len(problems) == 5, problems
    text = str(raised.value)
    assert "gcp:zone = europe-west4-a" in text
    assert "sshAllowedCidrs[0] = 0.0.0.0/0" in text
    assert "machineType = n2d-standard-2" in text
    assert "kataVersion 3.99.0 has no pinned checksum" in text
    assert "no stack file" in text and "missing" in text


def test_the_images_project_builds_the_image_every_listed_stack_asks_for():
    program = cached_images_run()
    images = program.of_type("gcp:compute/image:Image")
    built = program.output("images")
    # dev, staging and prod ask for the same versions: one image, shared.
    assert len(images) == 1 and list(built) == [images[0].inputs["name"]]
    [entry] = built.values()
    assert entry["stacks"] == ["dev", "staging", "prod"]
    for stack in STACKS:
        node_step = next(
            r for r in cached_run(stack).of_type(COMMAND) if r.name.endswith("-provision-node-image")
        )
        # What a stack's node checks on boot is the hash the image was built and named for.
        assert command_args(node_step.inputs["create"])["--inputs-hash"] == entry["inputsHash"]
    image = images[0].inputs
    assert image["family"] == IMAGE_FAMILY
    assert image["labels"]["kata-mesh-inputs"] == entry["inputsHash"][:32]
    assert image["labels"]["kubernetes"] == entry["kubernetesVersion"].replace(".", "-")
    assert {f["type"] for f in image["guestOsFeatures"]} >= {"UEFI_COMPATIBLE"}


def test_the_build_runs_the_node_scripts_then_seals_then_snapshots_then_makes_the_image():
    program = cached_images_run()
    by_name = {r.name: r for r in program.registrations}
    [image] = program.of_type("gcp:compute/image:Image")
    prefix = image.name.removesuffix("-image")
    chain = (
        [f"{prefix}-builder"]
        + [
            f"{prefix}-build-{step}"
            for step in ("wait-ready", "prerequisites", "containerd", "kata", "kubernetes", "images", "seal")
        ]
        + [f"{prefix}-snapshot", image.name]
    )
    for before, after in itertools.pairwise(chain):
        assert before in ancestors_by_name(program, after), f"{after} does not wait for {before}"
    snapshot = by_name[f"{prefix}-snapshot"]
    assert image.inputs["sourceSnapshot"] == program.states[snapshot.urn].get(
        "selfLink", image.inputs["sourceSnapshot"]
    )
    seal = by_name[f"{prefix}-build-seal"]
    seal_args = command_args(seal.inputs["create"])
    manifest = base64.b64decode(seal_args["--manifest-b64"]).decode()
    assert (
        manifest.splitlines()[0]
        == f"inputs-hash={program.output('images')[image.inputs['name']]['inputsHash']}"
    )
    assert seal_args["--root"] == "/"
    # The builder installs with the node's own steps and arguments (the nodes' checksums).
    stock = {s.name: s for s in node_provisioning.node_steps(ImageInputs("1.36.4", KATA).spec())}
    kata = by_name[f"{prefix}-build-kata"]
    assert command_args(kata.inputs["create"])["--kata-sha256"] == KATA.sha256
    assert kata.inputs["stdin"] == stock["kata"].script_text


def test_a_failed_build_leaves_no_builder_running_and_no_image():
    program = cached_images_run()
    [builder] = program.of_type("gcp:compute/instance:Instance")
    scheduling = builder.inputs["scheduling"]
    # GCE deletes the builder at its deadline, whether the build finished, failed or hung.
    assert scheduling["instanceTerminationAction"] == "DELETE"
    assert 10 * 60 <= scheduling["maxRunDuration"]["seconds"] <= 60 * 60
    assert "serviceAccount" not in builder.inputs  # no cloud identity on a machine that downloads
    # Nothing of the image's is made before every step, the seal last, has succeeded.
    [snapshot] = program.of_type("gcp:compute/snapshot:Snapshot")
    steps = [r for r in program.of_type(COMMAND)]
    for step in steps:
        assert step.name in ancestors_by_name(program, snapshot.name)
    [firewall] = program.of_type("gcp:compute/firewall:Firewall")
    assert firewall.inputs["sourceRanges"] == ["198.51.100.7/32"]
    assert firewall.inputs["targetTags"] == builder.inputs["tags"]


def test_a_newer_ubuntu_in_the_base_family_rebuilds_nothing():
    """The family's newest image moves every few weeks: the builder keeps the one it booted, and
    the image's description names that one, not the family's newest."""
    program = cached_images_run()
    [builder] = program.of_type("gcp:compute/instance:Instance")
    assert "bootDisk.initializeParams.image" in builder.ignore_changes
    [image] = program.of_type("gcp:compute/image:Image")
    booted = builder.inputs["bootDisk"]["initializeParams"]["image"]
    assert f"built from {booted};" in image.inputs["description"]
    assert builder.urn in image.property_dependencies["description"]


def test_the_builders_steps_run_once_per_builder():
    program = cached_images_run()
    [builder] = program.of_type("gcp:compute/instance:Instance")
    instance_id = program.states[builder.urn]["instanceId"]
    for step in program.of_type(COMMAND):
        # Not on a changed mirror or script: what the builder makes is named by its inputs hash.
        assert step.inputs["triggers"] == [instance_id], step.name


# --- a stack's image ------------------------------------------------------------------------


# Another run of the program: with the system tests (the plain stage's time budget).
@pytest.mark.system
def test_a_stack_without_its_image_is_refused_with_what_to_do():
    other = image_name("f" * 64)
    with pytest.raises(NodeImageError) as raised:
        program_run("dev", [other])
    message = str(raised.value)
    expected = image_name(inputs_hash(ImageInputs("1.36.4", KATA)))
    assert f"no node image {expected}" in message
    assert "Kubernetes 1.36.4, Kata 3.32.0" in message
    assert other in message  # what the family holds instead
    assert "pulumi up` in images/" in message and "nodeImage stock" in message


# Another run of the program: with the system tests (the plain stage's time budget).
@pytest.mark.system
def test_stock_nodes_never_look_for_an_image():
    program = program_run("dev", [], nodeImage="stock")
    assert node_vms(program)


def test_an_image_labelled_for_other_inputs_is_not_used(monkeypatch):
    inputs = ImageInputs("1.36.4", KATA)
    name = image_name(inputs_hash(inputs))

    def listed(filter: str, project: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(
            images=[SimpleNamespace(name=name, labels={"kata-mesh-inputs": "0" * 32}, self_link="link")]
        )

    monkeypatch.setattr(node_image.gcp.compute, "get_images", listed)
    with pytest.raises(NodeImageError, match="not made by images/ for these inputs"):
        find_node_image("dev", inputs)

    def right(filter: str, project: str | None = None) -> SimpleNamespace:
        label = name.removeprefix("kata-mesh-node-")
        return SimpleNamespace(
            images=[SimpleNamespace(name=name, labels={"kata-mesh-inputs": label}, self_link="link")]
        )

    monkeypatch.setattr(node_image.gcp.compute, "get_images", right)
    assert find_node_image("dev", inputs) == "link"


@pytest.mark.parametrize("stack", STACKS)
def test_a_baked_nodes_steps_download_nothing(stack):
    program = cached_run(stack)
    steps = [r for r in program.of_type(COMMAND) if "-provision-" in r.name]
    assert steps
    packages_needed = set(node_provisioning.METADATA_BLOCK_PACKAGES) | set(node_provisioning.NODE_PACKAGES)
    for step in steps:
        create = step.inputs["create"]
        assert "http://" not in create and "https://" not in create, step.name
        if step.name.endswith("-node-image"):
            args = command_args(create)
            # The image is checked for everything the later steps install if missing.
            assert set(args["--packages"].split()) >= packages_needed
        # What the scripts themselves run (lib.sh apart, whose helpers they may call): no fetch.
        script = node_provisioning.script_source(script_of(step.inputs["stdin"]))
        assert not [
            line
            for line in script.splitlines()
            if not line.lstrip().startswith("#")
            and any(
                word in line for word in ("curl ", "km_fetch_verified", "km_kubernetes_apt_source", "apt-get")
            )
        ], step.name
        if step.name.endswith("-metadata-block"):
            node = step.name.removesuffix("-provision-metadata-block")
            assert f"{node}-provision-node-image" in ancestors_by_name(program, step.name)
            assert set(command_args(create)["--packages"].split()) <= packages_needed


# Another run of the program: with the system tests (the plain stage's time budget).
@pytest.mark.system
def test_stock_nodes_boot_ubuntu_and_install_everything_as_before():
    program = cached_mode_run("dev", "stock")
    names = [
        r.name.rsplit("-provision-", 1)[1] for r in program.of_type(COMMAND) if "-cp-0-provision-" in r.name
    ]
    assert sorted(names) == sorted(
        ["wait-ready", "prerequisites", "metadata-block", "containerd", "kata", "kubernetes"]
    )
    kata = next(r for r in program.of_type(COMMAND) if r.name.endswith("-cp-0-provision-kata"))
    assert command_args(kata.inputs["create"])["--kata-url"] == KATA.upstream_url
