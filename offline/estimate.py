"""How long a `pulumi up` takes, estimated from the resource graph alone (issue 15).

The model: each resource costs a fixed number of seconds (the tables below, by resource type, and
for a remote command by the node script it runs); a resource starts once everything it waits for
is done (Graph.waits_for), so an `up` takes as long as the heaviest chain of waits, and the
estimate is that chain's sum. The same tables apply to every design the program can take: the
estimate moves only when the graph does (fewer steps, steps off the chain, a baked node image).

Two figures for a stack, from the program run as `pulumi preview` runs it (offline.plan's mocks):
- the first deploy: every resource created, from a project where the node image exists;
- one more worker: a `pulumi up` from the stack as it is to the same stack with workerCount + 1.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pulumi

from components.node_provisioning import SCRIPTS_DIR
from offline.engine import (
    PROJECT,
    SECRET_CONFIG_KEYS,
    SECRET_SIG,
    SECRET_VALUE,
    UNKNOWN,
    ProgramRun,
    RecordingMonitor,
    Registration,
    run_program,
)
from offline.plan import COMMAND_TYPE, Graph, PlanMocks, plan_config, script_of

INSTANCE_TYPE = "gcp:compute/instance:Instance"
RELEASE_TYPE = "kubernetes:helm.sh/v3:Release"
# A node boots from the baked image when its boot disk's image is named so (images/ builds it).
BAKED_IMAGE_MARKER = "kata-mesh-node-"
WORKER_COUNT_KEY = f"{PROJECT}:workerCount"

# --- the cost table (seconds to create) ---------------------------------------------------------

# GCE resources by type token; any other gcp type costs OTHER_GCP_SECONDS.
GCP_SECONDS: dict[str, float] = {
    # A VPC network: a global operation, the slowest of the network's own parts.
    "gcp:compute/network:Network": 25,
    # A regional subnet in it.
    "gcp:compute/subnetwork:Subnetwork": 15,
    # A firewall rule: a global operation, quick.
    "gcp:compute/firewall:Firewall": 10,
    # A static external address, regional: reserved in a few seconds.
    "gcp:compute/address:Address": 4,
    # The global kind (none today), as quick.
    "gcp:compute/globalAddress:GlobalAddress": 4,
    # A VM: instances.insert until RUNNING (not until it boots: 00-wait-ready waits for that).
    "gcp:compute/instance:Instance": 35,
    # A Cloud Router (for Cloud NAT).
    "gcp:compute/router:Router": 10,
    # Cloud NAT on the router: the router is updated, which takes a while.
    "gcp:compute/routerNat:RouterNat": 20,
    # A service account: IAM is quick, then eventually consistent.
    "gcp:serviceaccount/account:Account": 5,
    # A bucket: one call.
    "gcp:storage/bucket:Bucket": 3,
    # An unmanaged instance group (the API load balancer's backends in one zone).
    "gcp:compute/instanceGroup:InstanceGroup": 8,
    # Health checks, regional or global: one operation each.
    "gcp:compute/healthCheck:HealthCheck": 8,
    "gcp:compute/regionHealthCheck:RegionHealthCheck": 8,
    # The internal/external passthrough load balancer's backend service.
    "gcp:compute/regionBackendService:RegionBackendService": 25,
    # The load balancer's frontend: programmed into the network, slow-ish.
    "gcp:compute/forwardingRule:ForwardingRule": 20,
    # A disk snapshot: copies the disk's blocks.
    "gcp:compute/snapshot:Snapshot": 60,
    # An image from a disk: copies and registers it.
    "gcp:compute/image:Image": 90,
}
# Any IAM member binding (project, bucket, service account...): a read-modify-write of a policy.
IAM_MEMBER_SECONDS = 5
# Any other GCE/GCP resource: one API operation of the usual length.
OTHER_GCP_SECONDS = 10

# A Kubernetes object Pulumi does not wait on beyond the API server's answer.
KUBERNETES_OBJECT_SECONDS = 2
# A Deployment: Pulumi waits for its pods to be ready: image pulls inside a Kata VM plus a sidecar.
DEPLOYMENT_SECONDS = 60
# The other kinds Pulumi waits on until their pods run (or the Job completes).
WORKLOAD_SECONDS: dict[str, float] = {
    # Each waits for its pods as a Deployment does, with smaller images in practice.
    "kubernetes:apps/v1:StatefulSet": 30,
    "kubernetes:apps/v1:DaemonSet": 30,
    "kubernetes:apps/v1:ReplicaSet": 30,
    "kubernetes:core/v1:Pod": 30,
    "kubernetes:batch/v1:Job": 30,
}
# Helm releases by chart: Pulumi waits for the chart's workloads.
RELEASE_SECONDS: dict[str, float] = {
    # One DaemonSet, a small image on every node.
    "flannel": 25,
    # Istio's CRDs and cluster roles only: no pods.
    "base": 10,
    # istiod's Deployment and its webhooks: a large image, then readiness.
    "istiod": 45,
    # The ingress gateway's Deployment (the proxy image).
    "gateway": 30,
}
# A release of any other chart: a few workloads to wait for.
OTHER_RELEASE_SECONDS = 30
# Packages whose resources cost nothing: local computation (keys, random bytes) or no API call.
FREE_PACKAGES = ("pulumi", "tls", "random")

# Remote commands by the node script they run (scripts/node, without .sh): the script's own time.
SCRIPT_SECONDS: dict[str, float] = {
    # The VM boots, sshd answers, cloud-init finishes.
    "00-wait-ready": 45,
    # apt update and the packages.
    "10-prerequisites": 30,
    # A baked node's check of its image (no downloads).
    "12-node-image": 8,
    # nftables rules and their unit.
    "15-metadata-block": 4,
    # Three downloads from GitHub (containerd, runc, CNI plugins), unpacked, started.
    "20-containerd": 25,
    # The large zstd tarball, unpacked and checked.
    "30-kata": 55,
    # apt source, key, kubeadm/kubelet/kubectl packages.
    "40-kubernetes": 45,
    # The Kubernetes images pulled into containerd (at image build).
    "42-pull-images": 40,
    # The image build's last step: cleanup before the disk becomes an image.
    "99-seal-image": 10,
    # Looks for a backup; on a new stack there is none, so nothing to restore.
    "45-restore-control-plane": 5,
    # etcdctl and etcdutl from the etcd image (PULL_SECONDS of it a pull).
    "47-etcd-tools": 20,
    # kubeadm init: images (PULL_SECONDS of it), certificates, static pods, the API server up.
    "50-kubeadm-init": 75,
    # One kubectl apply of the control plane's policy.
    "55-control-plane-policy": 3,
    # kubeadm token create.
    "60-join-token": 3,
    # The same, on a surviving control plane (prints nothing on a new stack).
    "62-rejoin-token": 3,
    # etcdctl member list (nothing to forget on a first join).
    "65-forget-etcd-member": 3,
    # kubeadm join: images (PULL_SECONDS of it), the kubelet's TLS bootstrap.
    "70-kubeadm-join": 35,
    # A script, a service and a timer written, the timer enabled.
    "75-install-timer": 3,
    # Every node Ready: the pod network's pods start on each.
    "90-wait-nodes-ready": 20,
    # A few requests to the API.
    "93-api-probe": 5,
    # etcd and API facts from each control plane.
    "94-ha-facts": 5,
    # A Kata pod started and looked at on the node.
    "95-kata-evidence": 10,
    # Test pods started in the mesh, calls between them, the facts gathered.
    "96-mesh-facts": 40,
    # The facts read and judged.
    "97-verdict": 3,
    # Rollout scripts, on update only: the node's rollout marker read.
    "83-rollout-check": 3,
    # Drain a node (evictions wait for pods to leave).
    "84-rollout-drain": 60,
    # kubeadm upgrade node and the kubelet restarted at the new version.
    "88-rollout-kubernetes": 60,
    # Uncordon and wait for the node's pods to come back.
    "89-rollout-release": 30,
    # Every meshed Deployment restarted and waited for.
    "98-restart-meshed-workloads": 60,
}
# Scripts that run only when their command is deleted: deletions cost nothing in this model.
DELETE_ONLY_SCRIPTS = frozenset({"80-remove-node", "85-remove-control-plane"})
# Of a script's seconds, the pull of Kubernetes images from registry.k8s.io: a baked node image
# holds them (`kubeadm config images pull` at build), so a node booted from it skips the pull.
PULL_SECONDS: dict[str, float] = {
    # The etcd image, for its etcdctl and etcdutl.
    "47-etcd-tools": 10,
    # The control plane's images (API server, controller manager, scheduler, etcd, CoreDNS, proxy).
    "50-kubeadm-init": 30,
    # kube-proxy and pause on a joining node.
    "70-kubeadm-join": 10,
}
# A command that runs no node script (`cat admin.conf`, writing a file from stdin): one SSH round.
NO_SCRIPT_SECONDS = 3
# An update that runs nothing (`:`): the SSH connection alone.
TRIVIAL_UPDATE_SECONDS = 2
TRIVIAL_COMMANDS = frozenset({"", ":", "true"})
# What a command runs when it runs a script the plan cannot name (stdin and arguments unknown).
UNNAMED_SCRIPT = "a script the plan cannot name"
# A node script missing from SCRIPT_SECONDS: counted as an average step, and named in the estimate.
UNPRICED_SCRIPT_SECONDS = 30


# --- the estimate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    urn: str
    name: str
    type: str
    seconds: float
    # Why it costs that: the script, "unchanged", "replaced", ...
    why: str = ""


@dataclass
class Estimate:
    """How long an `up` takes: its heaviest chain of waits, step by step."""

    title: str
    steps: list[Step]
    # Scripts the table has no figure for (each counted as UNPRICED_SCRIPT_SECONDS).
    unpriced: list[str] = field(default_factory=list)
    # The graph the chain is in (after the change, for a change).
    graph: Graph | None = field(default=None, repr=False, compare=False)

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)

    @property
    def minutes(self) -> float:
        return self.seconds / 60

    @property
    def path(self) -> list[tuple[str, float]]:
        """The weighted critical path as (resource name, seconds), in order."""
        return [(step.name, step.seconds) for step in self.steps]

    def render(self) -> str:
        lines = [f"{self.title}: {self.minutes:.1f} min ({self.seconds:.0f} s), the longest chain of waits:"]
        elapsed = 0.0
        for step in self.steps:
            elapsed += step.seconds
            if step.seconds:
                why = f" ({step.why})" if step.why else ""
                lines.append(f"  {step.seconds:4.0f} s  to {_clock(elapsed)}  {step.name}{why}")
        if not any(step.seconds for step in self.steps):
            lines.append("  (nothing to wait for)")
        for script in self.unpriced:
            lines.append(
                f"  note: {script} has no figure in the table; counted as {UNPRICED_SCRIPT_SECONDS} s"
            )
        return "\n".join(lines) + "\n"


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


# --- what a resource costs ----------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A wire-format value with its secret wrapper taken off (the plan reads only addresses and
    which script runs, never a secret's content into any output)."""
    if isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_VALUE:
        return value.get("value")
    return value


@functools.cache
def _script_arguments() -> dict[str, frozenset[str]]:
    """Each node script's arguments (`arg_NAME=` declarations; km_parse_args refuses others)."""
    declared = {}
    for path in sorted(SCRIPTS_DIR.glob("*.sh")):
        if path.name == "lib.sh":
            continue
        names = re.findall(r"^arg_([a-z0-9_]+)=", path.read_text(), flags=re.MULTILINE)
        declared[path.stem] = frozenset(n.replace("_", "-") for n in names)
    return declared


def script_by_arguments(command_line: str) -> str | None:
    """The one node script that takes every --name on a `bash -s --` command line: the script of a
    command whose stdin a preview cannot know (a join's, which carries the token)."""
    try:
        words = shlex.split(command_line)
    except ValueError:
        return None
    names = {w[2:] for w in words if w.startswith("--") and len(w) > 2}
    if not names:
        return None
    fits = [script for script, declared in _script_arguments().items() if names <= declared]
    return fits[0] if len(fits) == 1 else None


def _script_by_path(command_line: str) -> str | None:
    """The node script a command runs from a file it was installed to (`bash /path/NAME.sh`):
    NAME is the script's name without its number (components/mesh_rollout.py)."""
    try:
        words = shlex.split(command_line)
    except ValueError:
        return None
    if "bash" not in words:
        return None
    after = words[words.index("bash") + 1 :]
    if not after or after[0].startswith("-"):
        return None
    installed = PurePosixPath(after[0]).stem
    matches = [s for s in _script_arguments() if s.split("-", 1)[-1] == installed]
    return matches[0] if len(matches) == 1 else None


def _runs_stdin(command_line: str) -> bool:
    return re.search(r"\bbash -s\b", command_line) is not None


def command_script(command_line: Any, stdin: Any) -> str | None:
    """The node script (no .sh) a command line runs: from stdin when it runs stdin (`bash -s`),
    else from the file it runs; None when it runs none, UNNAMED_SCRIPT when the plan cannot say."""
    if command_line == UNKNOWN:
        # Not known in a preview: the command runs what it sends, if it sends a script.
        named = script_of(stdin)
        return named.removesuffix(".sh") if named else UNNAMED_SCRIPT
    if not isinstance(command_line, str):
        return None
    if _runs_stdin(command_line):
        named = script_of(stdin)
        if named is not None:
            return named.removesuffix(".sh")
        return script_by_arguments(command_line) or UNNAMED_SCRIPT
    return _script_by_path(command_line)


class Pricer:
    """What each resource of one program run costs, to create or to update."""

    def __init__(self, program: ProgramRun) -> None:
        self.program = program
        self.graph = Graph(program)
        self.unpriced: set[str] = set()
        # Every address an instance answers at -> that instance.
        self.instance_by_address: dict[str, Registration] = {}
        for r in program.of_type(INSTANCE_TYPE):
            state = {**r.inputs, **program.states.get(r.urn, {})}
            for nic in state.get("networkInterfaces") or []:
                for address in [
                    nic.get("networkIp"),
                    *(a.get("natIp") for a in nic.get("accessConfigs") or []),
                ]:
                    if isinstance(address, str) and address and address != UNKNOWN:
                        self.instance_by_address[address] = r

    def node_of(self, command: Registration) -> Registration | None:
        """The instance a remote command runs on: the one at its connection's host."""
        connection = _plain(command.raw_inputs.get("connection"))
        host = connection.get("host") if isinstance(connection, dict) else None
        return self.instance_by_address.get(host) if isinstance(host, str) else None

    def baked(self, instance: Registration | None) -> bool:
        """Whether an instance boots from the baked node image."""
        if instance is None:
            return False
        for source in (instance.inputs, self.program.states.get(instance.urn, {})):
            disk = source.get("bootDisk") or {}
            image = (disk.get("initializeParams") or {}).get("image")
            if isinstance(image, str) and BAKED_IMAGE_MARKER in image:
                return True
        # An image the program makes itself, named so, that the instance waits for.
        return any(
            self.graph.by_urn[u].type == "gcp:compute/image:Image"
            and BAKED_IMAGE_MARKER in str(self.graph.by_urn[u].inputs.get("name", self.graph.by_urn[u].name))
            for u in self.graph.ancestors(instance.urn)
        )

    def _script_seconds(self, script: str | None, command: Registration) -> tuple[float, str]:
        if script is None:
            return NO_SCRIPT_SECONDS, "no script"
        if script == UNNAMED_SCRIPT:
            self.unpriced.add(f"{command.name}'s script")
            return UNPRICED_SCRIPT_SECONDS, script
        if script not in SCRIPT_SECONDS:
            self.unpriced.add(script)
            return UNPRICED_SCRIPT_SECONDS, script
        seconds = SCRIPT_SECONDS[script]
        if script in PULL_SECONDS and self.baked(self.node_of(command)):
            return seconds - PULL_SECONDS[script], f"{script}, images baked in"
        return seconds, script

    def create(self, r: Registration) -> tuple[float, str]:
        """Seconds to create the resource, and why."""
        if r.type == COMMAND_TYPE:
            create = _plain(r.raw_inputs.get("create"))
            if create is None or create == "":
                return 0, "nothing on create"
            return self._script_seconds(command_script(create, r.raw_inputs.get("stdin")), r)
        package = r.type.split(":", 1)[0]
        if package in FREE_PACKAGES or not r.custom:
            return 0, ""
        if package == "gcp":
            if r.type in GCP_SECONDS:
                return GCP_SECONDS[r.type], ""
            if r.type.rsplit(":", 1)[-1].lower().endswith("iammember"):
                return IAM_MEMBER_SECONDS, ""
            return OTHER_GCP_SECONDS, ""
        if r.type == RELEASE_TYPE:
            chart = str(_plain(r.inputs.get("chart")) or "")
            chart = chart.rstrip("/").rsplit("/", 1)[-1]
            return RELEASE_SECONDS.get(chart, OTHER_RELEASE_SECONDS), f"chart {chart}"
        if r.type == "kubernetes:apps/v1:Deployment":
            return DEPLOYMENT_SECONDS, "waits for its pods"
        if r.type in WORKLOAD_SECONDS:
            return WORKLOAD_SECONDS[r.type], "waits for its pods"
        if package == "kubernetes":
            return KUBERNETES_OBJECT_SECONDS, ""
        return 0, ""

    def update(self, r: Registration) -> tuple[float, str]:
        """Seconds to update the resource in place, and why: a command runs its `update` (or its
        `create` when it has none, as pulumi-command does); anything else as long as a create."""
        if r.type != COMMAND_TYPE:
            return self.create(r)
        if "update" not in r.raw_inputs:
            seconds, why = self.create(r)
            return seconds, f"updated by its create: {why}" if why else "updated by its create"
        update = _plain(r.raw_inputs.get("update"))
        if isinstance(update, str) and update.strip() in TRIVIAL_COMMANDS:
            return TRIVIAL_UPDATE_SECONDS, "update runs nothing"
        seconds, why = self._script_seconds(command_script(update, r.raw_inputs.get("stdin")), r)
        return seconds, f"update: {why}"


def _holds_unknown(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_unknown(v) for v in value)
    return value == UNKNOWN


def changed_inputs(
    before: Registration, after: Registration, made: Collection[str] | None = None
) -> set[str]:
    """The inputs (top-level properties) Pulumi sees change, ignoreChanges aside. A value known
    only after deploy (in a preview) is taken as changed when a resource it is made from (its
    property dependencies) is made anew in this `up` (`made`: it may come from that resource's new
    outputs), else as unchanged; None takes every such value as changed."""
    ignored = {path.split(".", 1)[0].split("[", 1)[0] for path in after.ignore_changes}
    keys = (set(before.raw_inputs) | set(after.raw_inputs)) - ignored

    def unsettled(key: str) -> bool:
        if not _holds_unknown(after.raw_inputs.get(key)):
            return False
        return made is None or any(u in made for u in after.property_dependencies.get(key, ()))

    return {key for key in keys if before.raw_inputs.get(key) != after.raw_inputs.get(key) or unsettled(key)}


def _heaviest_chain(graph: Graph, costs: Mapping[str, tuple[float, str]]) -> list[Step]:
    """The chain of waits with the largest sum: each resource starts when all it waits for end."""
    finish: dict[str, tuple[float, list[str]]] = {}
    for r in graph.resources:  # ordered by dependency: what r waits for is done already
        before = max((finish[u] for u in graph.waits_for[r.urn]), key=lambda f: f[0], default=(0.0, []))
        finish[r.urn] = (before[0] + costs[r.urn][0], [*before[1], r.urn])
    # Of chains that end together, the one that goes furthest (the last resource in order): a
    # step that costs nothing after the heaviest one still ends the `up` (the proof's verdict).
    _, chain = max(reversed(finish.values()), key=lambda f: f[0], default=(0.0, []))
    return [Step(u, graph.by_urn[u].name, graph.by_urn[u].type, costs[u][0], costs[u][1]) for u in chain]


def estimate_deploy(graph: Graph, title: str = "First deploy") -> Estimate:
    """Every resource created: the heaviest chain of waits."""
    pricer = Pricer(graph.program)
    costs = {r.urn: pricer.create(r) for r in graph.resources}
    return Estimate(title, _heaviest_chain(graph, costs), sorted(pricer.unpriced), graph)


def estimate_change(before: ProgramRun, after: ProgramRun, title: str = "Change") -> Estimate:
    """A `pulumi up` from `before` to `after`, on the after graph: an unchanged resource costs
    nothing, a new one its create, a changed command a replacement (triggers changed) or its
    update, any other changed resource its create; deletions nothing (changed_inputs says what
    changes)."""
    pricer = Pricer(after)
    graph = pricer.graph
    old = {r.urn: r for r in before.registrations}
    costs: dict[str, tuple[float, str]] = {}
    # New or replaced: new outputs (an id, a command's stdout), which an unknown input may hold.
    made: set[str] = set()
    for r in graph.resources:  # ordered by dependency: what r waits for is decided already
        previous = old.get(r.urn)
        changed = set() if previous is None else changed_inputs(previous, r, made)
        if previous is None:
            seconds, why = pricer.create(r)
            costs[r.urn] = (seconds, f"new: {why}" if why else "new")
            made.add(r.urn)
        elif not changed:
            costs[r.urn] = (0, "unchanged")
        elif r.type == COMMAND_TYPE and "triggers" in changed:
            seconds, why = pricer.create(r)
            costs[r.urn] = (seconds, f"replaced: {why}" if why else "replaced")
            made.add(r.urn)
        else:
            costs[r.urn] = pricer.update(r)
    return Estimate(title, _heaviest_chain(graph, costs), sorted(pricer.unpriced), graph)


# --- the two figures for a stack ----------------------------------------------------------------


def preview_config(stack: str, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The config a plan runs the stack with (offline.plan.plan_config), then the overrides."""
    config, _ = plan_config(stack)
    return {**config, **(overrides or {})}


def preview_run(stack: str, overrides: Mapping[str, str] | None = None) -> ProgramRun:
    """The program run for a stack as `pulumi preview` runs it, with the plan's mocks, and the
    config the plan gives it plus `overrides` (what `pulumi config set` would add)."""
    config = preview_config(stack, overrides)
    return run_program(stack, True, config, RecordingMonitor(PlanMocks(config)))


def first_deploy(stack: str, program: ProgramRun | None = None) -> Estimate:
    """The stack's first deploy (from the plan's run of it, when given)."""
    return estimate_deploy(Graph(program or preview_run(stack)), f"First deploy of {stack}")


def one_more_worker(stack: str, program: ProgramRun | None = None) -> Estimate:
    """`pulumi up` with workerCount + 1 against the stack as it is (the plan's run of it, when
    given). The engine's config is the stack's again afterwards."""
    config = preview_config(stack)
    before = program or preview_run(stack)
    workers = int(config[WORKER_COUNT_KEY])
    after = preview_run(stack, {WORKER_COUNT_KEY: str(workers + 1)})
    pulumi.runtime.set_all_config(dict(config), secret_keys=list(SECRET_CONFIG_KEYS))
    return estimate_change(before, after, f"One more worker in {stack} ({workers} -> {workers + 1})")


def estimates_markdown(stack: str, estimates: list[Estimate]) -> str:
    """estimate.md: the model in a line, then each estimate with its chain."""
    lines = [
        f"# Time estimates for stack `{stack}`",
        "",
        "A fixed cost per resource (offline/estimate.py), summed along the heaviest chain of waits",
        "of the resource graph; the same table for every design. Steps that cost nothing are left out.",
        "",
    ]
    for estimate in estimates:
        text = estimate.render().splitlines()
        lines += [f"## {text[0]}", "", "```", *text[1:], "```", ""]
    return "\n".join(lines)


def plan_estimates(stack: str, program: ProgramRun) -> tuple[list[Estimate], list[str]]:
    """The plan's two figures from its run of the stack, and a note for one that cannot be made
    (workerCount + 1 refused by the settings, say)."""
    estimates = [first_deploy(stack, program)]
    notes = []
    try:
        estimates.append(one_more_worker(stack, program))
    except ValueError as err:  # the program's SettingsError (or another refusal of the settings)
        notes.append(f"one more worker not estimated: {err}")
        config = preview_config(stack)
        pulumi.runtime.set_all_config(dict(config), secret_keys=list(SECRET_CONFIG_KEYS))
    return estimates, notes
