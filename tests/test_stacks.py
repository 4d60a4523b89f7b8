"""Runs __main__.py for every stack file, as preview and as up, under the SDK's mock engine."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import (
    PROJECT,
    ROOT,
    STACKS,
    UNKNOWN,
    KataMeshMocks,
    ProgramRun,
    RecordingMonitor,
    built_image_names,
    cached_mode_run,
    cached_run,
    is_secret,
    mock_ed25519_public_key,
    node_vms,
    plain_strings,
    run_program,
    stack_modes,
)

from components.settings import SettingsError

INSTANCE = "gcp:compute/instance:Instance"
INTEL_NESTED_SERIES = {"n1", "n2", "c2", "c3"}
MODES = [pytest.param(True, id="preview"), pytest.param(False, id="up")]


run = cached_run


def stack_file(stack: str) -> dict:
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def expected_workers(stack: str) -> int:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]["workerCount"]["default"]
    return int(stack_file(stack).get(f"{PROJECT}:workerCount", declared))


def expected_control_planes(stack: str) -> int:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]["controlPlaneCount"]["default"]
    return int(stack_file(stack).get(f"{PROJECT}:controlPlaneCount", declared))


def test_there_is_a_stack_per_environment():
    assert STACKS == ["dev", "prod", "staging"]


@pytest.mark.parametrize("preview", MODES)
@pytest.mark.parametrize("stack", STACKS)
def test_every_vm_is_an_intel_vm_with_nested_virtualization_booting_the_stacks_node_image(stack, preview):
    instances = node_vms(run(stack, preview))
    assert len(instances) == expected_control_planes(stack) + expected_workers(stack)
    # The image the images project builds for this stack, by its own reading of the stack file.
    [built] = built_image_names(stack)
    for vm in instances:
        inputs = vm.inputs
        assert inputs["advancedMachineFeatures"]["enableNestedVirtualization"] is True
        assert inputs["machineType"].split("-")[0] in INTEL_NESTED_SERIES
        image = inputs["bootDisk"]["initializeParams"]["image"]
        assert image == f"https://www.googleapis.com/compute/v1/projects/kata-mesh-test/global/images/{built}"
        assert "bootDisk.initializeParams.image" in vm.ignore_changes


@pytest.mark.parametrize(("stack", "mode"), [p for p in stack_modes() if p.values[1] == "stock"])
def test_stock_vms_boot_from_ubuntu(stack, mode):
    for vm in node_vms(cached_mode_run(stack, mode)):
        image = vm.inputs["bootDisk"]["initializeParams"]["image"]
        assert image.startswith(
            "https://www.googleapis.com/compute/v1/projects/ubuntu-os-cloud/global/images/ubuntu-2404"
        )
        assert "bootDisk.initializeParams.image" in vm.ignore_changes


@pytest.mark.parametrize("preview", MODES)
@pytest.mark.parametrize("stack", STACKS)
def test_private_key_is_only_ever_a_secret_output(stack, preview):
    program = run(stack, preview)
    assert program.is_secret_output("sshPrivateKey")
    assert_no_plain_private_key(program)
    if not preview:
        assert program.output("sshPrivateKey").startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    key = program.one("tls:index/privateKey:PrivateKey", "ssh-key")
    assert key.inputs["algorithm"] == "ED25519"


def unsecret(value: Any) -> Any:
    """A resource input as the provider gets it: the secret's value."""
    return value["value"] if is_secret(value) else value


def is_private(stack: str) -> bool:
    return bool(stack_file(stack).get(f"{PROJECT}:privateNodes"))


def assert_no_plain_private_key(program: ProgramRun) -> None:
    """No stack output and no resource input carries a private key outside a secret."""
    for key, value in program.raw_stack_outputs.items():
        assert not any("PRIVATE KEY" in s for s in plain_strings(value)), key
    for resource in program.registrations:
        assert not any("PRIVATE KEY" in s for s in plain_strings(resource.raw_inputs)), resource.urn


# Two more runs of every stack: with the system tests, to keep the plain run short.
@pytest.mark.system
@pytest.mark.parametrize("stack", STACKS)
def test_resource_names_are_stable_between_runs_and_between_preview_and_up(stack):
    def names(program: ProgramRun) -> list[tuple[str, str | None]]:
        return sorted((r.urn, r.inputs.get("name")) for r in program.registrations)

    first = names(run_program(stack, preview=False))
    assert first == names(run_program(stack, preview=False))
    preview = dict(names(run(stack, True)))
    assert sorted(preview) == [urn for urn, _ in first]
    for urn, name in first:
        # Bucket names are global: the backup bucket's ends in a random suffix, made on the first up.
        if urn.endswith("gcp:storage/bucket:Bucket::backups"):
            assert name is not None and name.startswith(f"kata-mesh-{stack}-backups-")
            continue
        assert preview[urn] == name, urn


@pytest.mark.parametrize("stack", STACKS)
def test_the_stack_declares_network_subnet_key_and_vms(stack):
    program = run(stack, False)
    settings = stack_file(stack)
    vpc = program.one("gcp:compute/network:Network", "network-vpc")
    assert vpc.inputs["autoCreateSubnetworks"] is False
    assert vpc.inputs["name"] == f"kata-mesh-{stack}-vpc"
    subnet = program.one("gcp:compute/subnetwork:Subnetwork", "network-subnet")
    assert subnet.inputs["ipCidrRange"] == settings.get(f"{PROJECT}:subnetCidr", "10.10.0.0/24")
    assert subnet.inputs["region"] == settings["gcp:region"]
    assert vpc.urn in subnet.dependencies
    names = sorted(r.inputs["name"] for r in node_vms(program))
    workers = [f"kata-mesh-{stack}-worker-{i}" for i in range(expected_workers(stack))]
    control_planes = [f"kata-mesh-{stack}-cp-{i}" for i in range(expected_control_planes(stack))]
    assert names == sorted([*control_planes, *workers])


def test_dev_is_one_control_plane_and_one_worker_on_spot_vms():
    instances = node_vms(run("dev", False))
    assert len(instances) == 2
    for vm in instances:
        assert vm.inputs["scheduling"] == {
            "provisioningModel": "SPOT",
            "preemptible": True,
            "automaticRestart": False,
            "onHostMaintenance": "TERMINATE",
            "instanceTerminationAction": "STOP",
        }


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_staging_and_prod_are_on_demand_with_more_workers(stack):
    instances = node_vms(run(stack, False))
    assert len(instances) > 2
    for vm in instances:
        assert vm.inputs["scheduling"]["provisioningModel"] == "STANDARD"
        assert "preemptible" not in vm.inputs["scheduling"]


@pytest.mark.parametrize("stack", STACKS)
def test_vms_get_the_stack_key_own_service_account_tags_labels_and_static_ip(stack):
    program = run(stack, False)
    account = program.one("gcp:serviceaccount/account:Account", "nodes-sa")
    assert account.inputs["accountId"] == f"km-{stack}-nodes"
    outputs = program.output("nodes")
    for vm in node_vms(program):
        inputs = vm.inputs
        name = inputs["name"]
        role = "control-plane" if "-cp-" in name else "worker"
        # Secret as a whole: user-data holds the host's private key.
        assert is_secret(inputs["metadata"])
        metadata = unsecret(inputs["metadata"])
        assert {key: value for key, value in metadata.items() if key != "user-data"} == {
            "ssh-keys": f"kata-admin:{mock_ed25519_public_key('ssh-key')} kata-admin",
            "block-project-ssh-keys": "true",
            "enable-oslogin": "false",
        }
        assert metadata["user-data"].startswith("#cloud-config\n")
        assert inputs["serviceAccount"]["email"] == f"km-{stack}-nodes@kata-mesh-test.iam.gserviceaccount.com"
        assert "https://www.googleapis.com/auth/cloud-platform" not in inputs["serviceAccount"]["scopes"]
        assert inputs["labels"] == {"app": "kata-mesh", "stack": stack, "role": role}
        expected_tags = (
            ["kata-mesh-node", "kata-mesh-control-plane"] if role == "control-plane" else ["kata-mesh-node"]
        )
        assert inputs["tags"] == expected_tags
        assert inputs["shieldedInstanceConfig"] == {
            "enableSecureBoot": True,
            "enableVtpm": True,
            "enableIntegrityMonitoring": True,
        }
        nic = inputs["networkInterfaces"][0]
        addresses = [
            r for r in program.of_type("gcp:compute/address:Address") if r.inputs["name"] == f"{name}-ip"
        ]
        if is_private(stack):
            assert "accessConfigs" not in nic, name
            assert addresses == []
            assert outputs[name]["externalIp"] is None
        else:
            [address] = addresses
            assert address.inputs["addressType"] == "EXTERNAL"
            assert address.urn in vm.dependencies
            assert outputs[name]["externalIp"] == nic["accessConfigs"][0]["natIp"]
        # The mock's addresses for every subnet.
        assert outputs[name]["internalIp"].startswith("10.10.0.")


@pytest.mark.parametrize("stack", STACKS)
def test_outputs_give_the_entry_address_and_a_ready_ssh_command(stack):
    program = run(stack, False)
    cp0 = f"kata-mesh-{stack}-cp-0"
    entry = "bastionExternalIp" if is_private(stack) else "controlPlaneExternalIp"
    assert not ({"bastionExternalIp", "controlPlaneExternalIp"} - {entry}) & set(program.raw_stack_outputs)
    ip = program.output(entry)
    ipaddress.ip_address(ip)
    if not is_private(stack):
        assert ip == program.output("nodes")[cp0]["externalIp"]
    assert program.output("sshCommand").endswith(f" && ssh -F ~/.ssh/kata-mesh-{stack}.config {cp0}")
    preview = run(stack, True)
    assert preview.output(entry) == UNKNOWN


@pytest.mark.parametrize("preview", MODES)
def test_every_resource_is_parented_by_a_component(preview):
    program = run("dev", preview)
    component_urns = {r.urn for r in program.registrations if not r.custom}
    for resource in program.registrations:
        if resource.type == "pulumi:pulumi:Stack":
            continue
        assert resource.parent in component_urns, resource.urn
        if resource.custom:
            assert "::kata-mesh:" in resource.parent, f"{resource.urn} is not inside a kata-mesh component"


def test_a_user_supplied_key_is_used_instead_of_a_generated_one_and_stays_secret():
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nuserkey\n-----END OPENSSH PRIVATE KEY-----\n"
    program = run_program("dev", preview=False, overrides={f"{PROJECT}:sshPrivateKey": key})
    # The only keys made are the machines' host keys.
    assert all(r.name.endswith("-host-key") for r in program.of_type("tls:index/privateKey:PrivateKey"))
    assert program.is_secret_output("sshPrivateKey")
    assert_no_plain_private_key(program)
    assert program.output("sshPrivateKey") == key
    vm = node_vms(program)[0]
    assert (
        unsecret(vm.inputs["metadata"])["ssh-keys"]
        == "kata-admin:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAuser kata-admin"
    )


def test_bad_settings_fail_before_any_resource_is_declared():
    monitor = RecordingMonitor(KataMeshMocks(preview=True))
    with pytest.raises(SettingsError) as caught:
        run_program(
            "dev",
            preview=True,
            overrides={f"{PROJECT}:machineType": "e2-standard-4", f"{PROJECT}:workerCount": -1},
            monitor=monitor,
        )
    assert {p.key for p in caught.value.problems} == {"machineType", "workerCount"}
    assert [r.type for r in monitor.registrations] == ["pulumi:pulumi:Stack"]


# Stand-ins that record what the copy-paste commands do: `pulumi` prints a key and the mode its
# output file has while it writes (the window a reader could use); `ssh` and `kubectl` print their
# arguments.
FAKE_PULUMI = """#!/bin/bash
echo "-----BEGIN OPENSSH PRIVATE KEY----- $*"
echo "mode while written: $(stat -L -c %a /proc/self/fd/1)"
"""
FAKE_ECHO = '#!/bin/bash\necho "$(basename "$0") $*" >&2\n'


def run_pasted(command: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    bin_dir = home / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("pulumi", FAKE_PULUMI), ("ssh", FAKE_ECHO), ("kubectl", FAKE_ECHO)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env={"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )


def test_the_ssh_command_writes_the_key_readable_by_its_owner_only(tmp_path):
    program = run("dev", False)
    key_file = tmp_path / ".ssh" / "kata-mesh-dev"
    # A key file left world-readable by an earlier, careless copy is replaced, not reused.
    key_file.parent.mkdir()
    key_file.write_text("old")
    key_file.chmod(0o644)
    result = run_pasted(program.output("sshCommand"), tmp_path, tmp_path)
    for path, output in (
        (key_file, "sshPrivateKey"),
        (tmp_path / ".ssh" / "kata-mesh-dev.known_hosts", "sshKnownHosts"),
        (tmp_path / ".ssh" / "kata-mesh-dev.config", "sshConfig"),
    ):
        assert path.stat().st_mode & 0o777 == 0o600, path
        assert "mode while written: 600" in path.read_text()
        assert f"{output} --show-secrets --stack dev" in path.read_text()
    assert f"ssh -F {tmp_path}/.ssh/kata-mesh-dev.config kata-mesh-dev-cp-0" in result.stderr


def test_the_readmes_kubeconfig_command_writes_it_readable_by_its_owner_only(tmp_path):
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "pulumi stack output kubeconfig" in line)
    (tmp_path / "kubeconfig").write_text("old")
    (tmp_path / "kubeconfig").chmod(0o644)
    result = run_pasted(command, tmp_path, tmp_path)
    kubeconfig = tmp_path / "kubeconfig"
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    assert "mode while written: 600" in kubeconfig.read_text()
    assert "kubectl get nodes" in result.stderr


# Ranges and the world-access override are what each operator sets (README, "Deploy one
# environment"); a checked-in stack file holds none.
OPERATOR_ONLY = ("sshAllowedCidrs", "apiAllowedCidrs", "gatewayAllowedCidrs", "allowWorldAccess")


@pytest.mark.parametrize("stack", STACKS)
def test_stack_files_hold_no_access_ranges_and_say_which_the_operator_sets(stack):
    assert not {f"{PROJECT}:{key}" for key in OPERATOR_ONLY} & set(stack_file(stack))
    comments = (ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text()
    for key in ("sshAllowedCidrs", "apiAllowedCidrs"):
        assert f"pulumi config set --path '{PROJECT}:{key}[0]'" in comments
    gateway = f"pulumi config set --path '{PROJECT}:gatewayAllowedCidrs[0]'" in comments
    assert gateway == bool(stack_file(stack).get(f"{PROJECT}:ingressGateway"))


def test_prod_s_stack_file_alone_refuses_the_gateway_without_its_ranges():
    """Without the operator's gatewayAllowedCidrs, prod (ingressGateway true) stops before declaring
    anything rather than opening the gateway to the API's ranges or the world."""
    monitor = RecordingMonitor(KataMeshMocks(preview=True))
    with pytest.raises(SettingsError) as caught:
        run_program("prod", preview=True, overrides={f"{PROJECT}:gatewayAllowedCidrs": []}, monitor=monitor)
    assert [p.key for p in caught.value.problems] == ["gatewayAllowedCidrs"]
    assert [r.type for r in monitor.registrations] == ["pulumi:pulumi:Stack"]


@pytest.mark.parametrize("stack", STACKS)
def test_private_stacks_have_a_small_bastion_a_cloud_router_and_nat_and_public_ones_none(stack):
    program = run(stack, False)
    bastions = [r for r in program.of_type(INSTANCE) if r.inputs["name"] == f"kata-mesh-{stack}-bastion"]
    routers = program.of_type("gcp:compute/router:Router")
    nats = program.of_type("gcp:compute/routerNat:RouterNat")
    if not is_private(stack):
        assert (bastions, routers, nats) == ([], [], [])
        return
    [bastion] = bastions
    inputs = bastion.inputs
    assert inputs["tags"] == ["kata-mesh-bastion"]
    assert inputs["machineType"] == "e2-small"
    assert "advancedMachineFeatures" not in inputs
    # No service account: no Google API token on the one machine the internet can reach.
    assert "serviceAccount" not in inputs
    assert inputs["networkInterfaces"][0]["accessConfigs"][0]["natIp"] == program.output("bastionExternalIp")
    [router] = routers
    [nat] = nats
    network = program.one("gcp:compute/network:Network", "network-vpc")
    # The mock engine's ids are "<name>-id".
    assert router.inputs["network"] == f"{network.inputs['name']}-id"
    assert nat.inputs["router"] == router.inputs["name"]
    subnet = program.one("gcp:compute/subnetwork:Subnetwork", "network-subnet")
    assert nat.inputs["sourceSubnetworkIpRangesToNat"] == "LIST_OF_SUBNETWORKS"
    assert nat.inputs["subnetworks"] == [
        {"name": f"{subnet.inputs['name']}-id", "sourceIpRangesToNats": ["ALL_IP_RANGES"]}
    ]


# Runs of the program of their own: with the system tests (the plain suite's time budget).
@pytest.mark.system
@pytest.mark.parametrize("stack", STACKS)
def test_control_plane_vms_are_protected_unless_the_stack_allows_their_replacement(stack):
    program = run(stack, False)
    allowed = bool(stack_file(stack).get(f"{PROJECT}:allowControlPlaneReplacement"))
    # dev rebuilds freely; staging and prod rehearse and run the real thing.
    assert allowed == (stack == "dev")
    for vm in node_vms(program):
        control_plane = "-cp-" in vm.inputs["name"]
        assert vm.protect == (control_plane and not allowed), vm.inputs["name"]
        # A VM keeps its name when replaced, and GCE refuses a second VM of that name.
        assert vm.delete_before_replace, vm.inputs["name"]
    overridden = run_program(stack, preview=True, overrides={f"{PROJECT}:allowControlPlaneReplacement": True})
    assert not any(vm.protect for vm in node_vms(overridden))
