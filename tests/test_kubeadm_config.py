"""The kubeadm config renderer (v1beta4), the join-command parser and the kubeconfig rewrite."""

from __future__ import annotations

import pytest
import yaml
from harness import MOCK_ADMIN_CONF

from components.cluster import node_registration
from components.kubeadm_config import (
    InitSpec,
    JoinCommand,
    external_kubeconfig,
    parse_join_command,
    render_init_config,
    render_join_config,
)

TOKEN = "abcdef.0123456789abcdef"
CA_HASH = "sha256:" + "0123456789abcdef" * 4


def init_documents(runs_workloads: bool) -> dict[str, dict]:
    spec = InitSpec(
        node=node_registration("kata-mesh-dev-cp-0", "10.10.0.2", runs_workloads, control_plane=True),
        external_ip="203.0.113.10",
        kubernetes_version="1.36.4",
        pod_cidr="10.244.0.0/16",
        service_cidr="10.96.0.0/12",
    )
    documents = list(yaml.safe_load_all(render_init_config(spec)))
    assert len(documents) == 3
    return {doc["kind"]: doc for doc in documents}


def test_init_config_has_every_v1beta4_field_the_cluster_needs():
    docs = init_documents(runs_workloads=False)
    init, cluster, kubelet = (
        docs["InitConfiguration"],
        docs["ClusterConfiguration"],
        docs["KubeletConfiguration"],
    )
    assert init["apiVersion"] == cluster["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["nodeRegistration"] == {
        "name": "kata-mesh-dev-cp-0",
        "criSocket": "unix:///run/containerd/containerd.sock",
        "kubeletExtraArgs": [{"name": "node-ip", "value": "10.10.0.2"}],
    }
    assert init["localAPIEndpoint"] == {"advertiseAddress": "10.10.0.2", "bindPort": 6443}
    assert cluster["kubernetesVersion"] == "v1.36.4"
    assert cluster["networking"] == {"podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/12"}
    assert cluster["apiServer"] == {"certSANs": ["203.0.113.10", "10.10.0.2"]}
    assert cluster["controlPlaneEndpoint"] == "10.10.0.2:6443"
    assert kubelet == {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "systemd",
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
    }


def test_a_control_plane_without_workers_takes_workloads_and_carries_the_kata_label():
    registration = init_documents(runs_workloads=True)["InitConfiguration"]["nodeRegistration"]
    assert registration["taints"] == []
    assert {"name": "node-labels", "value": "katacontainers.io/kata-runtime=true"} in registration[
        "kubeletExtraArgs"
    ]


def test_nothing_outdated_from_the_seed():
    rendered = render_init_config(
        InitSpec(
            node=node_registration("n", "10.0.0.2", False, control_plane=True),
            external_ip="203.0.113.1",
            kubernetes_version="1.36.4",
            pod_cidr="10.244.0.0/16",
            service_cidr="10.96.0.0/12",
        )
    )
    assert "ignorePreflightErrors" not in rendered
    assert "container-runtime" not in rendered.replace("containerRuntimeEndpoint", "")
    assert "v1beta3" not in rendered


@pytest.mark.parametrize(
    "printed",
    [
        f"kubeadm join 10.10.0.2:6443 --token {TOKEN} --discovery-token-ca-cert-hash {CA_HASH} \n",
        f"kubeadm join 10.10.0.2:6443 --token {TOKEN}   --discovery-token-ca-cert-hash {CA_HASH}",
    ],
)
def test_join_command_is_parsed(printed):
    assert parse_join_command(printed) == JoinCommand("10.10.0.2:6443", TOKEN, CA_HASH)


def test_unexpected_token_output_fails_without_echoing_it():
    with pytest.raises(ValueError) as caught:
        parse_join_command(f"error: something {TOKEN}")
    assert TOKEN not in str(caught.value)


def test_join_config_discovers_the_control_plane_with_the_fresh_token_and_labels_the_worker():
    node = node_registration("kata-mesh-dev-worker-0", "10.10.0.3", True, control_plane=False)
    [doc] = list(yaml.safe_load_all(render_join_config(node, JoinCommand("10.10.0.2:6443", TOKEN, CA_HASH))))
    assert doc["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert doc["kind"] == "JoinConfiguration"
    assert doc["discovery"] == {
        "bootstrapToken": {"apiServerEndpoint": "10.10.0.2:6443", "token": TOKEN, "caCertHashes": [CA_HASH]}
    }
    assert doc["nodeRegistration"] == {
        "name": "kata-mesh-dev-worker-0",
        "criSocket": "unix:///run/containerd/containerd.sock",
        "kubeletExtraArgs": [
            {"name": "node-ip", "value": "10.10.0.3"},
            {"name": "node-labels", "value": "katacontainers.io/kata-runtime=true"},
        ],
    }


def test_kubeconfig_points_at_the_external_address():
    config = yaml.safe_load(external_kubeconfig(MOCK_ADMIN_CONF, "203.0.113.10"))
    assert [c["cluster"]["server"] for c in config["clusters"]] == ["https://203.0.113.10:6443"]
    assert config["users"] == yaml.safe_load(MOCK_ADMIN_CONF)["users"]
    with pytest.raises(ValueError, match="no clusters"):
        external_kubeconfig("", "203.0.113.10")
