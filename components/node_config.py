"""Config files the nodes get, rendered by small pure functions that tests call directly."""

from __future__ import annotations

from typing import Any

import tomli_w

KATA_PREFIX = "/opt/kata"
KATA_CONFIG_PATH = f"{KATA_PREFIX}/share/defaults/kata-containers/configuration.toml"
KATA_DROPIN_NAME = "50-kata-mesh-nested.toml"
CONTAINERD_SOCKET = "unix:///run/containerd/containerd.sock"
# Nested virtualization makes the guest boot slower than Kata's defaults allow for (45 s agent dial,
# 60 s container creation); kubelet's runtime-request-timeout (2 min) caps creation anyway.
KATA_AGENT_DIAL_TIMEOUT_SECONDS = 90
KATA_CREATE_CONTAINER_TIMEOUT_SECONDS = 120
KATA_HANDLER = "kata"

# The CRI runtime plugin's id changed with containerd 2.0 (config schema version 3).
CRI_RUNTIME_PLUGIN = {1: "io.containerd.grpc.v1.cri", 2: "io.containerd.cri.v1.runtime"}
CONFIG_SCHEMA_VERSION = {1: 2, 2: 3}


def containerd_runtimes(kata_config_path: str = KATA_CONFIG_PATH) -> dict[str, Any]:
    """The two CRI runtimes, the same in both schemas: runc (default) and kata."""
    return {
        "runc": {
            "runtime_type": "io.containerd.runc.v2",
            "options": {"SystemdCgroup": True},
        },
        KATA_HANDLER: {
            # Resolves to containerd-shim-kata-v2 on containerd's PATH (/usr/local/bin link).
            "runtime_type": "io.containerd.kata.v2",
            "privileged_without_host_devices": True,
            # No pod annotation reaches Kata. kata-deploy passes "io.katacontainers.*", which lets
            # any pod override Kata's runtime section for its own sandbox (only hypervisor keys are
            # gated by Kata's enable_annotations): the very pods Kata is there to contain would
            # choose how. This project needs none: every Kata pod runs with the node's Kata config
            # (and its config.d drop-in); sizing comes from the pod's resources, not annotations.
            "pod_annotations": [],
            "options": {"ConfigPath": kata_config_path},
        },
    }


def render_containerd_config(containerd_major: int, kata_config_path: str = KATA_CONFIG_PATH) -> str:
    """containerd's config.toml for a 1.x or 2.x containerd, with runc as default and kata beside it."""
    if containerd_major not in CRI_RUNTIME_PLUGIN:
        raise ValueError(f"containerd {containerd_major}.x is not supported (1.x or 2.x)")
    plugin = CRI_RUNTIME_PLUGIN[containerd_major]
    document = {
        "version": CONFIG_SCHEMA_VERSION[containerd_major],
        "plugins": {
            plugin: {
                "containerd": {
                    "default_runtime_name": "runc",
                    "runtimes": containerd_runtimes(kata_config_path),
                }
            }
        },
    }
    return tomli_w.dumps(document)


def render_kata_dropin() -> str:
    """Kata config.d drop-in: only the keys nested virtualization needs changed."""
    return tomli_w.dumps(
        {
            "agent": {"kata": {"dial_timeout": KATA_AGENT_DIAL_TIMEOUT_SECONDS}},
            "runtime": {"create_container_timeout": KATA_CREATE_CONTAINER_TIMEOUT_SECONDS},
        }
    )


def render_containerd_unit() -> str:
    """containerd's systemd unit: upstream's containerd.service, for the release unpacked into
    /usr/local (containerd/containerd, containerd.service)."""
    return """[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target dbus.service local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
"""
