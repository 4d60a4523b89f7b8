"""The node images project (images/): which images to build, and the small network the builders use.

Its settings name the cluster stacks it serves; each stack's node image inputs come from that
stack's own file (stacks/Pulumi.<stack>.yaml over Pulumi.yaml's defaults), so a version bump in a
stack asks this project for a new image, and stacks that ask for the same inputs share one.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_gcp as gcp

from components.node_image import (
    BUILDER_MACHINE_TYPE,
    BUILDER_TAG,
    ImageInputs,
    NodeImageError,
    inputs_hash,
    stack_image_inputs,
)
from components.settings import NESTED_VIRT_SERIES, WORLD_OPEN_PREFIX

IMAGES_PROJECT = "kata-mesh-images"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ImageBuild:
    inputs: ImageInputs
    # The cluster stacks that boot from it.
    stacks: tuple[str, ...]


@dataclass(frozen=True)
class ImagesSettings:
    region: str
    zone: str
    stacks: tuple[str, ...]
    ssh_allowed_cidrs: tuple[str, ...]
    machine_type: str
    admin_user: str
    subnet_cidr: str
    artifact_mirror_url: str | None
    # One per distinct inputs hash, by hash: what the listed stacks ask for.
    builds: dict[str, ImageBuild]


class ImagesSettingsError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{len(problems)} problem(s) in the images project's settings (fix with "
            f"`pulumi config set --path '{IMAGES_PROJECT}:<key>[<index>]' <value>` in images/):\n{lines}"
        )


def _list(raw: Mapping[str, str | None], key: str, problems: list[str]) -> tuple[str, ...]:
    text = raw.get(key) or "[]"
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{key} = {text}: must be a list of strings")
        return ()
    return tuple(value)


def parse_images_settings(raw: Mapping[str, str | None], root: Path = ROOT) -> ImagesSettings:
    """Every problem at once; keys are the images project's (`stacks`, ...) and gcp:region/zone."""
    problems: list[str] = []
    region = raw.get("gcp:region") or ""
    zone = raw.get("gcp:zone") or ""
    if not zone.startswith(f"{region}-") or not region:
        problems.append(
            f"gcp:zone = {zone or '(unset)'}: must be a zone of gcp:region ({region or 'unset'}), "
            "e.g. `pulumi config set gcp:zone us-central1-a`"
        )
    stacks = _list(raw, "stacks", problems)
    if not stacks and raw.get("stacks") not in (None, ""):
        problems.append(
            "stacks = []: name at least one cluster stack (dev, staging, prod) whose node image to build"
        )
    ssh_allowed = _list(raw, "sshAllowedCidrs", problems)
    if not ssh_allowed:
        problems.append(
            "sshAllowedCidrs = []: the builder is provisioned over SSH; list the machine that runs "
            f"`pulumi up`, e.g. `pulumi config set --path '{IMAGES_PROJECT}:sshAllowedCidrs[0]' 203.0.113.7/32`"
        )
    for index, cidr in enumerate(ssh_allowed):
        try:
            net = ipaddress.IPv4Network(cidr, strict=True)
        except ValueError:
            problems.append(f"sshAllowedCidrs[{index}] = {cidr}: must be an IPv4 CIDR such as 203.0.113.7/32")
            continue
        if net.prefixlen < WORLD_OPEN_PREFIX:
            problems.append(
                f"sshAllowedCidrs[{index}] = {cidr}: open to the world (shorter than /{WORLD_OPEN_PREFIX}); "
                "list your own address as a /32"
            )
    machine_type = raw.get("machineType") or BUILDER_MACHINE_TYPE
    if machine_type.split("-", 1)[0] not in NESTED_VIRT_SERIES:
        problems.append(
            f"machineType = {machine_type}: the builder runs `kata-runtime check`, which needs nested "
            f"virtualization: an Intel series ({', '.join(NESTED_VIRT_SERIES)}), e.g. {BUILDER_MACHINE_TYPE}"
        )
    subnet_cidr = raw.get("subnetCidr") or "10.250.0.0/24"
    try:
        ipaddress.IPv4Network(subnet_cidr, strict=True)
    except ValueError:
        problems.append(f"subnetCidr = {subnet_cidr}: must be an IPv4 CIDR such as 10.250.0.0/24")
    builds: dict[str, ImageBuild] = {}
    for stack in stacks:
        try:
            inputs = stack_image_inputs(root, stack)
        except NodeImageError as error:
            problems.append(f"stacks: {error}")
            continue
        if inputs is None:
            continue
        digest = inputs_hash(inputs)
        known = builds.get(digest)
        builds[digest] = ImageBuild(inputs, (*known.stacks, stack) if known else (stack,))
    if problems:
        raise ImagesSettingsError(problems)
    return ImagesSettings(
        region=region,
        zone=zone,
        stacks=stacks,
        ssh_allowed_cidrs=ssh_allowed,
        machine_type=machine_type,
        admin_user=raw.get("adminUser") or "kata-admin",
        subnet_cidr=subnet_cidr,
        artifact_mirror_url=(raw.get("artifactMirrorUrl") or "").rstrip("/") or None,
        builds=builds,
    )


IMAGES_KEYS = ("stacks", "sshAllowedCidrs", "machineType", "adminUser", "subnetCidr", "artifactMirrorUrl")


def load_images_settings() -> ImagesSettings:
    project = pulumi.Config()
    gcp_config = pulumi.Config("gcp")
    raw: dict[str, str | None] = {key: project.get(key) for key in IMAGES_KEYS}
    raw["gcp:region"] = gcp_config.get("region")
    raw["gcp:zone"] = gcp_config.get("zone")
    return parse_images_settings(raw)


@dataclass(frozen=True)
class BuilderNetworkArgs:
    region: str
    subnet_cidr: str
    ssh_allowed_cidrs: Sequence[str]


class BuilderNetwork(pulumi.ComponentResource):
    """A VPC of the builders' own: SSH in from the deploying machine only, downloads out."""

    def __init__(
        self, name: str, args: BuilderNetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("kata-mesh:images:BuilderNetwork", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.network = gcp.compute.Network(
            f"{name}-vpc", name="kata-mesh-images", auto_create_subnetworks=False, opts=child
        )
        self.subnet = gcp.compute.Subnetwork(
            f"{name}-subnet",
            name="kata-mesh-images",
            region=args.region,
            network=self.network.id,
            ip_cidr_range=args.subnet_cidr,
            opts=child,
        )
        self.ssh_firewall = gcp.compute.Firewall(
            f"{name}-ssh",
            name="kata-mesh-images-ssh",
            network=self.network.id,
            direction="INGRESS",
            source_ranges=list(args.ssh_allowed_cidrs),
            target_tags=[BUILDER_TAG],
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=["22"])],
            opts=child,
        )
        self.register_outputs({"subnet": self.subnet.id})
