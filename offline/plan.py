"""What a stack would build, without a cloud account: the program under Pulumi's mock engine, as
`pulumi preview` would run it, written out for review (resources, graph, node steps and files,
Kubernetes objects, Helm releases rendered by helm)."""

from __future__ import annotations

import base64
import dataclasses
import functools
import ipaddress
import itertools
import json
import os
import shutil
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pulumi.runtime import mocks as pulumi_mocks

from components.node_provisioning import SCRIPTS_DIR, NodeStep
from components.settings import project_from_environment
from offline import charts
from offline.engine import (
    PROJECT,
    SECRET_CONFIG_KEYS,
    SECRET_SIG,
    SECRET_VALUE,
    UNKNOWN,
    ProgramRun,
    RecordingMonitor,
    Registration,
    as_manifest,
    command_args,
    config_string,
    node_images_listed,
    project_defaults,
    run_program,
    stack_file,
    stack_file_values,
)

if TYPE_CHECKING:
    from offline.estimate import Estimate

SECRET_SHOWN = "[secret]"
# In a folder the plan wrote: the next plan may replace that folder, and no other.
PLAN_MARKER = ".kata-mesh-plan"
UNKNOWN_SHOWN = "(known after deploy)"
COMMAND_TYPE = "command:remote:Command"
STACK_TYPE = "pulumi:pulumi:Stack"
# Documentation ranges (RFC 5737): clearly not real, and valid wherever an address must be.
PLACEHOLDER_ADMIN_CIDR = "198.51.100.0/24"
PLACEHOLDER_EXTERNAL_NET = ipaddress.ip_network("203.0.113.0/24")
# Past every node's number (at most 5 control planes and 99 workers from .2).
PLACEHOLDER_API_HOST = 200
API_ADDRESS_SUFFIX = "-api"
# The other addresses that are no node's, by how their names end: the gateway's load balancer,
# Cloud NAT's, the bastion's.
PLACEHOLDER_HOSTS_BY_SUFFIX = {
    API_ADDRESS_SUFFIX: PLACEHOLDER_API_HOST,
    "-gateway": 201,
    "-nat": 202,
    "-bastion-ip": 203,
}
BASTION_SUFFIX = "-bastion"
REJOIN_TOKEN_SUFFIX = "-rejoin-token"
PLACEHOLDER_PROJECT = "my-gcp-project"
# The certificate key's stand-in (a secret: no plan file may show it; a test checks).
PLACEHOLDER_RANDOM_HEX = "feedc0de" * 16
# How remote_step puts secret arguments in front of a script on stdin (with_secret_args).
SECRET_ARGS_PREFIX = 'set -- "$@" '
NOTHING_ON_CREATE = "(nothing on create)"
PLACEHOLDER_PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nplaceholder\n-----END OPENSSH PRIVATE KEY-----\n"
)


@dataclass(frozen=True)
class NodeFile:
    """A file a node step writes from one of its arguments."""

    path: str
    decode: str  # "base64": the argument is the file, base64-encoded; "words": one word a line


# The files the program renders and a step writes, by (script, argument). Paths are the scripts'
# own (a test checks each path appears in its script); "{name}" takes another argument's value.
NODE_FILES: dict[tuple[str, str], NodeFile] = {
    ("10-prerequisites.sh", "modules"): NodeFile("/etc/modules-load.d/kata-mesh.conf", "words"),
    ("10-prerequisites.sh", "sysctls"): NodeFile("/etc/sysctl.d/99-kata-mesh.conf", "words"),
    ("20-containerd.sh", "config-b64"): NodeFile("/etc/containerd/config.toml", "base64"),
    ("20-containerd.sh", "unit-b64"): NodeFile("/etc/systemd/system/containerd.service", "base64"),
    ("30-kata.sh", "dropin-b64"): NodeFile(
        "{prefix}/share/defaults/kata-containers/config.d/{dropin-name}", "base64"
    ),
    ("50-kubeadm-init.sh", "config-b64"): NodeFile("/etc/kubernetes/kubeadm-init.yaml", "base64"),
    ("50-kubeadm-init.sh", "audit-policy-b64"): NodeFile("{audit-policy-file}", "base64"),
    ("70-kubeadm-join.sh", "audit-policy-b64"): NodeFile("{audit-policy-file}", "base64"),
    # The backup and the certificate renewal: each script with its service and timer.
    ("75-install-timer.sh", "script-b64"): NodeFile("{script-path}", "base64"),
    ("75-install-timer.sh", "service-b64"): NodeFile("{unit-dir}/{service-name}", "base64"),
    ("75-install-timer.sh", "timer-b64"): NodeFile("{unit-dir}/{timer-name}", "base64"),
    # The node image's manifest, which a baked node checks at boot (12-node-image.sh).
    ("99-seal-image.sh", "manifest-b64"): NodeFile("{manifest}", "base64"),
}


class PlanError(RuntimeError):
    """The plan could not be made as asked (the message says why and what to do)."""


def shown(value: Any) -> Any:
    """A wire-format value as the plan shows it: secrets and unknowns named, numbers as written."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == SECRET_VALUE:
            return SECRET_SHOWN
        return {k: shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown(v) for v in value]
    if value == UNKNOWN:
        return UNKNOWN_SHOWN
    return as_manifest(value)


def short_type(type_: str) -> str:
    """gcp:compute/instance:Instance -> gcp:Instance; kata-mesh:nodes:NodeVm stays whole."""
    package, _, rest = type_.partition(":")
    kind = rest.rsplit(":", 1)[-1]
    return type_ if package == PROJECT else f"{package}:{kind}"


# --- config -------------------------------------------------------------------------------------


def plan_config(stack: str) -> tuple[dict[str, str], list[str]]:
    """The config `pulumi up` would give the program, with placeholders (and a warning each) for
    what only the operator can set; encrypted values cannot be read offline and are placeholders."""
    if not stack_file(stack).is_file():
        raise PlanError(
            f"no stack file {stack_file(stack)}; stacks are the files in {stack_file(stack).parent}"
        )
    values = stack_file_values(stack)
    warnings: list[str] = []
    config = project_defaults()
    for key, value in values.items():
        if isinstance(value, dict) and "secure" in value:
            if key not in SECRET_CONFIG_KEYS:
                raise PlanError(
                    f"{key} is encrypted in {stack_file(stack).name}; the plan cannot read it offline"
                )
            warnings.append(
                f"{key} is encrypted; the plan uses a placeholder key and shows it as {SECRET_SHOWN}"
            )
            config[key] = PLACEHOLDER_PRIVATE_KEY
            continue
        config[key] = config_string(value)
    fix = "set it before `pulumi up` (README, Deploy one environment)"
    if not config.get("gcp:project") and project_from_environment(os.environ) is None:
        config["gcp:project"] = PLACEHOLDER_PROJECT
        warnings.append(f"gcp:project is not set; the plan uses {PLACEHOLDER_PROJECT}: {fix}")
    access_keys = [f"{PROJECT}:sshAllowedCidrs", f"{PROJECT}:apiAllowedCidrs"]
    if config.get(f"{PROJECT}:ingressGateway") == "true":
        access_keys.append(f"{PROJECT}:gatewayAllowedCidrs")
    for key in access_keys:
        # Only an empty list gets a placeholder; anything else goes to the program as it is
        # (a plain string, say, which the settings check refuses with its own message).
        if config.get(key, "[]").strip() in ("[]", ""):
            config[key] = json.dumps([PLACEHOLDER_ADMIN_CIDR])
            warnings.append(f"{key} is empty; the plan uses [{PLACEHOLDER_ADMIN_CIDR}]: {fix}")
    return config, warnings


# --- mocks --------------------------------------------------------------------------------------


def placeholder_host(node: str, control_planes: int) -> int:
    """A node's host number in a placeholder range, from its name alone (so every plan of a stack
    gives the same addresses): the control planes from .2 (.1 is GCE's gateway), then the workers."""
    role, _, index = node.rpartition("-")
    if index.isdigit() and role.endswith("-cp"):
        return 2 + int(index)
    if index.isdigit() and role.endswith("-worker"):
        return 2 + control_planes + int(index)
    raise PlanError(f"the plan cannot place node {node} (names end in -cp-N or -worker-N)")


class PlanMocks(pulumi_mocks.Mocks):
    """As a preview: what the providers compute stays unknown, except the node addresses and ids,
    which get placeholders so node configs can be shown (external from 203.0.113.0/24, internal
    from the stack's subnet, numbered by node name), and the API load balancer's address
    (203.0.113.200)."""

    def __init__(self, config: Mapping[str, str]) -> None:
        # Read when a node is declared, so after the program has checked the settings.
        self.config = config
        # Placeholder external address -> node name.
        self.node_by_address: dict[str, str] = {}

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict]:
        state = dict(args.inputs)
        name = state.get("name", args.name)
        # A name made from another resource's output (the backup bucket's) is unknown in a plan.
        name = name if isinstance(name, str) else args.name
        special = next(
            (host for suffix, host in PLACEHOLDER_HOSTS_BY_SUFFIX.items() if name.endswith(suffix)), None
        )
        if args.typ == "gcp:compute/address:Address" and special is not None:
            # The API load balancer's address is in every kubeadm document and kubeconfig.
            state["address"] = str(PLACEHOLDER_EXTERNAL_NET[special])
            if name.endswith(BASTION_SUFFIX + "-ip"):
                self.node_by_address[state["address"]] = name.removesuffix("-ip")
        elif args.typ == "gcp:compute/address:Address":
            node = name.removesuffix("-ip")
            state["address"] = str(PLACEHOLDER_EXTERNAL_NET[placeholder_host(node, self.control_planes)])
            self.node_by_address[state["address"]] = node
        elif args.typ == "gcp:compute/instance:Instance":
            nics = [dict(nic) for nic in state.get("networkInterfaces", [])]
            subnet = ipaddress.ip_network(self.config[f"{PROJECT}:subnetCidr"])
            # The bastion: the last address GCE gives out (the last two are reserved).
            host = (
                subnet.num_addresses - 3
                if name.endswith(BASTION_SUFFIX)
                else placeholder_host(name, self.control_planes)
            )
            nics[0]["networkIp"] = str(subnet[host])
            # Private nodes are reached at this address (through the bastion).
            self.node_by_address[nics[0]["networkIp"]] = name
            # The subnet's id is known only after deploy, which would hide the address in a preview.
            nics[0]["subnetwork"] = "placeholder-subnetwork"
            state["networkInterfaces"] = nics
            state["instanceId"] = f"placeholder-id-{name}"
        elif args.typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{state['accountId']}@{PLACEHOLDER_PROJECT}.iam.gserviceaccount.com"
        elif args.typ == COMMAND_TYPE and name.endswith(REJOIN_TOKEN_SUFFIX):
            # A new stack: no control plane survives the first one's VM (it is the first), so no
            # join comes back and init initialises.
            state["stdout"] = ""
        elif args.typ == "random:index/randomBytes:RandomBytes":
            # Secret; known, so the steps that carry it on stdin can still be named by their script.
            state["hex"] = PLACEHOLDER_RANDOM_HEX[: 2 * int(state["length"])]
            state["base64"] = ""
        elif args.typ == "tls:index/privateKey:PrivateKey":
            # Secret in every output; known, so the SSH connections (and their hosts) are too.
            state["privateKeyOpenssh"] = PLACEHOLDER_PRIVATE_KEY
            state["publicKeyOpenssh"] = "ssh-ed25519 AAAAplaceholder\n"
        return "", state

    @property
    def control_planes(self) -> int:
        return int(self.config[f"{PROJECT}:controlPlaneCount"])

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list[tuple[str, str]]]:
        if args.token == "gcp:compute/getImage:getImage":
            link = f"https://www.googleapis.com/compute/v1/projects/{args.args['project']}/global/images/family/{args.args['family']}"
            return {"family": args.args["family"], "name": args.args["family"], "selfLink": link}, []
        if args.token == "gcp:compute/getImages:getImages":
            # As a project where images/ built the stack's node image.
            return {"images": node_images_listed(args.args["filter"], PLACEHOLDER_PROJECT)}, []
        if args.token == "tls:index/getPublicKey:getPublicKey":
            return {"publicKeyOpenssh": "ssh-ed25519 AAAAplaceholder\n"}, []
        if args.token == "gcp:storage/getBucketObjects:getBucketObjects":
            # A plan cannot look into the bucket: no backup, as for a new stack.
            return {"bucketObjects": []}, []
        raise NotImplementedError(f"the plan has no placeholder for invoke {args.token}")


# --- the resource graph -------------------------------------------------------------------------


@dataclass
class Graph:
    """Resources, their component, and what each waits for (components expanded to their resources)."""

    program: ProgramRun
    by_urn: dict[str, Registration] = field(init=False)
    children: dict[str, list[str]] = field(init=False)
    waits_for: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_urn = {r.urn: r for r in self.program.registrations}
        self.children = defaultdict(list)
        for r in self.program.registrations:
            if r.parent:
                self.children[r.parent].append(r.urn)
        custom = [r for r in self.program.registrations if r.custom]
        # A resource also waits for its provider (a Kubernetes object for the cluster's provider,
        # which waits for kubeadm init): the reference is "URN::ID".
        self.waits_for = {
            r.urn: sorted(self._expand([*r.dependencies, r.provider.rsplit("::", 1)[0]]) - {r.urn})
            for r in custom
        }
        self._ancestors: dict[str, frozenset[str]] = {}
        # The engine registers resources in whatever order their inputs resolve: the plan orders
        # them by dependency, ties by URN, so the same program always gives the same plan.
        position: dict[str, int] = {}
        remaining = {r.urn: set(self.waits_for[r.urn]) for r in custom}
        while remaining:
            ready = sorted(u for u, waits in remaining.items() if not waits)
            for urn in ready:
                position[urn] = len(position)
                del remaining[urn]
            for waits in remaining.values():
                waits.difference_update(ready)
        self._resources = sorted(custom, key=lambda r: position[r.urn])

        def first_position(urn: str) -> int:
            below = [position[u] for u in self._expand(self.children.get(urn, []))]
            return min(below, default=len(position))

        self._components = sorted(
            (r for r in self.program.registrations if not r.custom and r.type != STACK_TYPE),
            key=lambda r: (first_position(r.urn), r.urn),
        )
        for urns in list(self.children.values()):
            urns.sort(key=lambda u: (position.get(u, first_position(u)), u))

    @property
    def resources(self) -> list[Registration]:
        """Every resource, ordered by dependency."""
        return self._resources

    @property
    def components(self) -> list[Registration]:
        """Every component, in the order of the first resource each holds."""
        return self._components

    def of_type(self, type_: str) -> list[Registration]:
        return [r for r in self._resources if r.type == type_]

    def _expand(self, urns: list[str]) -> set[str]:
        found: set[str] = set()
        for urn in urns:
            r = self.by_urn.get(urn)
            if r is None:
                continue
            if r.custom:
                found.add(urn)
            else:
                found |= self._expand(self.children.get(urn, []))
        return found

    def component_of(self, r: Registration) -> Registration | None:
        parent = self.by_urn.get(r.parent)
        return parent if parent is not None and parent.type != STACK_TYPE else None

    def ancestors(self, urn: str) -> frozenset[str]:
        """Everything a resource waits for, directly or through others."""
        if urn not in self._ancestors:
            found: set[str] = set()
            for before in self.waits_for[urn]:
                found |= {before, *self.ancestors(before)}
            self._ancestors[urn] = frozenset(found)
        return self._ancestors[urn]

    def direct_waits(self, urn: str) -> list[str]:
        """What a resource waits for, less what it already waits for through another (the
        transitive reduction: the same order, fewer lines to draw)."""
        waits = self.waits_for[urn]
        implied = set().union(*(self.ancestors(w) for w in waits)) if waits else set()
        return [w for w in waits if w not in implied]

    def critical_path(self) -> list[Registration]:
        """The longest chain of resources, each waiting for the one before: the steps a deploy
        cannot run in parallel."""
        longest: dict[str, list[str]] = {}

        def chain(urn: str) -> list[str]:
            if urn not in longest:
                before = max((chain(d) for d in self.waits_for[urn]), key=len, default=[])
                longest[urn] = [*before, urn]
            return longest[urn]

        path = max((chain(r.urn) for r in self.resources), key=len, default=[])
        return [self.by_urn[u] for u in path]


def resources_markdown(graph: Graph, stack: str) -> str:
    resources = graph.resources
    lines = [f"# Plan of stack `{stack}`: {len(resources)} resources", ""]
    lines += ["| type | count |", "|---|---|"]
    for type_, count in sorted(Counter(r.type for r in resources).items()):
        lines.append(f"| `{type_}` | {count} |")
    groups: dict[str, list[Registration]] = defaultdict(list)
    for r in resources:
        component = graph.component_of(r)
        groups[component.urn if component else ""].append(r)
    for component in [None, *graph.components]:
        members = groups.get(component.urn if component else "", [])
        if not members:
            continue
        if component is None:
            lines += ["", "## Top level", ""]
        else:
            parent = graph.component_of(component)
            within = f", in `{parent.name}`" if parent else ""
            lines += ["", f"## `{component.name}` ({component.type}{within}): {len(members)}", ""]
        lines += ["| type | name | waits for |", "|---|---|---|"]
        for r in members:
            waits = ", ".join(f"`{graph.by_urn[u].name}`" for u in graph.waits_for[r.urn]) or "-"
            lines.append(f"| `{short_type(r.type)}` | `{r.name}` | {waits} |")
    path = graph.critical_path()
    lines += ["", f"## Critical path: {len(path)} steps", ""]
    lines += [f"{i}. `{r.name}` ({short_type(r.type)})" for i, r in enumerate(path, 1)]
    return "\n".join(lines) + "\n"


def graph_dot(graph: Graph, stack: str) -> str:
    """The dependency graph in Graphviz's language: components as clusters, the critical path red.
    An edge implied by others is not drawn (resources.md lists every dependency)."""
    ids = {r.urn: f"r{i}" for i, r in enumerate([*graph.resources, *graph.components])}
    on_path = {r.urn for r in graph.critical_path()}

    def quoted(text: str) -> str:
        return json.dumps(text)

    def node_line(r: Registration, indent: str) -> str:
        style = ', color="#c0392b", penwidth=2.5, fontcolor="#c0392b"' if r.urn in on_path else ""
        label = quoted(r.name + "\n" + short_type(r.type))
        return f"{indent}{ids[r.urn]} [label={label}{style}];"

    def cluster(component: Registration | None, indent: str) -> list[str]:
        members = [
            graph.by_urn[u]
            for u in (graph.children[component.urn] if component else [])
            if graph.by_urn[u].custom
        ]
        nested = [
            graph.by_urn[u]
            for u in (graph.children[component.urn] if component else [])
            if not graph.by_urn[u].custom
        ]
        out: list[str] = []
        if component is not None:
            out.append(f"{indent}subgraph cluster_{ids[component.urn]} {{")
            out.append(f"{indent}  label={quoted(f'{component.name} ({component.type})')};")
            out.append(f'{indent}  style="rounded"; color="#7f8c8d";')
        inner = indent + "  "
        out += [node_line(r, inner) for r in members]
        for child in nested:
            out += cluster(child, inner)
        if component is not None:
            out.append(f"{indent}}}")
        return out

    lines = [
        f"digraph {quoted(f'kata-mesh {stack}')} {{",
        '  rankdir=LR; fontname="Helvetica"; node [shape=box, style=rounded, fontname="Helvetica", fontsize=10];',
        '  edge [color="#95a5a6"];',
    ]
    top_level = [r for r in graph.resources if graph.component_of(r) is None]
    lines += [node_line(r, "  ") for r in top_level]
    for component in graph.components:
        if graph.component_of(component) is None:
            lines += cluster(component, "  ")
    path = [r.urn for r in graph.critical_path()]
    path_edges = set(itertools.pairwise(path))
    for r in graph.resources:
        for before in graph.direct_waits(r.urn):
            style = ' [color="#c0392b", penwidth=2.5]' if (before, r.urn) in path_edges else ""
            lines.append(f"  {ids[before]} -> {ids[r.urn]}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_svg(dot_text: str, svg: Path) -> str | None:
    """graph.svg via Graphviz's dot; a note when dot is not installed."""
    dot = shutil.which("dot")
    if dot is None:
        return "graph.svg not drawn: Graphviz's `dot` is missing (apt install graphviz, or brew install graphviz)"
    drawn = subprocess.run([dot, "-Tsvg", "-o", str(svg)], input=dot_text, text=True, capture_output=True)
    if drawn.returncode != 0:
        return f"graph.svg not drawn: dot failed: {drawn.stderr.strip()}"
    return None


# --- nodes --------------------------------------------------------------------------------------


@functools.cache
def _scripts_by_stdin() -> dict[str, str]:
    """What the program sends on stdin for each node script (lib.sh and the script), read once."""
    names = sorted(p.name for p in SCRIPTS_DIR.glob("*.sh") if p.name != "lib.sh")
    return {NodeStep(name, name, ()).script_text: name for name in names}


def script_of(stdin: Any) -> str | None:
    """Which node script a command sends on stdin (None when it is not a script, or unknown in a
    preview). A secret stdin is the script behind one line of secret arguments: the plan reads
    which script follows that line, never the line itself."""
    if isinstance(stdin, dict) and stdin.get(SECRET_SIG) == SECRET_VALUE:
        value = stdin.get("value")
        if not isinstance(value, str) or not value.startswith(SECRET_ARGS_PREFIX) or "\n" not in value:
            return None
        stdin = value.split("\n", 1)[1]
    return _scripts_by_stdin().get(stdin) if isinstance(stdin, str) else None


@dataclass(frozen=True)
class NodeCommand:
    resource: str
    script: str | None
    # The step's arguments on create (or on delete), or the command itself when it is no step.
    args: dict[str, str] | str
    delete_args: dict[str, str] | str | None
    secret_stdin: bool
    files: dict[str, str]

    @property
    def step_args(self) -> dict[str, str]:
        """The arguments the script runs with: on delete for a command that acts only then."""
        chosen = self.delete_args if self.delete_args is not None else self.args
        return chosen if isinstance(chosen, dict) else {}


def node_commands(graph: Graph, node_by_address: Mapping[str, str]) -> dict[str, list[NodeCommand]]:
    """Every remote command, by the node it runs on, in declaration order."""
    by_node: dict[str, list[NodeCommand]] = defaultdict(list)
    for r in graph.of_type(COMMAND_TYPE):
        raw = r.raw_inputs
        host = _connection_host(raw.get("connection", {}))
        node = node_by_address.get(host, host)
        stdin = raw.get("stdin")
        secret_stdin = isinstance(stdin, dict) and stdin.get(SECRET_SIG) == SECRET_VALUE
        script = script_of(stdin)
        # A removal step runs nothing on create (and connects only when it is deleted).
        args = _args(raw["create"]) if "create" in raw else NOTHING_ON_CREATE
        delete = _args(raw.get("delete")) if "delete" in raw else None
        command = NodeCommand(r.name, script, args, delete, secret_stdin, {})
        if script is not None:
            for name, value in command.step_args.items():
                spec = NODE_FILES.get((script, name))
                if spec is not None:
                    command.files[spec.path.format_map(command.step_args)] = _decode(value, spec.decode)
        by_node[node].append(command)
    return by_node


def image_commands(steps: list[NodeStep]) -> list[NodeCommand]:
    """What the node image's builder runs (images/), as a node's steps are shown: a baked node's
    containerd config, Kata drop-in, modules and sysctls are the image's."""
    commands = []
    for step in steps:
        args = dict(step.args)
        command = NodeCommand(f"images/: {step.name}", step.script, args, None, False, {})
        for name, value in args.items():
            spec = NODE_FILES.get((step.script, name))
            if spec is not None:
                command.files[spec.path.format_map(args)] = _decode(value, spec.decode)
        commands.append(command)
    return commands


def _connection_host(connection: Any) -> str:
    """The host a command connects to. The connection is secret as a whole (it holds the private
    key); its host is a placeholder address, the one part the plan reads, to name the node."""
    if isinstance(connection, dict) and connection.get(SECRET_SIG) == SECRET_VALUE:
        connection = connection.get("value")
    host = connection.get("host") if isinstance(connection, dict) else None
    return host if isinstance(host, str) and host != UNKNOWN else UNKNOWN_SHOWN


def _args(command_line: Any) -> dict[str, str] | str:
    """A step's --name value arguments; a command that is not a step, as it is."""
    shown_line = shown(command_line)
    if not isinstance(shown_line, str) or shown_line in (SECRET_SHOWN, UNKNOWN_SHOWN):
        return str(shown_line)
    if " -- " not in f" {shown_line} ":
        return shown_line
    return {name.removeprefix("--"): value for name, value in command_args(shown_line).items()}


def _decode(value: str, how: str) -> str:
    if how == "base64":
        return base64.b64decode(value).decode()
    return "\n".join(value.split()) + "\n"


def node_markdown(node: str, commands: list[NodeCommand]) -> str:
    lines = [f"# `{node}`: {len(commands)} remote steps, in an order they can run in", ""]
    for command in commands:
        script = f"`scripts/node/{command.script}`" if command.script else "a command"
        lines += [f"## `{command.resource}`: {script}", ""]
        if command.secret_stdin:
            lines += [f"Its script and arguments travel on stdin as a secret: {SECRET_SHOWN}.", ""]
        if isinstance(command.args, str):
            lines.append(f"Runs `{command.args}`.")
        if command.delete_args is not None:
            lines += [
                "",
                "On delete it runs" + (" with:" if command.step_args else f" `{command.delete_args}`."),
                "",
            ]
        for name, value in command.step_args.items():
            text = value if len(value) <= 120 else f"({len(value)} characters; see the file below)"
            lines.append(f"- `--{name}` {text}")
        for path in command.files:
            lines += ["", f"Writes `{path}` (in `files{path}`)."]
        lines.append("")
    return "\n".join(lines)


# --- Kubernetes objects and Helm releases -------------------------------------------------------


def kubernetes_objects(graph: Graph) -> list[dict[str, Any]]:
    """Every Kubernetes object the program declares itself (Helm releases apart), as applied."""
    objects = []
    for r in graph.resources:
        if not r.custom or not r.type.startswith("kubernetes:") or r.type == charts.RELEASE_TYPE:
            continue
        objects.append(shown(r.raw_inputs))
    return objects


@dataclass
class ReleasePlan:
    release: charts.HelmRelease
    source: charts.ChartSource
    # helm's output as it printed it, and the objects in it.
    text: str | None
    objects: list[dict[str, Any]] | None
    error: str | None


def plan_releases(
    program: ProgramRun, kube_version: str, charts_dir: Path | None, offline: bool
) -> list[ReleasePlan]:
    helm = charts.find_helm()
    plans = []
    for release in sorted(charts.releases(program), key=lambda r: r.release_name):
        source = charts.locate_chart(release, charts_dir, offline, helm)
        text, objects, error = None, None, None
        if source.archive is not None and helm is None:
            source = dataclasses.replace(
                source, note=f"{source.note}; not rendered: no helm (run scripts/setup.sh)"
            )
        if source.archive is not None and helm is not None:
            try:
                text = charts.render_text(release, source.archive, kube_version, helm)
                objects = charts.manifests(text)
            except charts.RenderError as err:
                error = str(err)
        plans.append(ReleasePlan(release, source, text, objects, error))
    return plans


def yaml_documents(documents: list[Any]) -> str:
    return "".join(f"---\n{yaml.safe_dump(doc, sort_keys=True)}" for doc in documents)


# --- the whole plan -----------------------------------------------------------------------------


@dataclass
class Plan:
    stack: str
    out: Path
    warnings: list[str]
    graph: Graph
    nodes: dict[str, list[NodeCommand]]
    releases: list[ReleasePlan]
    versions: dict[str, str]
    notes: list[str]
    # The time estimates (offline/estimate.py): the first deploy, then one more worker.
    estimates: list[Estimate] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.error for r in self.releases)

    def summary(self) -> str:
        resources = self.graph.resources
        lines = [f"Plan of stack {self.stack}: {len(resources)} resources"]
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append("")
        lines.append("Resources by type:")
        for type_, count in sorted(Counter(r.type for r in resources).items()):
            lines.append(f"  {count:4d}  {type_}")
        lines.append("")
        lines.append("Nodes:")
        for instance in self.graph.of_type("gcp:compute/instance:Instance"):
            i = instance.inputs
            spot = "Spot" if i.get("scheduling", {}).get("provisioningModel") == "SPOT" else "on-demand"
            role = i.get("labels", {}).get("role", "?")
            steps = len(self.nodes.get(i["name"], []))
            lines.append(
                f"  {i['name']}: {role}, {i['machineType']} in {i['zone']}, {spot}, {steps} remote steps"
            )
        lines.append("")
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()))
        path = self.graph.critical_path()
        lines.append(f"Critical path: {len(path)} steps, {path[0].name} ... {path[-1].name}")
        for estimate in self.estimates:
            title = estimate.title[0].lower() + estimate.title[1:]
            lines.append(f"Estimated {title}: {estimate.minutes:.1f} min (its path: estimate.md)")
        lines.append("Helm releases:")
        for r in self.releases:
            state = "rendered" if r.objects is not None else ("FAILED" if r.error else "values only")
            lines.append(f"  {r.release.release_name}: {state}; {r.source.note}")
            if r.error:
                lines.append(f"    {r.error}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """Writes the plan into its folder: a new one, or one an earlier plan wrote (marked so);
        any other folder is refused rather than emptied."""
        marker = self.out / PLAN_MARKER
        if self.out.exists() and any(self.out.iterdir()):
            if not marker.is_file():
                raise PlanError(
                    f"{self.out} is not empty and holds no earlier plan ({PLAN_MARKER}); "
                    "choose a new folder with --out"
                )
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        marker.write_text("written by scripts/plan.py; the next plan into this folder replaces it\n")
        (self.out / "resources.md").write_text(resources_markdown(self.graph, self.stack))
        dot_text = graph_dot(self.graph, self.stack)
        (self.out / "graph.dot").write_text(dot_text)
        note = draw_svg(dot_text, self.out / "graph.svg")
        if note and note not in self.notes:
            self.notes.append(note)
        for node, commands in self.nodes.items():
            folder = self.out / "nodes" / node
            folder.mkdir(parents=True)
            (folder / "steps.md").write_text(node_markdown(node, commands))
            for command in commands:
                for path, content in command.files.items():
                    target = folder / "files" / path.lstrip("/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(content)
        (self.out / "kubernetes.yaml").write_text(yaml_documents(kubernetes_objects(self.graph)))
        for r in self.releases:
            folder = self.out / "helm" / r.release.release_name
            folder.mkdir(parents=True)
            (folder / "values.yaml").write_text(yaml.safe_dump(r.release.values, sort_keys=True))
            header = f"# {r.source.note}\n"
            if r.text is not None:
                (folder / "rendered.yaml").write_text(header + r.text)
            else:
                (folder / "NOT-RENDERED.txt").write_text(header + (r.error or "") + "\n")
        if self.estimates:
            # Imported here: offline.estimate imports this module.
            from offline.estimate import estimates_markdown

            (self.out / "estimate.md").write_text(estimates_markdown(self.stack, self.estimates))
        (self.out / "summary.txt").write_text(self.summary())


def make_plan(
    stack: str, out: Path, charts_dir: Path | None = None, offline: bool = False, estimate: bool = True
) -> Plan:
    """Runs the program for the stack as a preview and gathers the plan (nothing is written yet);
    with `estimate`, the time estimates too, which run the program once more (workerCount + 1).

    Bad settings raise the program's own SettingsError, as `pulumi up` would show it."""
    from components import node_image, versions
    from components.settings import load_settings

    config, warnings = plan_config(stack)
    mocks = PlanMocks(config)
    program = run_program(stack, True, config, RecordingMonitor(mocks))
    settings = load_settings()
    graph = Graph(program)
    nodes = node_commands(graph, mocks.node_by_address)
    inputs = node_image.ImageInputs(settings.kubernetes_version, settings.kata)
    image = node_image.image_name(node_image.inputs_hash(inputs))
    if settings.node_image == "baked":
        # Its own folder beside the nodes': what every node of the stack boots with.
        nodes[image] = image_commands(
            [*node_image.build_steps(inputs), node_image.seal_step(node_image.render_manifest(inputs))]
        )
    result = Plan(
        stack=stack,
        out=out,
        warnings=warnings,
        graph=graph,
        nodes=nodes,
        releases=plan_releases(program, settings.kubernetes_version, charts_dir, offline),
        versions={
            "Kubernetes": settings.kubernetes_version,
            "Kata": settings.kata_version,
            "containerd": versions.CONTAINERD.version,
            "runc": versions.RUNC.version,
            "CNI plugins": versions.CNI_PLUGINS.version,
            "Istio": settings.istio_version,
            "Flannel chart": versions.FLANNEL_CHART_VERSION,
            "Node image": image if settings.node_image == "baked" else "stock (Ubuntu, installs at boot)",
        },
        notes=[],
    )
    if estimate:
        # Last: the estimate runs the program again (workerCount + 1), then gives the config back.
        # Imported here: offline.estimate imports this module.
        from offline.estimate import plan_estimates

        result.estimates, estimate_notes = plan_estimates(stack, program)
        result.notes += estimate_notes
    return result


def iter_files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file())
