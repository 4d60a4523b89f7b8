"""kata-mesh node images: one GCE image per set of inputs the listed cluster stacks ask for."""

import sys
from pathlib import Path

import pulumi

# The cluster project's components (this project lives in its images/ folder).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.images_project import BuilderNetwork, BuilderNetworkArgs, load_images_settings
from components.node_image import NodeImageBuild, NodeImageBuildArgs
from components.ssh_access import SshAccess, SshAccessArgs

settings = load_images_settings()
network = BuilderNetwork(
    "builders",
    BuilderNetworkArgs(
        region=settings.region, subnet_cidr=settings.subnet_cidr, ssh_allowed_cidrs=settings.ssh_allowed_cidrs
    ),
)
ssh = SshAccess("ssh", SshAccessArgs(admin_user=settings.admin_user))
images = {
    digest: NodeImageBuild(
        f"image-{digest[:12]}",
        NodeImageBuildArgs(
            inputs=build.inputs,
            zone=settings.zone,
            subnet=network.subnet.id,
            admin_user=settings.admin_user,
            private_key=ssh.private_key_openssh,
            authorized_key=ssh.public_key_openssh,
            ssh_keys_metadata=ssh.ssh_keys_metadata,
            machine_type=settings.machine_type,
            artifact_mirror_url=settings.artifact_mirror_url,
            after=[network.ssh_firewall],
        ),
    )
    for digest, build in settings.builds.items()
}
pulumi.export(
    "images",
    {
        images[digest].name: {
            "selfLink": images[digest].image.self_link,
            "kubernetesVersion": build.inputs.kubernetes_version,
            "kataVersion": build.inputs.kata.version,
            "stacks": list(build.stacks),
            "inputsHash": digest,
        }
        for digest, build in settings.builds.items()
    },
)
