"""The kubeadm config renderer (v1beta4), the join-command parser and the kubeconfig rewrite."""

from __future__ import annotations

import pytest
import yaml
from harness import MOCK_ADMIN_CONF

from components.cluster import node_registration
from components.kubeadm_config import (
    INIT_TOKEN_DESCRIPTION,
    InitSpec,
    JoinCommand,
    external_kubeconfig,
    parse_join_command,
    render_init_config,
    render_join_config,
)

TOKEN = "abcdef.0123456789abcdef"
LOAD_BALANCER = "198.51.100.20"
# What `kubeadm certs certificate-key` prints: 32 random bytes in hex.
CERTIFICATE_KEY = "8f7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170615f4e3d2c1b0a9"

# The v1beta4 documents' fields (json names and Go types) as kubeadm declares them in
# kubernetes/kubernetes cmd/kubeadm/app/apis/kubeadm/v1beta4/types.go (InitConfiguration,
# ClusterConfiguration, APIServer with ControlPlaneComponent inlined, ControlPlaneComponent,
# HostPathMount, Networking, JoinConfiguration, Discovery, BootstrapTokenDiscovery, FileDiscovery,
# JoinControlPlane, APIEndpoint, NodeRegistrationOptions, Patches, Timeouts, Arg) and
# cmd/kubeadm/app/apis/bootstraptoken/v1/types.go (BootstrapToken). A metav1.Duration is a string
# ("1h0m0s"); `dict` is an object this project never sets and the table does not model further.
V1BETA4 = {
    "InitConfiguration": {
        "apiVersion": str,
        "kind": str,
        "bootstrapTokens": ["BootstrapToken"],
        "dryRun": bool,
        "nodeRegistration": "NodeRegistrationOptions",
        "localAPIEndpoint": "APIEndpoint",
        "certificateKey": str,
        "skipPhases": [str],
        "patches": "Patches",
        "timeouts": "Timeouts",
    },
    "BootstrapToken": {
        # BootstrapTokenString marshals to "ID.SECRET".
        "token": str,
        "description": str,
        "ttl": str,
        "expires": str,
        "usages": [str],
        "groups": [str],
    },
    "ClusterConfiguration": {
        "apiVersion": str,
        "kind": str,
        "etcd": dict,
        "networking": "Networking",
        "kubernetesVersion": str,
        "controlPlaneEndpoint": str,
        "apiServer": "APIServer",
        "controllerManager": "ControlPlaneComponent",
        "scheduler": "ControlPlaneComponent",
        "dns": dict,
        "proxy": dict,
        "certificatesDir": str,
        "imageRepository": str,
        "featureGates": dict,
        "clusterName": str,
        "encryptionAlgorithm": str,
        "certificateValidityPeriod": str,
        "caCertificateValidityPeriod": str,
    },
    "Networking": {"serviceSubnet": str, "podSubnet": str, "dnsDomain": str},
    "ControlPlaneComponent": {"extraArgs": ["Arg"], "extraVolumes": ["HostPathMount"], "extraEnvs": [dict]},
    # ControlPlaneComponent inline, and certSANs.
    "APIServer": {
        "extraArgs": ["Arg"],
        "extraVolumes": ["HostPathMount"],
        "extraEnvs": [dict],
        "certSANs": [str],
    },
    "HostPathMount": {"name": str, "hostPath": str, "mountPath": str, "readOnly": bool, "pathType": str},
    "JoinConfiguration": {
        "apiVersion": str,
        "kind": str,
        "dryRun": bool,
        "nodeRegistration": "NodeRegistrationOptions",
        "caCertPath": str,
        "discovery": "Discovery",
        "controlPlane": "JoinControlPlane",
        "skipPhases": [str],
        "patches": "Patches",
        "timeouts": "Timeouts",
    },
    "Discovery": {
        "bootstrapToken": "BootstrapTokenDiscovery",
        "file": "FileDiscovery",
        "tlsBootstrapToken": str,
    },
    "BootstrapTokenDiscovery": {
        "token": str,
        "apiServerEndpoint": str,
        "caCertHashes": [str],
        "unsafeSkipCAVerification": bool,
    },
    "FileDiscovery": {"kubeConfigPath": str},
    "JoinControlPlane": {"localAPIEndpoint": "APIEndpoint", "certificateKey": str},
    "APIEndpoint": {"advertiseAddress": str, "bindPort": int},
    "NodeRegistrationOptions": {
        "name": str,
        "criSocket": str,
        "taints": [dict],
        "kubeletExtraArgs": ["Arg"],
        "ignorePreflightErrors": [str],
        "imagePullPolicy": str,
        "imagePullSerial": bool,
    },
    "Patches": {"directory": str},
    "Timeouts": {
        "controlPlaneComponentHealthCheck": str,
        "kubeletHealthCheck": str,
        "kubernetesAPICall": str,
        "etcdAPICall": str,
        "tlsBootstrap": str,
        "discovery": str,
        "upgradeManifests": str,
    },
    "Arg": {"name": str, "value": str},
}
# Fields without omitempty that a document must then give (an Arg without a value, a mount
# without a path, mean nothing).
V1BETA4_REQUIRED = {
    "Arg": ("name", "value"),
    "HostPathMount": ("name", "hostPath", "mountPath"),
    "JoinConfiguration": ("discovery",),
    "BootstrapTokenDiscovery": ("token",),
}
# corev1.HostPathType's values.
HOST_PATH_TYPES = {
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
}


def conforms(
    value: object,
    kind: object,
    where: str,
    types: dict[str, dict] = V1BETA4,
    required: dict[str, tuple[str, ...]] = V1BETA4_REQUIRED,
) -> list[str]:
    """Every field of `value` exists in the type `kind` (of `types`, v1beta4 unless told), with
    that field's type, and every required field is there."""
    if isinstance(kind, list):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [
            p
            for i, item in enumerate(value)
            for p in conforms(item, kind[0], f"{where}[{i}]", types, required)
        ]
    if isinstance(kind, str):
        if not isinstance(value, dict):
            return [f"{where}: expected an object ({kind})"]
        fields = types[kind]
        missing = [
            f"{where}.{name}: required in {kind}" for name in required.get(kind, ()) if name not in value
        ]
        return missing + [
            p
            for key, item in value.items()
            for p in (
                conforms(item, fields[key], f"{where}.{key}", types, required)
                if key in fields
                else [f"{where}.{key}: no such field in {kind}"]
            )
        ]
    assert isinstance(kind, type)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        return [f"{where}: expected {kind.__name__}, got {value!r}"]
    return []


CA_HASH = "sha256:" + "0123456789abcdef" * 4


def init_documents(runs_workloads: bool) -> dict[str, dict]:
    spec = InitSpec(
        node=node_registration("kata-mesh-dev-cp-0", "10.10.0.2", runs_workloads, control_plane=True),
        endpoint=LOAD_BALANCER,
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
    # kubeadm makes the token; the config only names it (for the init step, which deletes it) and
    # bounds its life should the deletion fail.
    assert init["bootstrapTokens"] == [{"description": INIT_TOKEN_DESCRIPTION, "ttl": "1h0m0s"}]
    assert cluster["kubernetesVersion"] == "v1.36.4"
    assert cluster["networking"] == {"podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/12"}
    # The load balancer's address is the endpoint and a SAN; each API server's own address is a
    # SAN kubeadm adds by itself (its advertise address).
    assert cluster["apiServer"]["certSANs"] == [LOAD_BALANCER]
    assert cluster["controlPlaneEndpoint"] == f"{LOAD_BALANCER}:6443"
    assert conforms(init, "InitConfiguration", "InitConfiguration") == []
    assert conforms(cluster, "ClusterConfiguration", "ClusterConfiguration") == []
    assert "certificateKey" not in init, "the key never travels in the rendered config"
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
            endpoint="203.0.113.1",
            kubernetes_version="1.36.4",
            pod_cidr="10.244.0.0/16",
            service_cidr="10.96.0.0/12",
        )
    )
    assert "ignorePreflightErrors" not in rendered
    assert "container-runtime" not in rendered.replace("containerRuntimeEndpoint", "")
    assert "v1beta3" not in rendered


def extra_args(component: dict) -> dict[str, str]:
    names = [a["name"] for a in component["extraArgs"]]
    assert len(names) == len(set(names)), f"a flag given twice: {names}"
    return {a["name"]: a["value"] for a in component["extraArgs"]}


def test_the_api_server_encrypts_secrets_audits_and_serves_no_profiles():
    cluster = init_documents(runs_workloads=False)["ClusterConfiguration"]
    api = cluster["apiServer"]
    assert extra_args(api) == {
        "encryption-provider-config": "/etc/kubernetes/encryption/config.yaml",
        "audit-policy-file": "/etc/kubernetes/audit/policy.yaml",
        "audit-log-path": "/var/log/kubernetes/audit/audit.log",
        "audit-log-maxage": "30",
        "audit-log-maxbackup": "10",
        "audit-log-maxsize": "100",
        "profiling": "false",
    }
    # Each file the flags name is inside a mount; the policy and the key read-only, the log writable.
    mounts = {m["hostPath"]: m for m in api["extraVolumes"]}
    assert mounts == {
        "/etc/kubernetes/encryption": {
            "name": "encryption-config",
            "hostPath": "/etc/kubernetes/encryption",
            "mountPath": "/etc/kubernetes/encryption",
            "readOnly": True,
            "pathType": "Directory",
        },
        "/etc/kubernetes/audit": {
            "name": "audit-policy",
            "hostPath": "/etc/kubernetes/audit",
            "mountPath": "/etc/kubernetes/audit",
            "readOnly": True,
            "pathType": "Directory",
        },
        "/var/log/kubernetes/audit": {
            "name": "audit-log",
            "hostPath": "/var/log/kubernetes/audit",
            "mountPath": "/var/log/kubernetes/audit",
            "readOnly": False,
            "pathType": "DirectoryOrCreate",
        },
    }
    for flag in ("encryption-provider-config", "audit-policy-file", "audit-log-path"):
        path = extra_args(api)[flag]
        [mount] = [m for m in api["extraVolumes"] if path.startswith(m["mountPath"] + "/")]
        assert mount["readOnly"] is (flag != "audit-log-path"), flag
    assert {m["pathType"] for m in api["extraVolumes"]} <= HOST_PATH_TYPES
    # kubeadm's own volumes on the API server: a clash would replace one of them.
    kubeadm_volumes = {
        "k8s-certs",
        "ca-certs",
        "etc-ca-certificates",
        "etc-pki",
        "usr-local-share-ca-certificates",
        "usr-share-ca-certificates",
    }
    assert not {m["name"] for m in api["extraVolumes"]} & kubeadm_volumes


def test_profiling_is_off_on_every_control_plane_component():
    cluster = init_documents(runs_workloads=False)["ClusterConfiguration"]
    for component in ("apiServer", "controllerManager", "scheduler"):
        assert extra_args(cluster[component])["profiling"] == "false", component
    assert cluster["controllerManager"] == {"extraArgs": [{"name": "profiling", "value": "false"}]}
    assert cluster["scheduler"] == {"extraArgs": [{"name": "profiling", "value": "false"}]}


def test_the_field_check_catches_v1beta3_style_extra_args_and_a_mount_without_a_path():
    """v1beta3 took extraArgs as a map and a number stays a number in YAML: v1beta4 takes
    neither."""
    bad = {
        "apiServer": {
            "extraArgs": {"profiling": "false"},
            "extraVolumes": [
                {"name": "audit-log", "mountPath": "/var/log/kubernetes/audit", "readonly": True}
            ],
        },
        "scheduler": {"extraArgs": [{"name": "audit-log-maxage", "value": 30}]},
    }
    assert conforms(bad, "ClusterConfiguration", "C") == [
        "C.apiServer.extraArgs: expected a list",
        "C.apiServer.extraVolumes[0].hostPath: required in HostPathMount",
        "C.apiServer.extraVolumes[0].readonly: no such field in HostPathMount",
        "C.scheduler.extraArgs[0].value: expected str, got 30",
    ]


def test_every_type_the_table_names_is_in_the_table():
    named = {
        t
        for fields in V1BETA4.values()
        for kind in fields.values()
        for t in ([kind[0]] if isinstance(kind, list) else [kind])
        if isinstance(t, str)
    }
    assert named <= set(V1BETA4), named - set(V1BETA4)


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


def test_a_control_plane_joins_with_its_own_api_endpoint_and_the_certificate_key():
    node = node_registration("kata-mesh-prod-cp-1", "10.30.0.5", False, control_plane=True)
    join = JoinCommand(f"{LOAD_BALANCER}:6443", TOKEN, CA_HASH)
    [doc] = list(yaml.safe_load_all(render_join_config(node, join, certificate_key=CERTIFICATE_KEY)))
    assert conforms(doc, "JoinConfiguration", "JoinConfiguration") == []
    assert doc["controlPlane"] == {
        "localAPIEndpoint": {"advertiseAddress": "10.30.0.5", "bindPort": 6443},
        "certificateKey": CERTIFICATE_KEY,
    }
    # It discovers the cluster through the load balancer, like a worker.
    assert doc["discovery"]["bootstrapToken"]["apiServerEndpoint"] == f"{LOAD_BALANCER}:6443"
    # A control plane keeps kubeadm's NoSchedule taint (taints unset) when workers exist.
    assert "taints" not in doc["nodeRegistration"]


def test_a_worker_join_config_has_no_control_plane_section_and_conforms():
    node = node_registration("kata-mesh-dev-worker-0", "10.10.0.3", True, control_plane=False)
    [doc] = list(
        yaml.safe_load_all(render_join_config(node, JoinCommand(f"{LOAD_BALANCER}:6443", TOKEN, CA_HASH)))
    )
    assert conforms(doc, "JoinConfiguration", "JoinConfiguration") == []
    assert "controlPlane" not in doc


def test_the_field_check_catches_a_misspelt_or_mistyped_field():
    bad = {
        "kind": "JoinConfiguration",
        "controlPlane": {"certificatekey": "x", "localAPIEndpoint": {"bindPort": "6443"}},
    }
    assert conforms(bad, "JoinConfiguration", "J") == [
        "J.discovery: required in JoinConfiguration",
        "J.controlPlane.certificatekey: no such field in JoinControlPlane",
        "J.controlPlane.localAPIEndpoint.bindPort: expected int, got '6443'",
    ]


@pytest.mark.parametrize("key", ["", "abc", CERTIFICATE_KEY.upper(), CERTIFICATE_KEY + "00"])
def test_a_malformed_certificate_key_is_refused(key):
    node = node_registration("n", "10.0.0.5", False, control_plane=True)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        render_join_config(node, JoinCommand("203.0.113.1:6443", TOKEN, CA_HASH), certificate_key=key)


def test_kubeconfig_points_at_the_load_balancer():
    config = yaml.safe_load(external_kubeconfig(MOCK_ADMIN_CONF, "203.0.113.10"))
    assert [c["cluster"]["server"] for c in config["clusters"]] == ["https://203.0.113.10:6443"]
    assert config["users"] == yaml.safe_load(MOCK_ADMIN_CONF)["users"]
    with pytest.raises(ValueError, match="no clusters"):
        external_kubeconfig("", "203.0.113.10")
