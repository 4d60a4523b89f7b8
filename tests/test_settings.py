"""Settings: every bad value gets one clear problem, all reported at once."""

from __future__ import annotations

import pytest
import yaml
from harness import PROJECT, ROOT, stack_config

from components.settings import PROJECT_KEYS, SettingsError, parse_settings

GOOD_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
)


def raw(**overrides: object) -> dict[str, str | None]:
    """The dev stack's config as the program receives it, without the project prefix."""
    config = stack_config("dev")
    values: dict[str, str | None] = {k.removeprefix(f"{PROJECT}:"): v for k, v in config.items()}
    for key, value in overrides.items():
        values[key.replace("__", ":")] = value  # type: ignore[assignment]
    return values


def problems(stack: str = "dev", **overrides: object) -> dict[str, str]:
    with pytest.raises(SettingsError) as caught:
        parse_settings(raw(**overrides), stack)
    return {p.key: str(p) for p in caught.value.problems}


def test_pulumi_yaml_declares_exactly_the_keys_settings_reads_each_with_type_description_default():
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert set(declared) == set(PROJECT_KEYS)
    for key, decl in declared.items():
        assert {"type", "description", "default"} <= set(decl), key
        assert decl["description"].strip(), key


def test_defaults_with_operator_cidrs_parse():
    settings = parse_settings(raw(), "dev")
    assert settings.machine_type == "n2-standard-4"
    assert settings.pod_cidr == "10.244.0.0/16"
    assert settings.control_plane_count == 1
    assert settings.ssh_allowed_cidrs == ("198.51.100.7/32", "192.0.2.0/28")
    assert settings.kata.sha256 == "1449ecea50bd91fa73a94648db195d18950fe869ba4b1f12d05f55f1fa7c1b01"
    assert settings.name_prefix == "kata-mesh-dev"


@pytest.mark.parametrize(
    ("machine_type", "reason"),
    [
        ("e2-standard-4", "E2 machines do not support nested virtualization"),
        ("n2d-standard-4", "AMD"),
        ("c2d-standard-4", "AMD"),
        ("c3d-standard-4", "AMD"),
        ("t2d-standard-4", "AMD"),
        ("t2a-standard-4", "Arm"),
        ("c4a-standard-4", "Arm"),
        ("m3-megamem-64", "not known to support nested virtualization"),
        ("n2-standard-1", "at least 2 vCPUs"),
        ("n2standard4", "must look like"),
    ],
)
def test_machine_types_without_intel_nested_virtualization_are_rejected_with_the_reason(machine_type, reason):
    found = problems(machineType=machine_type)
    assert reason in found["machineType"]
    assert repr(machine_type) in found["machineType"]


@pytest.mark.parametrize(
    "machine_type", ["n2-standard-2", "c2-standard-8", "c3-standard-4", "n2-custom-4-16384"]
)
def test_intel_series_with_nested_virtualization_are_accepted(machine_type):
    assert parse_settings(raw(machineType=machine_type), "dev").machine_type == machine_type


def test_n1_needs_haswell_or_later():
    assert "Haswell or later" in problems(machineType="n1-standard-4")["minCpuPlatform"]
    assert (
        "Haswell"
        in problems(machineType="n1-standard-4", minCpuPlatform="Intel Sandy Bridge")["minCpuPlatform"]
    )
    settings = parse_settings(raw(machineType="n1-standard-4", minCpuPlatform="Intel Skylake"), "dev")
    assert settings.min_cpu_platform == "Intel Skylake"


def test_counts():
    assert "only 1 control-plane node" in problems(controlPlaneCount="3")["controlPlaneCount"]
    assert "must be 0 or more" in problems(workerCount="-1")["workerCount"]
    assert "must be an integer" in problems(workerCount="two")["workerCount"]
    with pytest.raises(SettingsError) as caught:
        parse_settings(raw(controlPlaneCount="one"), "dev")
    assert [str(p) for p in caught.value.problems] == ["controlPlaneCount = 'one': must be an integer"]
    assert parse_settings(raw(workerCount="0"), "dev").worker_count == 0


def test_cidrs_must_parse_and_not_overlap():
    found = problems(subnetCidr="10.10.0.1/24")
    assert "did you mean 10.10.0.0/24" in found["subnetCidr"]
    assert "overlaps podCidr" in problems(serviceCidr="10.244.128.0/20")["serviceCidr"]
    assert "overlaps subnetCidr" in problems(podCidr="10.0.0.0/8", subnetCidr="10.10.0.0/24")["podCidr"]
    assert "IPv4" in problems(sshAllowedCidrs='["2001:db8::/32"]')["sshAllowedCidrs"]
    assert "list of strings" in problems(apiAllowedCidrs="203.0.113.7/32")["apiAllowedCidrs"]


@pytest.mark.parametrize("key", ["sshAllowedCidrs", "apiAllowedCidrs"])
def test_allowed_cidrs_must_be_given_explicitly(key):
    message = problems(**{key: "[]"})[key]
    assert "nothing is opened to the world by default" in message


def test_the_stack_files_alone_do_not_open_ssh_or_the_api():
    """Without the operator's `pulumi config set`, the program refuses instead of opening 0.0.0.0/0."""
    values = raw()
    values["sshAllowedCidrs"] = "[]"
    values["apiAllowedCidrs"] = "[]"
    with pytest.raises(SettingsError) as caught:
        parse_settings(values, "dev")
    assert {p.key for p in caught.value.problems} == {"sshAllowedCidrs", "apiAllowedCidrs"}


def test_zone_must_lie_in_region():
    assert "not in gcp:region us-central1" in problems(gcp__zone="europe-west4-a")["gcp:zone"]
    assert "missing; set it with `pulumi config set gcp:zone" in problems(gcp__zone=None)["gcp:zone"]
    assert "must be a zone" in problems(gcp__zone="central")["gcp:zone"]


def test_versions():
    assert "x.y.z" in problems(kubernetesVersion="1.36")["kubernetesVersion"]
    assert "1.32 to 1.36" in problems(kubernetesVersion="1.30.2")["kubernetesVersion"]
    assert "3.23.0 or later" in problems(kataVersion="3.22.0")["kataVersion"]
    assert "3.x release" in problems(kataVersion="4.1.0")["kataVersion"]
    assert "no pinned sha256" in problems(kataVersion="3.31.0")["kataVersion"]


def test_disks_and_user():
    assert "at least 30" in problems(bootDiskSizeGb="10")["bootDiskSizeGb"]
    assert (
        "c3 machines do not take pd-standard"
        in problems(machineType="c3-standard-4", bootDiskType="pd-standard")["bootDiskType"]
    )
    assert "Hyperdisk" in problems(bootDiskType="hyperdisk-balanced")["bootDiskType"]
    assert "other than root" in problems(adminUser="root")["adminUser"]
    assert "true or false" in problems(spot="yes")["spot"]


def test_stack_name_must_fit_gce_names():
    assert "stack name" in problems(stack="Dev_1")
    assert "stack name" in problems(stack="a-very-long-stack-name-x")


def test_a_bad_private_key_is_reported_without_echoing_it():
    found = problems(sshPrivateKey="hunter2-not-a-key")
    assert "<secret>" in found["sshPrivateKey"]
    assert "hunter2" not in found["sshPrivateKey"]
    assert parse_settings(raw(sshPrivateKey=GOOD_KEY), "dev").ssh_private_key == GOOD_KEY
    assert "b3BlbnNzaC" not in repr(parse_settings(raw(sshPrivateKey=GOOD_KEY), "dev"))


def test_every_problem_is_reported_at_once_with_key_value_and_fix():
    with pytest.raises(SettingsError) as caught:
        parse_settings(
            raw(
                machineType="e2-standard-4",
                controlPlaneCount="2",
                workerCount="-2",
                podCidr="10.10.0.0/16",
                sshAllowedCidrs="[]",
                kataVersion="3.20.0",
                gcp__zone="us-east1-b",
            ),
            "dev",
        )
    keys = [p.key for p in caught.value.problems]
    assert set(keys) == {
        "machineType",
        "controlPlaneCount",
        "workerCount",
        "podCidr",
        "sshAllowedCidrs",
        "kataVersion",
        "gcp:zone",
    }
    message = str(caught.value)
    assert message.startswith("7 problem(s) in the stack settings")
    assert "machineType = 'e2-standard-4': E2 machines" in message
    assert "use an Intel series" in message


def test_istio_cni_is_rejected_while_kata_workloads_are_meshed_with_the_reason():
    message = problems(istioCni="true")["istioCni"]
    assert "Istio CNI cannot redirect traffic for Kata pods" in message
    assert "kata-containers#4080" in message
    assert "Set it to false" in message


def test_mesh_settings():
    assert "1.30.x" in problems(istioVersion="1.29.2")["istioVersion"]
    assert "30000-32767" in problems(gatewayNodePort="8080")["gatewayNodePort"]
    assert "DNS label" in problems(appNamespace="istio-system")["appNamespace"]
    assert "DNS label" in problems(appNamespace="Kata_Apps")["appNamespace"]
    assert "image reference" in problems(httpbinImage="")["httpbinImage"]
    settings = parse_settings(raw(ingressGateway="true", runcTwin="true"), "dev")
    assert (settings.ingress_gateway, settings.runc_twin, settings.gateway_node_port) == (True, True, 30080)
