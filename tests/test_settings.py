"""Settings: every bad value gets one clear problem, all reported at once."""

from __future__ import annotations

import re
from typing import ClassVar

import pulumi
import pytest
import yaml
from harness import PROJECT, ROOT, stack_config

from components.settings import (
    PROJECT_KEYS,
    PROJECT_NAME,
    Problem,
    SettingsError,
    load_settings,
    parse_settings,
    project_from_environment,
)

GOOD_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
)


def stack_raw(stack: str) -> dict[str, str | None]:
    """A stack's config as the program receives it, without the project prefix."""
    return {k.removeprefix(f"{PROJECT}:"): v for k, v in stack_config(stack).items()}


def raw(**overrides: object) -> dict[str, str | None]:
    """The dev stack's config as the program receives it, without the project prefix."""
    values = stack_raw("dev")
    for key, value in overrides.items():
        values[key.replace("__", ":")] = value  # type: ignore[assignment]
    return values


def problem_list(stack: str = "dev", **overrides: object) -> list[Problem]:
    with pytest.raises(SettingsError) as caught:
        parse_settings(raw(**overrides), stack)
    return caught.value.problems


def problems(stack: str = "dev", **overrides: object) -> dict[str, str]:
    return {p.key: str(p) for p in problem_list(stack, **overrides)}


def error_message(**overrides: object) -> str:
    with pytest.raises(SettingsError) as caught:
        parse_settings(raw(**overrides), "dev")
    return str(caught.value)


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
        ("e2-micro", "E2 machines do not support nested virtualization"),
        ("e2-custom-4-8192", "E2 machines do not support nested virtualization"),
        ("n2d-standard-4", "AMD"),
        ("c2d-standard-4", "AMD"),
        ("c3d-standard-4", "AMD"),
        ("t2d-standard-4", "AMD"),
        ("t2a-standard-4", "Arm"),
        ("c4a-standard-4", "Arm"),
        ("f1-micro", "shared-core f1 machines do not support nested virtualization"),
        ("g1-small", "shared-core g1 machines do not support nested virtualization"),
        ("m3-megamem-64", "not known to support nested virtualization"),
        ("n2-standard-1", "at least 2 vCPUs"),
        ("n2standard4", "must look like"),
        ("c3-highcpu-192-metal", "bare-metal machine types are out of scope"),
        ("c3-custom-4-16384", "c3 has no custom machine types"),
        ("n2-standard-4-lssd", "only c3-standard types come with -lssd"),
        ("c2-highmem-8", "c2 machine types look like c2-standard-8"),
        ("n2-superfast-4", "n2 machine types look like"),
    ],
)
def test_machine_types_without_intel_nested_virtualization_are_rejected_with_the_reason(machine_type, reason):
    found = problems(machineType=machine_type)
    assert reason in found["machineType"]
    assert found["machineType"].startswith(f"machineType = {machine_type}: ")


@pytest.mark.parametrize(
    "machine_type",
    [
        "n2-standard-2",
        "n2-standard-4",
        "n2-highmem-8",
        "n2-highcpu-16",
        "n2-custom-4-16384",
        "n2-custom-4-16384-ext",
        "c2-standard-8",
        "c3-standard-4",
        "c3-highcpu-4",
        "c3-standard-4-lssd",
    ],
)
def test_intel_series_with_nested_virtualization_are_accepted(machine_type):
    assert parse_settings(raw(machineType=machine_type), "dev").machine_type == machine_type


@pytest.mark.parametrize(
    "machine_type", ["n1-standard-4", "n1-highmem-8", "custom-4-16384", "custom-4-16384-ext"]
)
def test_n1_types_including_custom_ones_without_a_series_prefix_are_accepted(machine_type):
    settings = parse_settings(raw(machineType=machine_type, minCpuPlatform="Intel Haswell"), "dev")
    assert settings.machine_type == machine_type


def test_n1_custom_types_are_held_to_the_n1_rules():
    # custom-... is N1: it needs the platform, and 2 vCPUs like any other type.
    assert "Haswell or later" in problems(machineType="custom-4-16384")["minCpuPlatform"]
    assert (
        "at least 2 vCPUs"
        in problems(machineType="custom-1-4096", minCpuPlatform="Intel Skylake")["machineType"]
    )
    message = problems(machineType="n1-custom-4-16384", minCpuPlatform="Intel Skylake")["machineType"]
    assert "N1 custom machine types have no series prefix; did you mean custom-4-16384?" in message


def test_n1_needs_haswell_or_later():
    assert "Haswell or later" in problems(machineType="n1-standard-4")["minCpuPlatform"]
    assert (
        "Haswell"
        in problems(machineType="n1-standard-4", minCpuPlatform="Intel Sandy Bridge")["minCpuPlatform"]
    )
    assert (
        "Haswell"
        in problems(machineType="n1-standard-4", minCpuPlatform="Intel Ivy Bridge")["minCpuPlatform"]
    )
    settings = parse_settings(raw(machineType="n1-standard-4", minCpuPlatform="Intel Skylake"), "dev")
    assert settings.min_cpu_platform == "Intel Skylake"


# GCE's minimum CPU platforms per machine series ("Specify a minimum CPU platform for compute
# instances", https://cloud.google.com/compute/docs/instances/specify-min-cpu-platform); N1 is
# further held to Haswell or later for nested virtualization.
GCE_MIN_CPU_PLATFORMS = [
    ("n1-standard-4", "Intel Haswell"),
    ("n1-standard-4", "Intel Broadwell"),
    ("n1-standard-4", "Intel Skylake"),
    ("n2-standard-4", "Intel Cascade Lake"),
    ("n2-standard-4", "Intel Ice Lake"),
    ("c2-standard-8", "Intel Cascade Lake"),
    ("c3-standard-4", "Intel Sapphire Rapids"),
]


@pytest.mark.parametrize(("machine_type", "platform"), GCE_MIN_CPU_PLATFORMS)
def test_min_cpu_platforms_gce_offers_for_the_series_are_accepted(machine_type, platform):
    settings = parse_settings(raw(machineType=machine_type, minCpuPlatform=platform), "dev")
    assert settings.min_cpu_platform == platform


@pytest.mark.parametrize(
    ("machine_type", "platform", "offered"),
    [
        ("n2-standard-4", "foo", "Intel Cascade Lake, Intel Ice Lake"),
        ("n2-standard-4", "Intel Broadwell", "Intel Cascade Lake, Intel Ice Lake"),
        ("n2-standard-4", "Intel Sapphire Rapids", "Intel Cascade Lake, Intel Ice Lake"),
        ("c2-standard-8", "Intel Ice Lake", "Intel Cascade Lake"),
        ("c3-standard-4", "Intel Ice Lake", "Intel Sapphire Rapids"),
        ("n1-standard-4", "Intel Cascade Lake", "Intel Haswell, Intel Broadwell, Intel Skylake"),
    ],
)
def test_min_cpu_platforms_of_another_series_are_rejected_naming_the_ones_gce_offers(
    machine_type, platform, offered
):
    message = problems(machineType=machine_type, minCpuPlatform=platform)["minCpuPlatform"]
    assert message.startswith(f"minCpuPlatform = {platform}: ")
    assert f"set one of {offered}" in message


def test_n1_is_told_that_cascade_lake_belongs_to_other_series():
    message = problems(machineType="n1-standard-4", minCpuPlatform="Intel Cascade Lake")["minCpuPlatform"]
    assert "Intel Cascade Lake is offered on n2, c2" in message
    assert "Haswell or later" in message


@pytest.mark.parametrize("machine_type", ["n2-standard-4", "c2-standard-8", "c3-standard-4"])
def test_an_empty_min_cpu_platform_leaves_the_choice_to_gce_except_on_n1(machine_type):
    assert parse_settings(raw(machineType=machine_type, minCpuPlatform=""), "dev").min_cpu_platform is None


def test_a_min_cpu_platform_spelled_differently_gets_gce_s_name_as_hint():
    message = problems(machineType="n1-standard-4", minCpuPlatform="intel skylake")["minCpuPlatform"]
    assert "did you mean Intel Skylake (GCE's spelling)?" in message
    message = problems(machineType="n2-standard-4", minCpuPlatform="Intel IceLake")["minCpuPlatform"]
    assert "did you mean Intel Ice Lake (GCE's spelling)?" in message


def test_pulumi_yaml_min_cpu_platform_description_lists_what_the_settings_accept_per_series():
    """Each "series: A, B or C" in the description must be accepted for that series, and the
    description must list no platform for a series that GCE does not offer on it."""
    description = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]["minCpuPlatform"][
        "description"
    ]
    listed = dict(re.findall(r"\b(n1|n2|c2|c3): ([^;.(]+)", description))
    assert set(listed) == {"n1", "n2", "c2", "c3"}
    example = {"n1": "n1-standard-4", "n2": "n2-standard-4", "c2": "c2-standard-8", "c3": "c3-standard-4"}
    for series, platforms in listed.items():
        for platform in re.split(r", | or ", platforms.strip()):
            settings = parse_settings(raw(machineType=example[series], minCpuPlatform=platform), "dev")
            assert settings.min_cpu_platform == platform, (series, platform)
    assert "Intel Cascade Lake" not in listed["n1"]


def test_counts():
    assert "etcd needs a majority" in problems(controlPlaneCount="2")["controlPlaneCount"]
    assert "must be 0 or more" in problems(workerCount="-1")["workerCount"]
    assert "must be an integer" in problems(workerCount="two")["workerCount"]
    with pytest.raises(SettingsError) as caught:
        parse_settings(raw(controlPlaneCount="one"), "dev")
    assert [str(p) for p in caught.value.problems] == ["controlPlaneCount = one: must be an integer"]
    assert parse_settings(raw(workerCount="0"), "dev").worker_count == 0


# etcd commits on a majority of its members, so n members survive (n - 1) // 2 failures.
@pytest.mark.parametrize(
    ("count", "reason"),
    [
        ("0", "at least 1 control-plane node is needed"),
        ("-3", "at least 1 control-plane node is needed"),
        (
            "2",
            "an even count tolerates no more member failures than the odd count below it (2 tolerate 0 failures, like 1)",
        ),
        (
            "4",
            "an even count tolerates no more member failures than the odd count below it (4 tolerate 1 failure, like 3)",
        ),
        ("6", "etcd writes get slower with every member"),
        ("7", "etcd writes get slower with every member"),
        ("99", "etcd writes get slower with every member"),
    ],
)
def test_refused_control_plane_counts_each_get_their_reason(count, reason):
    message = problems(controlPlaneCount=count)["controlPlaneCount"]
    assert message.startswith(f"controlPlaneCount = {count}: ")
    assert reason in message


@pytest.mark.parametrize(
    ("count", "fixes"),
    [
        ("0", ["use 1, 3 or 5", "`pulumi config set controlPlaneCount 1`"]),
        (
            "2",
            [
                "use 1, 3 or 5",
                "1 for the same tolerance with one VM fewer (`pulumi config set controlPlaneCount 1`)",
                "3 to tolerate 1 failure (`pulumi config set controlPlaneCount 3`)",
            ],
        ),
        (
            "4",
            [
                "3 for the same tolerance with one VM fewer (`pulumi config set controlPlaneCount 3`)",
                "5 to tolerate 2 failures (`pulumi config set controlPlaneCount 5`)",
            ],
        ),
        ("6", ["5 members already tolerate 2 failures", "use 5: `pulumi config set controlPlaneCount 5`"]),
    ],
)
def test_refused_control_plane_counts_say_which_count_to_set(count, fixes):
    message = problems(controlPlaneCount=count)["controlPlaneCount"]
    for fix in fixes:
        assert fix in message


@pytest.mark.parametrize("count", [1, 3, 5])
def test_one_three_or_five_control_planes_are_accepted(count):
    assert parse_settings(raw(controlPlaneCount=str(count)), "dev").control_plane_count == count


def test_control_planes_count_towards_the_nodes_the_subnet_must_hold():
    # A /29 holds 8 - 4 reserved = 4 nodes: 3 control planes and 1 worker fit, 5 and 1 do not.
    assert "subnetCidr" not in problems(
        subnetCidr="10.10.0.0/29", controlPlaneCount="3", workerCount="1", machineType="e2-standard-4"
    )
    message = problems(subnetCidr="10.10.0.0/29", controlPlaneCount="5", workerCount="1")["subnetCidr"]
    assert "fewer than the 6 nodes" in message


def test_zones_default_to_gcp_zone_alone():
    settings = parse_settings(raw(gcp__zone="us-central1-f"), "dev")
    assert settings.zones == ("us-central1-f",)
    assert settings.zone == "us-central1-f"
    assert parse_settings(raw(gcp__zone="us-central1-f", zones="[]"), "dev").zones == ("us-central1-f",)


def test_zones_are_kept_in_the_order_listed():
    settings = parse_settings(
        raw(gcp__zone="us-central1-a", zones='["us-central1-c", "us-central1-a", "us-central1-f"]'), "dev"
    )
    assert settings.zones == ("us-central1-c", "us-central1-a", "us-central1-f")
    assert settings.zone == "us-central1-a"


def test_a_zone_outside_the_region_is_refused_naming_its_region_and_element():
    found = problem_list(zones='["us-central1-a", "europe-west4-b"]')
    assert [(p.key, p.index) for p in found] == [("zones", 1)]
    assert str(found[0]) == (
        'zones = ["us-central1-a", "europe-west4-b"]: element 1 (europe-west4-b) lies in region '
        "europe-west4, not in gcp:region us-central1; replace it: "
        "`pulumi config set --path 'kata-mesh:zones[1]' <zone>`"
    )


@pytest.mark.parametrize(
    "zone", ["us-central1", "US-CENTRAL1-A", "uscentral1-a", "us-central1-ab", "us-central1-", ""]
)
def test_a_malformed_zone_is_refused(zone):
    found = problem_list(zones=f'["us-central1-b", "{zone}"]')
    assert [(p.key, p.index) for p in found] == [("zones", 1)]
    assert f"element 1 ({zone}) is not a zone name such as us-central1-a" in found[0].fix
    assert "`pulumi config set --path 'kata-mesh:zones[1]' <zone>`" in found[0].fix


def test_a_zone_given_as_its_letter_alone_gets_the_zone_of_the_region_as_hint():
    message = problems(zones='["us-central1-a", "c"]')["zones"]
    assert "element 1 (c) is not a zone name" in message
    assert (
        "did you mean us-central1-c? `pulumi config set --path 'kata-mesh:zones[1]' us-central1-c`" in message
    )
    # The hint is offered only when it passes every rule: us-central1-a is already listed.
    assert "did you mean" not in problems(zones='["us-central1-a", "a"]')["zones"]


def test_a_repeated_zone_is_refused_naming_its_first_listing():
    found = problem_list(zones='["us-central1-a", "us-central1-b", "us-central1-a", "us-central1-a"]')
    assert [(p.key, p.index) for p in found] == [("zones", 2), ("zones", 3)]
    assert "element 2 (us-central1-a) repeats element 0" in found[0].fix
    assert "`pulumi config rm --path 'kata-mesh:zones[2]'`" in found[0].fix
    assert "element 3 (us-central1-a) repeats element 0" in found[1].fix


def test_zones_given_as_a_plain_string_are_told_the_path_form():
    message = problems(zones="us-central1-b")["zones"]
    assert message.startswith('zones = us-central1-b: must be a list of strings, e.g. ["us-central1-a"]')
    assert "`pulumi config set --path 'kata-mesh:zones[0]' us-central1-b`" in message


def test_every_zone_problem_and_the_count_are_reported_in_one_error():
    with pytest.raises(SettingsError) as caught:
        parse_settings(
            raw(
                controlPlaneCount="4",
                zones='["europe-west4-a", "us-central1-b", "central", "us-central1-b", "us-central1-c"]',
            ),
            "dev",
        )
    found = caught.value.problems
    assert [(p.key, p.index) for p in found if p.key == "zones"] == [("zones", 0), ("zones", 2), ("zones", 3)]
    assert {p.key for p in found} == {"zones", "controlPlaneCount"}
    message = str(caught.value)
    assert message.startswith("4 problem(s) in the stack settings")
    assert "`pulumi config set --path 'kata-mesh:<key>[<index>]' <value>`" in message.splitlines()[0]
    assert "element 0 (europe-west4-a) lies in region europe-west4, not in gcp:region us-central1" in message
    assert "element 2 (central) is not a zone name" in message
    assert "element 3 (us-central1-b) repeats element 1" in message
    assert "controlPlaneCount = 4: " in message


def test_allow_control_plane_shrink_is_parsed_and_off_by_default():
    assert parse_settings(raw(), "dev").allow_control_plane_shrink is False
    assert parse_settings(raw(allowControlPlaneShrink="true"), "dev").allow_control_plane_shrink is True
    assert parse_settings(raw(allowControlPlaneShrink="false"), "dev").allow_control_plane_shrink is False
    message = problems(allowControlPlaneShrink="yes")["allowControlPlaneShrink"]
    assert message == "allowControlPlaneShrink = yes: must be true or false"


def test_prod_and_staging_spread_three_control_planes_over_three_zones_and_dev_stays_single():
    prod = parse_settings(stack_raw("prod"), "prod")
    assert prod.control_plane_count == 3
    assert prod.zones == ("europe-west4-a", "europe-west4-b", "europe-west4-c")
    # The first zone is gcp:zone, where a stack without zones puts every node.
    assert prod.zones[0] == prod.zone
    staging = parse_settings(stack_raw("staging"), "staging")
    assert (staging.control_plane_count, staging.zones) == (3, prod.zones)
    dev = parse_settings(raw(), "dev")
    assert (dev.control_plane_count, dev.zones) == (1, (dev.zone,))
    assert dev.allow_control_plane_shrink is prod.allow_control_plane_shrink is False


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
    assert "[secret]" in found["sshPrivateKey"]
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
    assert "machineType = e2-standard-4: E2 machines" in message
    assert "use an Intel series" in message


def test_istio_cni_is_rejected_while_kata_workloads_are_meshed_with_the_reason():
    message = problems(istioCni="true")["istioCni"]
    assert "Istio CNI cannot redirect traffic for Kata pods" in message
    assert "kata-containers#4080" in message
    assert "Set it to false" in message


def test_mesh_settings():
    assert "1.30.x" in problems(istioVersion="1.29.2")["istioVersion"]
    assert "30000-32767" in problems(gatewayNodePort="8080")["gatewayNodePort"]
    assert "DNS label" in problems(appNamespace="Kata_Apps")["appNamespace"]
    assert "image reference" in problems(httpbinImage="")["httpbinImage"]
    settings = parse_settings(raw(ingressGateway="true", runcTwin="true"), "dev")
    assert (settings.ingress_gateway, settings.runc_twin, settings.gateway_node_port) == (True, True, 30080)


@pytest.mark.parametrize(
    ("namespace", "owner"),
    [
        ("default", "Kubernetes"),
        ("kube-system", "Kubernetes"),
        ("kube-flannel", "Flannel"),
        ("istio-system", "istiod"),
        ("istio-ingress", "Istio ingress gateway"),
    ],
)
def test_the_app_namespace_cannot_be_one_kubernetes_or_the_program_owns(namespace, owner):
    message = problems(appNamespace=namespace)["appNamespace"]
    assert message.startswith(f"appNamespace = {namespace}: namespace {namespace} belongs to ")
    assert owner in message
    assert "`pulumi config set appNamespace httpbin`" in message


def test_the_app_namespace_cannot_be_bookinfo_s_while_bookinfo_is_on():
    message = problems(appNamespace="bookinfo", bookinfo="true")["appNamespace"]
    assert message.startswith("appNamespace = bookinfo: bookinfo is true")
    assert "two Namespaces" in message
    assert "`pulumi config set appNamespace httpbin`" in message
    assert "`pulumi config set bookinfo false`" in message
    # Without Bookinfo, nothing else declares a namespace named bookinfo.
    assert parse_settings(raw(appNamespace="bookinfo", bookinfo="false"), "dev").app_namespace == "bookinfo"
    settings = parse_settings(raw(appNamespace="httpbin", bookinfo="true"), "dev")
    assert (settings.app_namespace, settings.bookinfo) == ("httpbin", True)


# Where the gcp provider also reads the project, in its order of precedence (Pulumi registry,
# "Google Cloud (GCP) Classic: Installation & Configuration").
PROJECT_ENV_ORDER = ["GOOGLE_PROJECT", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"]


def test_the_project_must_be_set_with_the_fix():
    message = problems(gcp__project=None)["gcp:project"]
    assert message.startswith("gcp:project = (not set): missing")
    assert "`pulumi config set gcp:project <id>`" in message
    assert "GOOGLE_PROJECT" in message
    assert "`pulumi config set gcp:project <id>`" in problems(gcp__project="")["gcp:project"]


@pytest.mark.parametrize(
    "project",
    [
        "abcde",  # 5 characters
        "a" * 31,
        "My-Project",
        "my_project",
        "1my-project",
        "my-project-",
        "123456789012",  # a project number, not the ID
    ],
)
def test_a_malformed_project_id_is_rejected(project):
    message = problems(gcp__project=project)["gcp:project"]
    assert message.startswith(f"gcp:project = {project}: not a Google Cloud project ID")
    assert "`pulumi config set gcp:project <id>`" in message


@pytest.mark.parametrize(
    "project", ["abcdef", "a" + "b" * 29, "kata-mesh-test", "p-2024", "example.com:my-app"]
)
def test_well_formed_project_ids_are_accepted(project):
    assert parse_settings(raw(gcp__project=project), "dev").project == project


def test_the_project_comes_from_the_provider_s_environment_variables_in_their_order():
    assert project_from_environment({}) is None
    everything = {name: f"from-{name.lower().replace('_', '-')}" for name in PROJECT_ENV_ORDER}
    for position, name in enumerate(PROJECT_ENV_ORDER):
        environ = {later: everything[later] for later in PROJECT_ENV_ORDER[position:]}
        assert project_from_environment(environ) == everything[name]
    assert project_from_environment({"GOOGLE_PROJECT": "", "GCLOUD_PROJECT": "gcloud-one"}) == "gcloud-one"


class FakeConfig:
    """pulumi.Config over a flat "namespace:key" mapping, as load_settings reads it."""

    values: ClassVar[dict[str, str]] = {}

    def __init__(self, name: str | None = None) -> None:
        self.namespace = name or PROJECT

    def get(self, key: str) -> str | None:
        return self.values.get(f"{self.namespace}:{key}")


@pytest.fixture
def pulumi_config(monkeypatch):
    for name in PROJECT_ENV_ORDER:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pulumi, "Config", FakeConfig)
    monkeypatch.setattr(pulumi, "get_stack", lambda: "dev")
    monkeypatch.setattr(FakeConfig, "values", stack_config("dev"))
    return FakeConfig.values


def test_load_settings_reads_the_project_from_config_first_then_the_environment(pulumi_config, monkeypatch):
    assert load_settings().project == pulumi_config["gcp:project"]
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    assert load_settings().project == pulumi_config["gcp:project"]
    del pulumi_config["gcp:project"]
    assert load_settings().project == "env-project"
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert [p.key for p in caught.value.problems] == ["gcp:project"]


def test_a_cidr_hint_is_offered_only_when_the_corrected_value_passes_every_rule():
    assert "did you mean 10.10.0.0/24?" in problems(subnetCidr="10.10.0.1/24")["subnetCidr"]
    assert "did you mean 10.96.0.0/12?" in problems(serviceCidr="10.96.0.1/12")["serviceCidr"]
    # 10.0.0.0/12 would overlap the default subnetCidr 10.10.0.0/24.
    found = problems(serviceCidr="10.1.0.0/12")
    assert "has host bits set" in found["serviceCidr"]
    assert "did you mean" not in found["serviceCidr"]
    # 10.244.0.0/16 is podCidr itself: the overlap would be reported on podCidr, not subnetCidr.
    assert "did you mean" not in problems(subnetCidr="10.244.1.1/16")["subnetCidr"]
    # An IPv6 network is never a valid answer here.
    assert "did you mean" not in problems(subnetCidr="fd00::1/64")["subnetCidr"]
    # Hints are judged together: following the subnetCidr hint (10.10.0.0/24) and a serviceCidr
    # hint (10.0.0.0/12) would make the two overlap, so only the first is offered.
    found = problems(subnetCidr="10.10.0.1/24", serviceCidr="10.1.0.0/12")
    assert "did you mean 10.10.0.0/24?" in found["subnetCidr"]
    assert "did you mean" not in found["serviceCidr"]


def test_list_element_hints_are_checked_too_and_show_the_path_form():
    message = problems(sshAllowedCidrs='["198.51.100.7/32", "192.0.2.1/28"]')["sshAllowedCidrs"]
    assert message.startswith(
        'sshAllowedCidrs = ["198.51.100.7/32", "192.0.2.1/28"]: element 1 (192.0.2.1/28)'
    )
    assert (
        "did you mean 192.0.2.0/28? `pulumi config set --path 'kata-mesh:sshAllowedCidrs[1]' 192.0.2.0/28`"
        in message
    )
    # Two bad elements: each hint is judged on its own element.
    found = problem_list(apiAllowedCidrs='["198.51.100.7/24", "192.0.2.1/28"]')
    fixes = [p.fix for p in found if p.key == "apiAllowedCidrs"]
    assert [p.index for p in found if p.key == "apiAllowedCidrs"] == [0, 1]
    assert "did you mean 198.51.100.0/24?" in fixes[0]
    assert "did you mean 192.0.2.0/28?" in fixes[1]
    # The corrected IPv6 element would still fail the IPv4 rule: no hint, the path form to replace it.
    message = problems(sshAllowedCidrs='["2001:db8::1/32"]')["sshAllowedCidrs"]
    assert "did you mean" not in message
    assert "replace it: `pulumi config set --path 'kata-mesh:sshAllowedCidrs[0]' <IPv4 CIDR>`" in message


def test_a_list_setting_given_as_a_plain_string_is_told_the_path_form_with_its_value():
    message = problems(apiAllowedCidrs="203.0.113.7/32")["apiAllowedCidrs"]
    assert message.startswith("apiAllowedCidrs = 203.0.113.7/32: must be a list of strings")
    assert "`pulumi config set --path 'kata-mesh:apiAllowedCidrs[0]' 203.0.113.7/32`" in message
    # As a one-element list, an IPv6 value would still fail: no command with it is offered.
    message = problems(apiAllowedCidrs="2001:db8::/32")["apiAllowedCidrs"]
    assert "list of strings" in message
    assert "--path" not in message


def test_values_are_shown_as_the_user_writes_them():
    found = problems(
        istioCni="true",
        workerCount="-1",
        sshAllowedCidrs="[]",
        apiAllowedCidrs='["0.0.0.0/0", "10.0.0.1/8"]',
        machineType="n1-standard-4",
        gcp__zone=None,
    )
    assert found["istioCni"].startswith("istioCni = true: ")
    assert found["workerCount"].startswith("workerCount = -1: ")
    assert found["sshAllowedCidrs"].startswith("sshAllowedCidrs = []: ")
    assert found["apiAllowedCidrs"].startswith('apiAllowedCidrs = ["0.0.0.0/0", "10.0.0.1/8"]: ')
    assert found["minCpuPlatform"].startswith('minCpuPlatform = "": ')
    assert found["gcp:zone"].startswith("gcp:zone = (not set): ")


def test_list_fixes_use_the_path_form_because_config_set_stores_a_plain_string():
    message = problems(sshAllowedCidrs="[]")["sshAllowedCidrs"]
    assert "`pulumi config set --path 'kata-mesh:sshAllowedCidrs[0]' 203.0.113.7/32`" in message
    assert "--json" not in error_message(sshAllowedCidrs="[]", apiAllowedCidrs="[]")


def test_the_error_header_tells_how_to_set_list_settings_only_when_one_is_wrong():
    with_list = error_message(sshAllowedCidrs="[]")
    header = with_list.splitlines()[0]
    assert "fix with `pulumi config set <key> <value>`" in header
    assert "`pulumi config set --path 'kata-mesh:<key>[<index>]' <value>`" in header
    header = error_message(workerCount="-1").splitlines()[0]
    assert "fix with `pulumi config set <key> <value>`" in header
    assert "--path" not in header


@pytest.mark.parametrize(
    ("subnet", "workers", "message"),
    [
        # GCE: primary ranges are /29 or larger; four addresses of each are reserved.
        ("10.10.0.0/30", 1, "GCE subnets are /29 or larger"),
        ("10.10.0.0/29", 4, "has 4 usable addresses (GCE reserves 4), fewer than the 5 nodes"),
    ],
)
def test_the_node_subnet_must_be_a_gce_subnet_with_room_for_every_node(subnet, workers, message):
    assert message in problems(subnetCidr=subnet, workerCount=str(workers))["subnetCidr"]


def test_a_node_subnet_with_just_enough_room_is_accepted():
    assert "subnetCidr" not in problems(
        subnetCidr="10.10.0.0/29", workerCount="3", machineType="e2-standard-4"
    )


def test_c3_highcpu_has_no_local_ssd_variant():
    assert (
        "only c3-standard types come with -lssd" in problems(machineType="c3-highcpu-4-lssd")["machineType"]
    )


def test_automatic_min_cpu_platform_means_no_minimum():
    assert "minCpuPlatform" not in problems(
        minCpuPlatform="Automatic", machineType="n2-standard-4", workerCount="x"
    )
    assert "minCpuPlatform" in problems(minCpuPlatform="Automatic", machineType="n1-standard-4")


def test_the_fix_commands_name_the_project_pulumi_yaml_declares():
    """The settings messages spell `pulumi config set --path '<project>:key[0]'`: the namespace must
    be the project's own name, or the command would set a key nobody reads."""
    assert yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["name"] == PROJECT_NAME


# --- who may reach the cluster: world-open ranges, the gateway's own ranges ---------------------

ACCESS_KEYS = ["sshAllowedCidrs", "apiAllowedCidrs", "gatewayAllowedCidrs"]
NEW_ACCESS_SETTINGS = ["allowWorldAccess", "gatewayAllowedCidrs"]
# What each message says anyone on the internet could then do.
WORLD_RISKS = {
    "sshAllowedCidrs": "anyone on the internet could try SSH logins on every node",
    "apiAllowedCidrs": "anyone on the internet could reach the Kubernetes API server",
    "gatewayAllowedCidrs": "anyone on the internet could call httpbin",
}


def test_access_settings_are_off_or_empty_by_default_and_parsed():
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert {key: (declared[key]["type"], declared[key]["default"]) for key in NEW_ACCESS_SETTINGS} == {
        "allowWorldAccess": ("boolean", False),
        "gatewayAllowedCidrs": ("array", []),
    }
    settings = parse_settings(raw(), "dev")
    assert settings.allow_world_access is False
    assert settings.gateway_allowed_cidrs == ("203.0.113.0/24",)  # the operator's, tests/harness.py
    settings = parse_settings(raw(allowWorldAccess="true", gatewayAllowedCidrs='["192.0.2.0/24"]'), "dev")
    assert settings.allow_world_access is True
    assert settings.gateway_allowed_cidrs == ("192.0.2.0/24",)


def test_allow_world_access_is_true_or_false():
    assert (
        problems(allowWorldAccess="yes")["allowWorldAccess"]
        == "allowWorldAccess = yes: must be true or false"
    )


@pytest.mark.parametrize("key", ACCESS_KEYS)
@pytest.mark.parametrize(
    ("cidr", "addresses"),
    [("0.0.0.0/0", "4,294,967,296"), ("0.0.0.0/1", "2,147,483,648"), ("8.0.0.0/7", "33,554,432")],
)
def test_world_open_ranges_are_refused_saying_why_what_to_list_and_how_to_override(key, cidr, addresses):
    found = problem_list(ingressGateway="true", **{key: f'["198.51.100.7/32", "{cidr}"]'})
    assert [(p.key, p.index) for p in found] == [(key, 1)]
    message = str(found[0])
    assert message.startswith(
        f'{key} = ["198.51.100.7/32", "{cidr}"]: element 1 ({cidr}) counts as open to the world'
    )
    assert f"its prefix is shorter than /8, so it spans {addresses} addresses and" in message
    assert WORLD_RISKS[key] in message
    assert "List only the addresses that need it instead, such as your own address as a /32" in message
    assert f"`pulumi config set --path 'kata-mesh:{key}[1]' 203.0.113.7/32`" in message
    assert "`pulumi config set allowWorldAccess true`" in message


@pytest.mark.parametrize("key", ACCESS_KEYS)
@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "0.0.0.0/1", "8.0.0.0/7"])
def test_allow_world_access_accepts_world_open_ranges(key, cidr):
    settings = parse_settings(
        raw(ingressGateway="true", allowWorldAccess="true", **{key: f'["{cidr}"]'}), "dev"
    )
    field = {"sshAllowedCidrs": "ssh", "apiAllowedCidrs": "api", "gatewayAllowedCidrs": "gateway"}[key]
    assert getattr(settings, f"{field}_allowed_cidrs") == (cidr,)


@pytest.mark.parametrize("key", ACCESS_KEYS)
def test_a_slash_8_is_the_widest_range_taken_without_the_override(key):
    settings = parse_settings(raw(ingressGateway="true", **{key: '["10.0.0.0/8", "203.0.113.0/24"]'}), "dev")
    assert settings.allow_world_access is False


def test_a_world_open_range_is_never_offered_as_a_hint():
    # 0.0.0.1/0 has host bits; its network, 0.0.0.0/0, would be refused in turn.
    message = problems(sshAllowedCidrs='["0.0.0.1/0"]')["sshAllowedCidrs"]
    assert "has host bits set" in message
    assert "did you mean" not in message
    # With the override, the corrected range passes every rule and is offered.
    message = problems(sshAllowedCidrs='["0.0.0.1/0"]', allowWorldAccess="true")["sshAllowedCidrs"]
    assert "did you mean 0.0.0.0/0?" in message


def test_ssh_messages_speak_of_every_node():
    message = problems(sshAllowedCidrs="[]")["sshAllowedCidrs"]
    assert "SSH (22) on every node" in message
    assert "`pulumi config set --path 'kata-mesh:sshAllowedCidrs[0]' 203.0.113.7/32`" in message
    message = problems(sshAllowedCidrs='["0.0.0.0/0"]')["sshAllowedCidrs"]
    assert "anyone on the internet could try SSH logins on every node" in message
    assert "bastion" not in message


def test_the_gateway_needs_its_own_ranges():
    found = problem_list(ingressGateway="true", gatewayAllowedCidrs="[]")
    assert [p.key for p in found] == ["gatewayAllowedCidrs"]
    message = str(found[0])
    assert message.startswith("gatewayAllowedCidrs = []: ingressGateway is true")
    assert "it does not reuse apiAllowedCidrs" in message
    assert "the Istio ingress gateway (NodePort 30080 on every node)" in message
    assert "`pulumi config set --path 'kata-mesh:gatewayAllowedCidrs[0]' 203.0.113.7/32`" in message
    assert "`pulumi config set ingressGateway false`" in message
    assert "nothing is opened to the world by default" in message
    # Without the gateway, the list may stay empty.
    assert (
        parse_settings(raw(ingressGateway="false", gatewayAllowedCidrs="[]"), "dev").gateway_allowed_cidrs
        == ()
    )


def test_gateway_ranges_are_checked_like_the_others_even_with_the_gateway_off():
    found = problem_list(ingressGateway="false", gatewayAllowedCidrs='["192.0.2.1/24", "2001:db8::/32"]')
    assert [(p.key, p.index) for p in found] == [("gatewayAllowedCidrs", 0), ("gatewayAllowedCidrs", 1)]
    assert (
        "did you mean 192.0.2.0/24? `pulumi config set --path 'kata-mesh:gatewayAllowedCidrs[0]'"
        in found[0].fix
    )
    assert "must be an IPv4 CIDR" in found[1].fix
    message = problems(gatewayAllowedCidrs="203.0.113.0/24")["gatewayAllowedCidrs"]
    assert "`pulumi config set --path 'kata-mesh:gatewayAllowedCidrs[0]' 203.0.113.0/24`" in message


def test_every_access_problem_is_reported_at_once():
    with pytest.raises(SettingsError) as caught:
        parse_settings(
            raw(
                sshAllowedCidrs="[]",
                apiAllowedCidrs='["0.0.0.0/0"]',
                ingressGateway="true",
                gatewayAllowedCidrs="[]",
                workerCount="-1",
            ),
            "dev",
        )
    assert [(p.key, p.index) for p in caught.value.problems] == [
        ("workerCount", None),
        ("sshAllowedCidrs", None),
        ("apiAllowedCidrs", 0),
        ("gatewayAllowedCidrs", None),
    ]
    message = str(caught.value)
    assert message.startswith("4 problem(s) in the stack settings")
    assert "`pulumi config set --path 'kata-mesh:<key>[<index>]' <value>`" in message.splitlines()[0]
    assert "SSH (22) on every node" in message
    assert "allowWorldAccess true" in message
    assert "ingressGateway is true" in message


def test_prod_s_stack_file_alone_asks_for_the_gateway_s_ranges_too():
    values = stack_raw("prod")
    for key in ACCESS_KEYS:
        values[key] = "[]"
    with pytest.raises(SettingsError) as caught:
        parse_settings(values, "prod")
    assert [p.key for p in caught.value.problems] == ACCESS_KEYS


def test_a_runc_twin_needs_room_for_its_namespace_beside_the_app():
    # The twin's namespace is "<appNamespace>-runc": a DNS label has at most 63 characters.
    longest = "a" * (63 - len("-runc"))
    assert parse_settings(raw(appNamespace=longest, runcTwin="true"), "dev").app_namespace == longest
    with pytest.raises(SettingsError) as caught:
        parse_settings(raw(appNamespace=longest + "b", runcTwin="true"), "dev")
    assert "at most 58 characters" in str(caught.value) and "appNamespace" in str(caught.value)
    assert parse_settings(raw(appNamespace=longest + "b", runcTwin="false"), "dev").runc_twin is False


def test_private_nodes_are_off_by_default_and_on_in_staging_and_prod():
    assert parse_settings(raw(), "dev").private_nodes is False
    for stack in ("staging", "prod"):
        settings = parse_settings(stack_raw(stack), stack)
        assert settings.private_nodes is True
        assert settings.bastion_machine_type == "e2-small"


def test_private_nodes_without_ssh_ranges_are_told_the_ranges_reach_the_bastion():
    found = problem_list(privateNodes="true", sshAllowedCidrs="[]")
    [ssh] = [p for p in found if p.key == "sshAllowedCidrs"]
    assert "SSH (22) on the bastion, the only way to the private nodes" in ssh.fix
    assert "SSH (22) on every node" in problems(sshAllowedCidrs="[]")["sshAllowedCidrs"]


def test_a_world_open_bastion_range_is_refused_like_any_other():
    found = problems(privateNodes="true", sshAllowedCidrs='["0.0.0.0/0"]')
    assert "allowWorldAccess true" in found["sshAllowedCidrs"]


@pytest.mark.parametrize(
    "machine_type", ["e2-micro", "e2-small", "e2-medium", "n2-standard-2", "e2-custom-2-4096"]
)
def test_the_bastion_takes_any_gce_machine_type_nested_virtualization_or_not(machine_type):
    assert parse_settings(
        raw(privateNodes="true", bastionMachineType=machine_type), "dev"
    ).bastion_machine_type == (machine_type)


def test_a_bad_bastion_machine_type_is_reported_with_the_other_problems_only_when_private():
    found = problems(privateNodes="true", bastionMachineType="small", workerCount="-1")
    assert set(found) == {"bastionMachineType", "workerCount"}
    assert "e2-small" in found["bastionMachineType"]
    # Without private nodes there is no bastion to build.
    assert parse_settings(raw(bastionMachineType="small"), "dev").private_nodes is False
