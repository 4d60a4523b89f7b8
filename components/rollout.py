"""Changes to live nodes, one node at a time: a new Kubernetes version (kubeadm's upgrade order),
new containerd or Kata pins, or their configs.

A new VM gets everything from its provisioning steps (in parallel with the others); the rolled
ones (containerd, kata, kubernetes) run once per VM and record the rollout the node is at. On a
live cluster a change of what they install is rolled here instead: the nodes in order, control
planes first (cp-0 runs `kubeadm upgrade apply`), then the workers; for each node a check on the
node (83), a drain from cp-0 (84, which also refuses a version kubeadm cannot upgrade to), the
containerd and Kata steps again, Kubernetes (88), and a release from cp-0 once the node is Ready
(89). Each node waits for the one before it: at most one node is out of service at any moment.

Every step here runs nothing when it is created (no `create` command): a first deploy is not
slowed down, and its nodes are current already. They run (their `update` command) when their
arguments change, in this order; a node that needs nothing is neither drained nor touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components.node_provisioning import (
    CNI_TARBALL,
    ROLLOUT_MARKER,
    NodeStep,
    kubernetes_apt_repository,
    rollout_of,
    ssh_connection,
)
from components.nodes import NodeVm
from components.versions import CNI_PLUGINS

# How long a drain may take (evictions wait for PodDisruptionBudgets) and a node to be Ready again.
DRAIN_TIMEOUT_SECONDS = 600
READY_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class RolloutArgs:
    # Control planes first (cp-0 first of all), then the workers: the order of the rollout.
    control_planes: Sequence[NodeVm]
    workers: Sequence[NodeVm]
    # The provisioning steps of the stack (node_steps): the rolled ones run again in a node's turn.
    steps: Sequence[NodeStep]
    kubernetes_version: str
    # What the rollout waits for: the cluster ready (on a first deploy nothing here runs anyway).
    after: Sequence[pulumi.Resource]


def check_step(rollout: str) -> NodeStep:
    return NodeStep(
        "rollout-check", "83-rollout-check.sh", (("rollout", rollout), ("marker", ROLLOUT_MARKER))
    )


def drain_step(node_name: str, kubernetes_version: str, rollout: str) -> NodeStep:
    # The rollout is an argument of each step: every new one runs the node's turn again, whatever
    # it changes (a Kata pin leaves the version and the check's answer as they were).
    return NodeStep(
        "rollout-drain",
        "84-rollout-drain.sh",
        (
            ("node-name", node_name),
            ("kubernetes-version", kubernetes_version),
            ("rollout", rollout),
            ("timeout-seconds", str(DRAIN_TIMEOUT_SECONDS)),
        ),
    )


def kubernetes_step(node_name: str, role: str, kubernetes_version: str, rollout: str) -> NodeStep:
    return NodeStep(
        "rollout-kubernetes",
        "88-rollout-kubernetes.sh",
        (
            ("node-name", node_name),
            ("role", role),
            ("kubernetes-version", kubernetes_version),
            ("apt-repository", kubernetes_apt_repository(kubernetes_version)),
            ("cni-tarball", CNI_TARBALL),
            ("cni-sha256", CNI_PLUGINS.sha256),
            ("rollout", rollout),
            ("marker", ROLLOUT_MARKER),
        ),
    )


def release_step(node_name: str, kubernetes_version: str, rollout: str) -> NodeStep:
    return NodeStep(
        "rollout-release",
        "89-rollout-release.sh",
        (
            ("node-name", node_name),
            ("kubernetes-version", kubernetes_version),
            ("rollout", rollout),
            ("timeout-seconds", str(READY_TIMEOUT_SECONDS)),
        ),
    )


def with_needed(step: NodeStep, needed: str) -> NodeStep:
    """The cp-0 step told what the node's check answered (needed or current)."""
    return NodeStep(step.name, step.script, (*step.args, ("needed", needed.strip())))


class NodeRollout(pulumi.ComponentResource):
    """The rollout's steps, node after node; `done` is the last one (the proof comes after it)."""

    done: pulumi.Resource

    def __init__(self, name: str, args: RolloutArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:rollout:NodeRollout", name, None, opts)
        rollout = rollout_of(args.steps)
        rolled_on_node = [step for step in args.steps if step.rolled and step.name != "kubernetes"]
        cp0_connection = ssh_connection(args.control_planes[0].ssh)
        previous: Sequence[pulumi.Resource] = args.after
        order = [*args.control_planes, *args.workers]
        for index, vm in enumerate(order):
            role = "first" if index == 0 else "control-plane" if vm in args.control_planes else "worker"
            node_connection = ssh_connection(vm.ssh)
            check = self._on_update(
                f"{vm.node_name}-rollout-check", check_step(rollout), node_connection, previous
            )
            needed = check.stdout
            drain = self._on_update(
                f"{vm.node_name}-rollout-drain",
                drain_step(vm.node_name, args.kubernetes_version, rollout),
                cp0_connection,
                [check],
                needed=needed,
            )
            last: pulumi.Resource = drain
            for step in rolled_on_node:
                last = self._on_update(f"{vm.node_name}-rollout-{step.name}", step, node_connection, [last])
            upgrade = self._on_update(
                f"{vm.node_name}-rollout-kubernetes",
                kubernetes_step(vm.node_name, role, args.kubernetes_version, rollout),
                node_connection,
                [last],
            )
            release = self._on_update(
                f"{vm.node_name}-rollout-release",
                release_step(vm.node_name, args.kubernetes_version, rollout),
                cp0_connection,
                [upgrade],
                needed=needed,
            )
            previous = [release]
        self.done = previous[0]
        self.register_outputs({})

    def _on_update(
        self,
        resource_name: str,
        step: NodeStep,
        connection: command.remote.ConnectionArgs,
        after: Sequence[pulumi.Resource],
        needed: pulumi.Output[str] | None = None,
    ) -> command.remote.Command:
        """A step that runs nothing when it is created and runs when its arguments or script
        change (pulumi-command's `update`), after `after`."""
        update: pulumi.Input[str] = (
            step.command_line
            if needed is None
            else needed.apply(lambda answer: with_needed(step, answer).command_line)
        )
        return command.remote.Command(
            resource_name,
            connection=connection,
            update=update,
            stdin=step.script_text,
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=list(after),
                custom_timeouts=pulumi.CustomTimeouts(update="30m"),
            ),
        )
