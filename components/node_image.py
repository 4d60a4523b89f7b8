"""The node image: what every node installs (packages, containerd, runc, CNI plugins, Kata, the
Kubernetes packages and images), installed once on a builder VM by the same node scripts, sealed,
and kept as a GCE image that every stack of the project asking for the same inputs boots from.

The image's name carries a hash of its inputs (the scripts and arguments of the build steps, the
base image), so a stack finds exactly the image made for it, and a version or script change asks
for another one. Images are built by their own small Pulumi project (images/); a stack only
looks its image up, and refuses to deploy, saying why, when it does not exist.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_gcp as gcp
import yaml

from components import node_config, versions
from components.host_key import HOST_KEY_DIR, SSHD_DROPIN_PATH, make_host_key
from components.node_provisioning import (
    KATA_LINKS,
    KERNEL_MODULES,
    METADATA_BLOCK_PACKAGES,
    NODE_PACKAGES,
    ROLLOUT_MARKER,
    SYSCTLS,
    NodeProvisioning,
    NodeProvisioningArgs,
    NodeStep,
    ProvisioningSpec,
    SshTarget,
    b64,
    node_steps,
    rollout_of,
)
from components.nodes import ssh_metadata

IMAGE_FAMILY = "kata-mesh-node"
# The image's name is the family and this many hex digits of the inputs hash (128 bits), within
# GCE's 63 characters; the same digits are its label, which the stack checks too.
NAME_HASH_DIGITS = 32
INPUTS_LABEL = "kata-mesh-inputs"
# What the image was made from: Ubuntu's current image of this family when the image is built.
BASE_IMAGE_PROJECT = "ubuntu-os-cloud"
BASE_IMAGE_FAMILY = "ubuntu-2404-lts-amd64"
# Written by the seal step last, read by a baked node's first step (12-node-image.sh).
IMAGE_MANIFEST = "/etc/kata-mesh/node-image"
# Everything a node's steps use, installed in the image: the node packages and nftables (the
# metadata block's), so that no step of a baked node needs apt.
IMAGE_PACKAGES = (*NODE_PACKAGES, *METADATA_BLOCK_PACKAGES)
# What a baked node checks the image holds before it uses it.
IMAGE_FILES = (
    "/usr/local/bin/containerd",
    "/usr/local/bin/containerd-shim-runc-v2",
    "/usr/local/bin/ctr",
    "/usr/local/sbin/runc",
    "/opt/cni/bin/bridge",
    "/opt/cni/bin/host-local",
    "/opt/cni/bin/loopback",
    "/opt/cni/bin/portmap",
    "/usr/bin/kubelet",
    "/usr/bin/kubeadm",
    "/usr/bin/kubectl",
    "/usr/bin/crictl",
    "/usr/sbin/nft",
)
# Arguments that say where the builder fetches from, not what it installs (the checksums do).
FETCH_ONLY_ARGS = frozenset({"containerd-url", "runc-url", "cni-url", "kata-url", "rollout"})
# The builder: nested virtualization (`kata-runtime check` runs on it), no service account, and a
# disk the size of the image (a node's disk can only be as large or larger).
BUILDER_MACHINE_TYPE = "n2-standard-2"
BUILDER_DISK_GB = 20
# The builder's network tag: the images project's SSH rule applies to it only.
BUILDER_TAG = "kata-mesh-image-builder"
# GCE deletes the builder this long after it starts, whatever happens to the build: a build takes
# about 6 minutes, and a failed one leaves no VM running for long (retry within this time on the
# same builder; after it, `pulumi up --refresh` makes a new one).
BUILDER_MAX_RUN_SECONDS = 45 * 60
# What GCE needs to know to boot the image as it booted Ubuntu's (Shielded VM's secure boot needs
# UEFI; Ubuntu's images carry the other two).
GUEST_OS_FEATURES = ("UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE", "GVNIC")


@dataclass(frozen=True)
class ImageInputs:
    """What a node image holds: the versions a stack asks for."""

    kubernetes_version: str
    kata: versions.Artifact

    def spec(self, artifact_mirror_url: str | None = None) -> ProvisioningSpec:
        return ProvisioningSpec(self.kubernetes_version, self.kata, artifact_mirror_url)


def pull_images_step(kubernetes_version: str) -> NodeStep:
    """The Kubernetes images kubeadm runs (API server, etcd, kube-proxy, ...), pulled at build."""
    return NodeStep(
        "images",
        "42-pull-images.sh",
        (("kubernetes-version", kubernetes_version), ("cri-socket", node_config.CONTAINERD_SOCKET)),
    )


def build_steps(inputs: ImageInputs, artifact_mirror_url: str | None = None) -> list[NodeStep]:
    """What the builder runs, in order, before the seal: a node's own steps, less the node-specific
    metadata block (it holds the stack's pod range), plus the images kubeadm pulls."""
    stock = {step.name: step for step in node_steps(inputs.spec(artifact_mirror_url))}
    prerequisites = stock["prerequisites"]
    prerequisites = dataclasses.replace(
        prerequisites,
        args=tuple(
            (key, " ".join(IMAGE_PACKAGES) if key == "packages" else value)
            for key, value in prerequisites.args
        ),
    )
    return [
        stock["wait-ready"],
        prerequisites,
        stock["containerd"],
        stock["kata"],
        stock["kubernetes"],
        pull_images_step(inputs.kubernetes_version),
    ]


def inputs_hash(inputs: ImageInputs) -> str:
    """The image's identity: every build step's script and arguments (where files come from
    aside: checksums pin what they are), the seal, and the base image."""
    parts = [f"base\0{BASE_IMAGE_PROJECT}/{BASE_IMAGE_FAMILY}", f"seal\0{seal_step('').script_text}"]
    for step in build_steps(inputs):
        args = [f"{key}={value}" for key, value in step.args if key not in FETCH_ONLY_ARGS]
        parts.append("\0".join([step.name, step.script_text, *args]))
    return hashlib.sha256("\0\0".join(parts).encode()).hexdigest()


def image_name(digest: str) -> str:
    return f"{IMAGE_FAMILY}-{digest[:NAME_HASH_DIGITS]}"


def label_value(version: str) -> str:
    """GCE label values take no dots: 1.36.4 -> 1-36-4."""
    return version.replace(".", "-")


def image_labels(inputs: ImageInputs) -> dict[str, str]:
    return {
        INPUTS_LABEL: inputs_hash(inputs)[:NAME_HASH_DIGITS],
        "kubernetes": label_value(inputs.kubernetes_version),
        "kata": label_value(inputs.kata.version),
        "containerd": label_value(versions.CONTAINERD.version),
    }


def render_manifest(inputs: ImageInputs) -> str:
    """The image's own record of what it holds; a baked node compares its inputs-hash line."""
    return (
        f"inputs-hash={inputs_hash(inputs)}\n"
        f"kubernetes-version={inputs.kubernetes_version}\n"
        f"kata-version={inputs.kata.version}\n"
        f"containerd-version={versions.CONTAINERD.version}\n"
        f"runc-version={versions.RUNC.version}\n"
        f"cni-plugins-version={versions.CNI_PLUGINS.version}\n"
        f"base-image-family={BASE_IMAGE_PROJECT}/{BASE_IMAGE_FAMILY}\n"
    )


def seal_step(manifest_text: str) -> NodeStep:
    """The builder's last step: what is the builder's own goes (cloud-init state, machine-id, host
    and login keys, apt caches, logs), kubelet is disabled until a node joins, the manifest last."""
    return NodeStep(
        "seal",
        "99-seal-image.sh",
        (
            ("root", "/"),
            ("manifest", IMAGE_MANIFEST),
            ("manifest-b64", b64(manifest_text)),
            ("rollout-marker", ROLLOUT_MARKER),
            ("host-key-dir", HOST_KEY_DIR),
            ("sshd-dropin", SSHD_DROPIN_PATH),
        ),
    )


def node_image_step(spec: ProvisioningSpec, digest: str) -> NodeStep:
    """A baked node's first step after boot: the image is the one asked for and holds everything
    (all problems at once), the kernel is ready, Kata passes its check, kubelet is enabled, and the
    node is marked at the stack's rollout. Nothing is downloaded."""
    return NodeStep(
        "node-image",
        "12-node-image.sh",
        (
            ("manifest", IMAGE_MANIFEST),
            ("inputs-hash", digest),
            ("packages", " ".join(IMAGE_PACKAGES)),
            ("files", " ".join(IMAGE_FILES)),
            ("kubernetes-version", spec.kubernetes_version),
            ("prefix", node_config.KATA_PREFIX),
            ("kata-sha256", spec.kata.sha256),
            ("bin-dir", "/usr/local/bin"),
            ("links", " ".join(KATA_LINKS)),
            ("modules", " ".join(KERNEL_MODULES)),
            ("sysctls", " ".join(SYSCTLS)),
            ("rollout", rollout_of(node_steps(spec))),
            ("marker", ROLLOUT_MARKER),
            ("cri-socket", node_config.CONTAINERD_SOCKET),
        ),
        # Once per VM: a live node keeps the image it booted from, and a later change of versions
        # reaches it by the rollout (components/rollout.py), as on a stock node.
        rolled=True,
    )


def baked_node_steps(spec: ProvisioningSpec) -> list[NodeStep]:
    """What a node that boots from the node image runs: the image checked and started, then what
    depends on the stack (the metadata block holds its pod range); joining comes after."""
    stock = {step.name: step for step in node_steps(spec)}
    digest = inputs_hash(ImageInputs(spec.kubernetes_version, spec.kata))
    return [stock["wait-ready"], node_image_step(spec, digest), stock["metadata-block"]]


# --- a stack's image --------------------------------------------------------------------------


class NodeImageError(ValueError):
    """The stack's node image cannot be used (the message says why and what to do)."""


def describe(image: Any) -> str:
    labels = dict(image.labels or {})
    return (
        f"{image.name} (Kubernetes {labels.get('kubernetes', '?').replace('-', '.')}, "
        f"Kata {labels.get('kata', '?').replace('-', '.')})"
    )


def find_node_image(stack: str, inputs: ImageInputs, project: str | None = None) -> str:
    """The self link of the image built for these inputs; NodeImageError when there is none, or
    when the image of that name was not labelled with these inputs."""
    digest = inputs_hash(inputs)
    name = image_name(digest)
    found = gcp.compute.get_images(filter=f'name = "{name}"', project=project).images
    wanted = f"Kubernetes {inputs.kubernetes_version}, Kata {inputs.kata.version}, inputs {digest}"
    build = (
        f"build it with `pulumi up` in images/ (its stacks setting lists {stack}; README, Node "
        "images), or deploy without it: `pulumi config set nodeImage stock`"
    )
    if not found:
        family = gcp.compute.get_images(filter=f'family = "{IMAGE_FAMILY}"', project=project).images
        present = "; ".join(describe(image) for image in family) or "none"
        raise NodeImageError(
            f"nodeImage baked: no node image {name} for this stack ({wanted}). Images of family "
            f"{IMAGE_FAMILY}: {present}. Fix: {build}"
        )
    image = found[0]
    label = dict(image.labels or {}).get(INPUTS_LABEL)
    if label != digest[:NAME_HASH_DIGITS]:
        raise NodeImageError(
            f"nodeImage baked: image {name} is labelled {INPUTS_LABEL}={label}, not "
            f"{digest[:NAME_HASH_DIGITS]}: it was not made by images/ for these inputs ({wanted}), "
            f"so it is not used. Fix: delete it (`gcloud compute images delete {name}`), then {build}"
        )
    return image.self_link


# --- which images the images project builds ------------------------------------------------------


def stack_image_inputs(root: Path, stack: str) -> ImageInputs | None:
    """The inputs of a cluster stack's node image, from its stack file over Pulumi.yaml's
    defaults; None for a stack with nodeImage stock. Versions are checked as the stack would."""
    project = yaml.safe_load((root / "Pulumi.yaml").read_text())
    name = project["name"]
    stack_file = root / project.get("stackConfigDir", ".") / f"Pulumi.{stack}.yaml"
    if not stack_file.is_file():
        raise NodeImageError(f"stacks: no stack file {stack_file} for stack {stack}")
    values = (yaml.safe_load(stack_file.read_text()) or {}).get("config") or {}

    def setting(key: str) -> str:
        return str(values.get(f"{name}:{key}", project["config"][key]["default"]))

    if setting("nodeImage") == "stock":
        return None
    kata_version = setting("kataVersion")
    if kata_version not in versions.KATA_RELEASES:
        raise NodeImageError(
            f"stack {stack}: kataVersion {kata_version} has no pinned checksum "
            f"(components/versions.py has {', '.join(versions.KATA_RELEASES)})"
        )
    return ImageInputs(setting("kubernetesVersion"), versions.KATA_RELEASES[kata_version])


# --- the build -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeImageBuildArgs:
    inputs: ImageInputs
    zone: str
    subnet: pulumi.Input[str]
    admin_user: str
    private_key: pulumi.Input[str]
    authorized_key: pulumi.Input[str]
    ssh_keys_metadata: pulumi.Input[str]
    machine_type: str = BUILDER_MACHINE_TYPE
    artifact_mirror_url: str | None = None
    # The SSH firewall rule: open before the first step, closed after the last.
    after: Sequence[pulumi.Resource] = ()


class NodeImageBuild(pulumi.ComponentResource):
    """One node image: a builder VM runs the build steps and the seal, a snapshot of its disk
    becomes the image. Nothing past a failed step is made, so no image of the family is half-made."""

    image: gcp.compute.Image
    name: str

    def __init__(
        self, name: str, args: NodeImageBuildArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("kata-mesh:images:NodeImageBuild", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        digest = inputs_hash(args.inputs)
        self.name = image_name(digest)
        base = gcp.compute.get_image_output(
            family=BASE_IMAGE_FAMILY,
            project=BASE_IMAGE_PROJECT,
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        host_key = make_host_key(name, self, args.admin_user, args.authorized_key)
        builder_name = f"{IMAGE_FAMILY}-builder-{digest[:16]}"
        self.builder = gcp.compute.Instance(
            f"{name}-builder",
            name=builder_name,
            zone=args.zone,
            machine_type=args.machine_type,
            advanced_machine_features=gcp.compute.InstanceAdvancedMachineFeaturesArgs(
                enable_nested_virtualization=True,
            ),
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=base.self_link, size=BUILDER_DISK_GB, type="pd-balanced"
                ),
            ),
            network_interfaces=[
                gcp.compute.InstanceNetworkInterfaceArgs(
                    subnetwork=args.subnet,
                    # An ephemeral address: SSH from the deploying machine, downloads out.
                    access_configs=[gcp.compute.InstanceNetworkInterfaceAccessConfigArgs()],
                )
            ],
            scheduling=gcp.compute.InstanceSchedulingArgs(
                provisioning_model="STANDARD",
                automatic_restart=False,
                max_run_duration=gcp.compute.InstanceSchedulingMaxRunDurationArgs(
                    seconds=BUILDER_MAX_RUN_SECONDS
                ),
                instance_termination_action="DELETE",
            ),
            shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(
                enable_secure_boot=True, enable_vtpm=True, enable_integrity_monitoring=True
            ),
            metadata=ssh_metadata(args.ssh_keys_metadata, host_key),
            labels={"app": "kata-mesh", "role": "image-builder", INPUTS_LABEL: digest[:NAME_HASH_DIGITS]},
            tags=[BUILDER_TAG],
            opts=pulumi.ResourceOptions(
                parent=self,
                delete_before_replace=True,
                # Ubuntu's newer image in the family must not rebuild an image that exists.
                ignore_changes=["bootDisk.initializeParams.image"],
            ),
        )
        ssh = SshTarget(
            host=self.builder.network_interfaces.apply(
                lambda nics: (nics[0].access_configs or [])[0].nat_ip or ""
            ),
            user=args.admin_user,
            private_key=args.private_key,
            host_key=host_key.public_key_openssh,
        )
        self.build = NodeProvisioning(
            f"{name}-build",
            NodeProvisioningArgs(
                ssh=ssh,
                instance_id=self.builder.instance_id,
                instance=self.builder,
                steps=[
                    *build_steps(args.inputs, args.artifact_mirror_url),
                    seal_step(render_manifest(args.inputs)),
                ],
                after=args.after,
                once_per_vm=True,
            ),
            opts=child,
        )
        # GCE snapshots an attached disk as it is (crash-consistent); the seal stopped the writers
        # and synced, and nothing runs on the builder after it.
        self.snapshot = gcp.compute.Snapshot(
            f"{name}-snapshot",
            name=self.name,
            zone=args.zone,
            source_disk=self.builder.boot_disk.apply(lambda disk: disk.source or ""),
            labels=image_labels(args.inputs),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.build.last]),
        )
        self.image = gcp.compute.Image(
            f"{name}-image",
            name=self.name,
            family=IMAGE_FAMILY,
            source_snapshot=self.snapshot.self_link,
            labels=image_labels(args.inputs),
            # The base image the builder really booted (its disk keeps it), not the family's newest.
            description=self.builder.boot_disk.apply(
                lambda disk: (
                    f"kata-mesh node image: Kubernetes {args.inputs.kubernetes_version}, Kata "
                    f"{args.inputs.kata.version}, containerd {versions.CONTAINERD.version}, runc "
                    f"{versions.RUNC.version}; built from "
                    f"{(disk.initialize_params.image if disk.initialize_params else None) or 'unknown'}; "
                    f"inputs {digest}"
                )
            ),
            guest_os_features=[gcp.compute.ImageGuestOsFeatureArgs(type=f) for f in GUEST_OS_FEATURES],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.snapshot], delete_before_replace=True),
        )
        self.register_outputs({"image": self.image.self_link})
