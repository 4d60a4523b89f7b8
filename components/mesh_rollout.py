"""After an Istio upgrade: the meshed apps' pods restarted onto the new sidecar.

Helm upgrades istiod when `istioVersion` changes (components/mesh.py), but a running pod keeps the
istio-proxy it was injected with until it is made again. So, on the first control plane,
scripts/node/98-restart-meshed-workloads.sh restarts every Deployment of the apps' namespaces
(`kubectl rollout restart`) and waits for each (`kubectl rollout status`), after the Istio
releases and the apps and before the proof, which then checks every sidecar against istiod.

The restart is a pulumi-command Command with no `create` and an `update`: it runs nothing when it is
created (a first deploy, whose pods are new anyway) and runs whenever its inputs change. Its inputs
are the update's command line (the Istio version, the namespaces, the timeout) and the SSH
connection (a rotated key or a new cp-0 runs it once too, which is harmless), never the script's
text: that would restart the apps whenever lib.sh changed. So the script is not sent on stdin but
installed on the node by a step of its own (`script`, a plain file write, run again when the
script or cp-0's VM changes) and run from there. `triggers` could not carry the version: the SDK
makes a trigger's change a replacement, which runs `create` (none here), not `update`.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components.node_provisioning import NodeStep, ssh_connection
from components.nodes import NodeVm

RESTART_SCRIPT = "98-restart-meshed-workloads.sh"
# Where the first control plane keeps it (not executable: bash runs it). An operator may run it by
# hand: sudo bash INSTALLED_SCRIPT --namespaces ... --istio-version ... --timeout-seconds ...
INSTALLED_SCRIPT = "/usr/local/lib/kata-mesh/restart-meshed-workloads.sh"
# Each Deployment's `rollout status` waits this long at most.
RESTART_TIMEOUT_SECONDS = 600


def restart_step(namespaces: Sequence[str], istio_version: str) -> NodeStep:
    """98-restart-meshed-workloads.sh: every Deployment of these namespaces restarted for this
    Istio version, each waited for within RESTART_TIMEOUT_SECONDS."""
    return NodeStep(
        "restart-meshed-workloads",
        RESTART_SCRIPT,
        (
            ("namespaces", " ".join(namespaces)),
            ("istio-version", istio_version),
            ("timeout-seconds", str(RESTART_TIMEOUT_SECONDS)),
        ),
    )


def install_command(path: str = INSTALLED_SCRIPT) -> str:
    """Writes stdin (the step's script behind lib.sh, exactly as a step is sent) to path, owned
    by root; bash runs it (run_command)."""
    return f"sudo -n install -D -m 0644 /dev/fd/0 {shlex.quote(path)}"


def run_command(step: NodeStep, path: str = INSTALLED_SCRIPT) -> str:
    """The installed script run by bash with the step's arguments, as root."""
    return " ".join(["sudo -n bash", shlex.quote(path), *(f"--{k} {shlex.quote(v)}" for k, v in step.args)])


@dataclass(frozen=True)
class MeshRolloutArgs:
    # The first control plane: the restart runs there with admin.conf.
    control_plane: NodeVm
    # The Istio release installed (the istio_version setting): a new one restarts the apps.
    istio_version: str
    # Each meshed app with its namespace (components.proof.app_namespaces): every Deployment of
    # these namespaces restarts.
    apps: Mapping[str, str]
    # What the restart comes after: the Istio Helm releases and the apps.
    after: Sequence[pulumi.Resource]


class MeshRollout(pulumi.ComponentResource):
    """The restart of the meshed apps' Deployments when the Istio version changes (nothing on a
    first deploy), and the step that installs its script on the first control plane."""

    script: command.remote.Command
    restart: command.remote.Command

    def __init__(self, name: str, args: MeshRolloutArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:mesh_rollout:MeshRollout", name, None, opts)
        namespaces = list(dict.fromkeys(args.apps.values()))
        step = restart_step(namespaces, args.istio_version)
        text = step.script_text
        cp = args.control_plane
        connection = ssh_connection(cp.ssh)
        # Written again when the script changes (an update) or cp-0 is a new VM (a replacement).
        self.script = command.remote.Command(
            f"{name}-script",
            connection=connection,
            create=install_command(),
            update=install_command(),
            stdin=text,
            triggers=[hashlib.sha256(text.encode()).hexdigest(), cp.instance_id],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.after)),
        )
        self.restart = command.remote.Command(
            f"{name}-restart",
            connection=connection,
            # No create: nothing runs on a first deploy. The update runs when its command line
            # (the Istio version, the namespaces) changes.
            update=run_command(step),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.script, *args.after]),
        )
        self.register_outputs({"namespaces": namespaces, "istioVersion": args.istio_version})
