"""Every pinned artifact version and its sha256, in one place.

Checksums come from kubespray's roles/kubespray_defaults/vars/main/checksums.yml (amd64); Kata
publishes no checksum files, so its sha256 is pinned here by hand. Adding a version means adding
its checksum here; settings reject any version without one. crictl is not pinned here: it comes
with kubeadm (the cri-tools package) from the pinned Kubernetes apt repository.
"""

from __future__ import annotations

from dataclasses import dataclass

GITHUB = "https://github.com"


@dataclass(frozen=True)
class Artifact:
    """A downloadable file, where it lives upstream and what its sha256 must be."""

    name: str
    version: str
    upstream_url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.upstream_url.rsplit("/", 1)[1]


def _kata(version: str, sha256: str) -> Artifact:
    return Artifact(
        name="kata-static",
        version=version,
        upstream_url=(
            f"{GITHUB}/kata-containers/kata-containers/releases/download/"
            f"{version}/kata-static-{version}-amd64.tar.zst"
        ),
        sha256=sha256,
    )


KATA_RELEASES: dict[str, Artifact] = {
    a.version: a
    for a in (_kata("3.32.0", "1449ecea50bd91fa73a94648db195d18950fe869ba4b1f12d05f55f1fa7c1b01"),)
}

CONTAINERD = Artifact(
    name="containerd",
    version="2.3.4",
    upstream_url=f"{GITHUB}/containerd/containerd/releases/download/v2.3.4/containerd-2.3.4-linux-amd64.tar.gz",
    sha256="9d68969855fbf676cdb8ed758e420fb048d61f984f61de3e53eddfebe484d168",
)
RUNC = Artifact(
    name="runc",
    version="1.4.3",
    upstream_url=f"{GITHUB}/opencontainers/runc/releases/download/v1.4.3/runc.amd64",
    sha256="f6ae8efc0fa40079e1475e97cbe9d1bd3f106a28d6af78a11d9f1bd565515e60",
)
CNI_PLUGINS = Artifact(
    name="cni-plugins",
    version="1.9.1",
    upstream_url=f"{GITHUB}/containernetworking/plugins/releases/download/v1.9.1/cni-plugins-linux-amd64-v1.9.1.tgz",
    sha256="b98f74a0f8522f0a83867178729c1aa70f2158f90c45a2ca8fa791db1c76b303",
)

# Flannel, the pod network, from its official chart (VXLAN backend; chart versions carry a "v").
FLANNEL_CHART_REPOSITORY = "https://flannel-io.github.io/flannel/"
FLANNEL_CHART = "flannel"
FLANNEL_CHART_VERSION = "v0.28.9"
FLANNEL_NAMESPACE = "kube-flannel"

# Istio from its official Helm charts; 1.30 supports Kubernetes 1.32-1.36.
ISTIO_CHART_REPOSITORY = "https://istio-release.storage.googleapis.com/charts"
ISTIO_MINOR = (1, 30)

# The in-mesh client the verification runs its request from (it gets its own sidecar).
MESH_CLIENT_IMAGE = "docker.io/curlimages/curl:8.11.1"

# Kubernetes minors this project supports: kubeadm v1beta4 needs 1.31+, Istio 1.30 supports
# 1.32-1.36, and pkgs.k8s.io serves one apt repository per minor.
KUBERNETES_MINORS = range(32, 37)

# Kata 3.23 is the first release whose guest kernel has both nf_tables and legacy ip6tables,
# which the istio-init container needs; 4.x splits the Go runtime into another tarball.
KATA_MINIMUM = (3, 23, 0)
KATA_MAJOR = 3
