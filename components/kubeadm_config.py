"""kubeadm's config files and the kubeconfig, rendered and parsed by small pure functions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml

from components.node_config import CONTAINERD_SOCKET

KUBEADM_API = "kubeadm.k8s.io/v1beta4"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"
API_PORT = 6443
KATA_NODE_LABEL = ("katacontainers.io/kata-runtime", "true")
# kubeadm's certificate key: 32 random bytes, hex (`kubeadm certs certificate-key` prints one).
CERTIFICATE_KEY = re.compile(r"^[0-9a-f]{64}$")
JOIN_COMMAND = re.compile(
    r"kubeadm\s+join\s+(?P<endpoint>\S+:\d+)\s+--token\s+(?P<token>[a-z0-9]{6}\.[a-z0-9]{16})"
    r"\s+--discovery-token-ca-cert-hash\s+(?P<hash>sha256:[a-f0-9]{64})"
)


@dataclass(frozen=True)
class NodeRegistration:
    name: str
    internal_ip: str
    labels: Mapping[str, str] = field(default_factory=dict)
    # None keeps kubeadm's default (control-plane NoSchedule taint); [] means no taints.
    taints: list[dict[str, str]] | None = None

    def render(self) -> dict:
        extra_args = [{"name": "node-ip", "value": self.internal_ip}]
        if self.labels:
            labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
            extra_args.append({"name": "node-labels", "value": labels})
        registration: dict = {
            "name": self.name,
            "criSocket": CONTAINERD_SOCKET,
            "kubeletExtraArgs": extra_args,
        }
        if self.taints is not None:
            registration["taints"] = self.taints
        return registration


@dataclass(frozen=True)
class InitSpec:
    node: NodeRegistration
    # The load balancer's address in front of every control plane: kubeadm's controlPlaneEndpoint,
    # and so the server of every kubeconfig kubeadm writes (kubelets, admins).
    endpoint: str
    kubernetes_version: str
    pod_cidr: str
    service_cidr: str


def _dump(*documents: dict) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True)


def render_init_config(spec: InitSpec) -> str:
    """kubeadm init's config: InitConfiguration, ClusterConfiguration and KubeletConfiguration."""
    return _dump(
        {
            "apiVersion": KUBEADM_API,
            "kind": "InitConfiguration",
            "nodeRegistration": spec.node.render(),
            "localAPIEndpoint": {"advertiseAddress": spec.node.internal_ip, "bindPort": API_PORT},
        },
        {
            "apiVersion": KUBEADM_API,
            "kind": "ClusterConfiguration",
            "kubernetesVersion": f"v{spec.kubernetes_version}",
            # The same endpoint for one control plane or five: growing the control plane changes
            # no certificate and no kubeconfig. Each API server's own address is a SAN anyway.
            "controlPlaneEndpoint": f"{spec.endpoint}:{API_PORT}",
            "networking": {"podSubnet": spec.pod_cidr, "serviceSubnet": spec.service_cidr},
            "apiServer": {"certSANs": [spec.endpoint]},
        },
        {
            "apiVersion": KUBELET_API,
            "kind": "KubeletConfiguration",
            "cgroupDriver": "systemd",
            "containerRuntimeEndpoint": CONTAINERD_SOCKET,
        },
    )


@dataclass(frozen=True)
class JoinCommand:
    api_server_endpoint: str
    token: str
    ca_cert_hash: str


def parse_join_command(text: str) -> JoinCommand:
    """Reads `kubeadm token create --print-join-command` output."""
    match = JOIN_COMMAND.search(text)
    if not match:
        # The text holds a token: say what was expected, never echo it.
        raise ValueError(
            "not a kubeadm join command (expected 'kubeadm join HOST:PORT --token ... --discovery-token-ca-cert-hash sha256:...')"
        )
    return JoinCommand(match["endpoint"], match["token"], match["hash"])


def render_join_config(node: NodeRegistration, join: JoinCommand, certificate_key: str | None = None) -> str:
    """A worker's JoinConfiguration, or a control plane's when given the certificate key that
    decrypts the control-plane certificates `kubeadm init --upload-certs` left in the cluster."""
    document: dict = {
        "apiVersion": KUBEADM_API,
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": join.api_server_endpoint,
                "token": join.token,
                "caCertHashes": [join.ca_cert_hash],
            }
        },
        "nodeRegistration": node.render(),
    }
    if certificate_key is not None:
        if not CERTIFICATE_KEY.match(certificate_key):
            raise ValueError("a kubeadm certificate key is 32 bytes as 64 lowercase hex digits")
        document["controlPlane"] = {
            # Its own API server listens on its own address; kubelets and admins keep using the
            # load balancer (controlPlaneEndpoint) in front of all of them.
            "localAPIEndpoint": {"advertiseAddress": node.internal_ip, "bindPort": API_PORT},
            "certificateKey": certificate_key,
        }
    return _dump(document)


def external_kubeconfig(admin_conf: str, endpoint: str) -> str:
    """admin.conf with every cluster's server set to the load balancer in front of the API servers
    (kubeadm already writes it there; this makes sure the exported file says so)."""
    config = yaml.safe_load(admin_conf)
    if not isinstance(config, dict) or not config.get("clusters"):
        raise ValueError("admin.conf has no clusters: was kubeadm init successful?")
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://{endpoint}:{API_PORT}"
    return yaml.safe_dump(config, sort_keys=False)
