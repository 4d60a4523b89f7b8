"""The stack's settings: one typed, frozen object, validated before any resource is declared.

Defaults live in Pulumi.yaml only (the CLI applies them); `parse_settings` is a pure function of
the raw config strings so tests can call it directly, and it reports every problem at once.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from components import backup_config, versions

T = TypeVar("T")

# Pulumi.yaml's `name`: the namespace of the project keys (`kata-mesh:machineType`).
PROJECT_NAME = "kata-mesh"
# Project keys (namespace kata-mesh), each declared with a default in Pulumi.yaml.
PROJECT_KEYS = (
    "machineType",
    "minCpuPlatform",
    "controlPlaneCount",
    "allowControlPlaneShrink",
    "allowControlPlaneReplacement",
    "zones",
    "workerCount",
    "spot",
    "bootDiskSizeGb",
    "bootDiskType",
    "secureBoot",
    "subnetCidr",
    "podCidr",
    "serviceCidr",
    "sshAllowedCidrs",
    "apiAllowedCidrs",
    "gatewayAllowedCidrs",
    "allowWorldAccess",
    "privateNodes",
    "bastionMachineType",
    "adminUser",
    "sshPrivateKey",
    "kubernetesVersion",
    "kataVersion",
    "nodeImage",
    "artifactMirrorUrl",
    "istioVersion",
    "istioCni",
    "ingressGateway",
    "gatewayNodePort",
    "appNamespace",
    "httpbinImage",
    "runcTwin",
    "bookinfo",
    "verificationRun",
    "backupIntervalHours",
    "backupRetentionDays",
    "backupForceDestroy",
    "backupObject",
)
# Provider keys: region and zone come from the stack files, the project from each user.
GCP_KEYS = ("gcp:project", "gcp:region", "gcp:zone")
# nodeImage: the node image built for the stack's inputs (images/), or Ubuntu plus installs at boot.
NODE_IMAGE_MODES = ("baked", "stock")
SECRET_KEYS = frozenset({"sshPrivateKey"})
# Settings of type array: `pulumi config set key value` would store a plain string, so their
# fixes use `pulumi config set --path 'kata-mesh:key[0]' value` (the CLI's set has no --json).
LIST_KEYS = frozenset({"sshAllowedCidrs", "apiAllowedCidrs", "gatewayAllowedCidrs", "zones"})
# Where the pulumi-gcp provider also finds the project when gcp:project is unset, in its order of
# precedence (Pulumi registry, "Google Cloud (GCP) Classic: Installation & Configuration").
PROJECT_ENV_VARS = ("GOOGLE_PROJECT", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT")
# Resource Manager: 6 to 30 lowercase letters, digits or hyphens, starting with a letter, no
# trailing hyphen. Legacy domain-scoped projects carry their domain in front: example.com:my-app.
PROJECT_ID = re.compile(r"^(?:[a-z0-9][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$")

# Series with Intel VT-x exposed to guests (REFERENCE section 3). N1 also needs a CPU platform.
NESTED_VIRT_SERIES = ("n2", "c2", "c3", "n1")
REJECTED_SERIES = {
    "e2": "E2 machines do not support nested virtualization",
    "n2d": "N2D is an AMD series; nested virtualization needs Intel VT-x",
    "c2d": "C2D is an AMD series; nested virtualization needs Intel VT-x",
    "c3d": "C3D is an AMD series; nested virtualization needs Intel VT-x",
    "t2d": "T2D is an AMD series; nested virtualization needs Intel VT-x",
    "t2a": "T2A is an Arm series; Kata's static release here is for x86_64 with VT-x",
    "c4a": "C4A is an Arm series; Kata's static release here is for x86_64 with VT-x",
    "f1": "shared-core f1 machines do not support nested virtualization",
    "g1": "shared-core g1 machines do not support nested virtualization",
}
# GCE's machine type names for the series above: SERIES-KIND-VCPUS, with -lssd on C3 types that
# bundle Local SSD (c3-standard-4-lssd) and -metal on bare-metal ones (c3-highcpu-192-metal);
# custom types are SERIES-custom-VCPUS-MEMORY_MB[-ext], except N1's: custom-VCPUS-MEMORY_MB[-ext].
SERIES_KINDS = {
    "n1": ("standard", "highmem", "highcpu", "megamem", "ultramem"),
    "n2": ("standard", "highmem", "highcpu"),
    "c2": ("standard",),
    "c3": ("standard", "highmem", "highcpu"),
}
CUSTOM_SERIES = ("n1", "n2")
LSSD_SERIES = ("c3",)
MACHINE_TYPE_EXAMPLES = {
    "n1": "n1-standard-4, n1-highmem-8, n1-highcpu-16 or custom-4-16384",
    "n2": "n2-standard-4, n2-highmem-8, n2-highcpu-16 or n2-custom-4-16384",
    "c2": "c2-standard-8",
    "c3": "c3-standard-4, c3-highmem-8, c3-highcpu-4 or c3-standard-4-lssd",
}
PREDEFINED_TYPE = re.compile(
    r"^(?P<series>[a-z][a-z0-9]*)-(?P<kind>[a-z]+)-(?P<cpus>\d+)(?:-(?P<suffix>lssd|metal))?$"
)
CUSTOM_TYPE = re.compile(r"^(?:(?P<series>[a-z][a-z0-9]*)-)?custom-(?P<cpus>\d+)-(?P<mem>\d+)(?P<ext>-ext)?$")
# Shared-core types (no vCPU count in the name), enough for the bastion.
SHARED_CORE_TYPE = re.compile(r"^(?:e2-(?:micro|small|medium)|f1-micro|g1-small)$")
SERIES_PREFIX = re.compile(r"^(?P<series>[a-z][a-z0-9]*)-[a-z0-9]")
# The minimum CPU platforms GCE offers per machine series, from the availability table of
# "Specify a minimum CPU platform for compute instances"
# (https://cloud.google.com/compute/docs/instances/specify-min-cpu-platform). A platform of another
# series is refused by GCE (n1 cannot take Intel Cascade Lake, n2 cannot take Intel Broadwell).
MIN_CPU_PLATFORMS = {
    "n1": ("Intel Sandy Bridge", "Intel Ivy Bridge", "Intel Haswell", "Intel Broadwell", "Intel Skylake"),
    "n2": ("Intel Cascade Lake", "Intel Ice Lake"),
    "c2": ("Intel Cascade Lake",),
    "c3": ("Intel Sapphire Rapids",),
}
# Nested virtualization on N1 needs Haswell or later (REFERENCE section 3).
N1_NESTED_PLATFORMS = ("Intel Haswell", "Intel Broadwell", "Intel Skylake")
DISK_TYPES = ("pd-balanced", "pd-ssd", "pd-standard", "hyperdisk-balanced")
MIN_BOOT_DISK_GB = 30
# GCE: a subnet's primary range is /29 or larger, and four of its addresses are reserved
# (network, gateway, second-to-last, broadcast).
GCE_SMALLEST_SUBNET_PREFIX = 29
GCE_RESERVED_ADDRESSES = 4
# A source range with a prefix shorter than /8 (more than 16.7 million addresses, from a /7 up to
# 0.0.0.0/0) is treated as open to the world: it is refused unless allowWorldAccess is true.
WORLD_OPEN_PREFIX = 8
# kubeadm's preflight check NumCPU refuses fewer than 2 vCPUs.
MIN_VCPUS = 2
GCE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# The node service account id "km-<stack>-nodes" may have at most 30 characters.
STACK_NAME_MAX = 30 - len("km--nodes")
LINUX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
ZONE = re.compile(r"^(?P<region>[a-z]+-[a-z]+\d+)-[a-z]$")
REGION = re.compile(r"^[a-z]+-[a-z]+\d+$")
# Stacked etcd: one member per control plane. It needs a majority of its members to commit, so n
# members tolerate (n - 1) // 2 failures: an even count tolerates no more than the odd count below
# it, and every member more slows writes. 5 tolerates two failures.
CONTROL_PLANE_COUNTS = (1, 3, 5)
MIRROR_URL = re.compile(r"^https?://[^\s?#]+$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Namespaces the app may not take, with their owner.
RESERVED_NAMESPACES = {
    "default": "Kubernetes",
    "kube-system": "Kubernetes",
    "kube-public": "Kubernetes",
    "kube-node-lease": "Kubernetes",
    "kube-flannel": "Flannel, which this program installs",
    "istio-system": "istiod, which this program installs",
    "istio-ingress": "the Istio ingress gateway, which this program installs",
}
DNS_LABEL_MAX = 63
# The runc twin's namespace is the app's with this suffix (components/workloads.py).
RUNC_TWIN_NAMESPACE_SUFFIX = "-runc"
# The namespace of Istio's Bookinfo sample (see __main__.py), declared when bookinfo is true.
BOOKINFO_NAMESPACE = "bookinfo"
PRIVATE_KEY_HEADER = re.compile(r"^-----BEGIN (OPENSSH|RSA|EC) PRIVATE KEY-----")


def show(value: object) -> str:
    """A config value as the user writes it: true/false, JSON lists, plain numbers and strings."""
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    if value == "":
        return '""'
    return str(value)


def remove_command(key: str, index: int) -> str:
    """The `pulumi config rm` command that removes element `index` of the list setting `key`."""
    return f"`pulumi config rm --path '{PROJECT_NAME}:{key}[{index}]'`"


def set_command(key: str, value: str, index: int = 0) -> str:
    """The `pulumi config set` command that sets `key` (one element of it for a list setting)."""
    if key in LIST_KEYS:
        return f"`pulumi config set --path '{PROJECT_NAME}:{key}[{index}]' {value}`"
    return f"`pulumi config set {key} {value}`"


@dataclass(frozen=True)
class Problem:
    key: str
    # The value as the user wrote it: the raw text when it did not parse, else the parsed value.
    value: object
    fix: str
    # The element of a list setting the problem is about, if one.
    index: int | None = None

    def __str__(self) -> str:
        shown = "[secret]" if self.key in SECRET_KEYS else show(self.value)
        return f"{self.key} = {shown}: {self.fix}"


class SettingsError(ValueError):
    """Every problem found in the stack's settings, reported together."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        how = "fix with `pulumi config set <key> <value>`"
        if any(p.key in LIST_KEYS for p in problems):
            how += (
                f"; a list setting one element at a time with "
                f"`pulumi config set --path '{PROJECT_NAME}:<key>[<index>]' <value>`"
            )
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the stack settings ({how}):\n{lines}")


@dataclass(frozen=True)
class Settings:
    stack: str
    project: str
    region: str
    zone: str
    machine_type: str
    min_cpu_platform: str | None
    control_plane_count: int
    # Lets the step that removes a control plane take etcd from 3 or more members to fewer than 3.
    allow_control_plane_shrink: bool
    # Off: Pulumi refuses to replace or delete a control plane's VM (protect).
    allow_control_plane_replacement: bool
    # The zones of region the nodes are spread over, in order; never empty (`(zone,)` by default).
    zones: tuple[str, ...]
    worker_count: int
    spot: bool
    boot_disk_size_gb: int
    boot_disk_type: str
    secure_boot: bool
    subnet_cidr: str
    pod_cidr: str
    service_cidr: str
    # Who may reach SSH (22, every node), the API (6443) and the ingress gateway's NodePort; none
    # holds a world-open range unless allow_world_access.
    ssh_allowed_cidrs: tuple[str, ...]
    api_allowed_cidrs: tuple[str, ...]
    gateway_allowed_cidrs: tuple[str, ...]
    allow_world_access: bool
    # Nodes without external addresses, reached over SSH through a bastion (its machine type).
    private_nodes: bool
    bastion_machine_type: str
    admin_user: str
    kubernetes_version: str
    kata_version: str
    # "baked": nodes boot from the node image built for these inputs (images/); "stock": Ubuntu,
    # with everything installed over SSH at boot.
    node_image: str
    artifact_mirror_url: str | None
    istio_version: str
    ingress_gateway: bool
    gateway_node_port: int
    app_namespace: str
    httpbin_image: str
    runc_twin: bool
    bookinfo: bool
    verification_run: str
    # etcd and PKI backups to the stack's bucket: how often, kept how long, whether `pulumi destroy`
    # may delete a bucket that holds some, and which backup a new first control plane restores
    # ("" for the newest).
    backup_interval_hours: int
    backup_retention_days: int
    backup_force_destroy: bool
    backup_object: str
    # A user-supplied key is plain text only here; components wrap it with Output.secret.
    ssh_private_key: str | None = field(default=None, repr=False)

    @property
    def name_prefix(self) -> str:
        """Prefix of every GCE resource name, so stacks can share one project."""
        return f"kata-mesh-{self.stack}"

    @property
    def kata(self) -> versions.Artifact:
        return versions.KATA_RELEASES[self.kata_version]


@dataclass(frozen=True)
class _Suggestion:
    """A replacement value for the problem at `position`, offered only if it passes every rule."""

    position: int
    candidate: str
    hinted_fix: str


class _Reader:
    """Parses raw config strings, collecting problems instead of stopping at the first."""

    def __init__(self, raw: Mapping[str, str | None]) -> None:
        self.raw = raw
        self.problems: list[Problem] = []
        self.suggestions: list[_Suggestion] = []
        # Keys already reported as missing or unparsable: one problem per bad value is enough.
        self.unreadable: set[str] = set()

    def problem(self, key: str, value: object, fix: str, index: int | None = None) -> int | None:
        """Records a problem; returns its position, or None when the key was already reported."""
        if key in self.unreadable:
            return None
        self.problems.append(Problem(key, value, fix, index))
        return len(self.problems) - 1

    def suggest(self, position: int | None, candidate: str, hinted_fix: str) -> None:
        if position is not None:
            self.suggestions.append(_Suggestion(position, candidate, hinted_fix))

    def _value(
        self, key: str, parse: Callable[[str], T], kind: str, fallback: T, missing: str | None = None
    ) -> T:
        text = self.raw.get(key)
        if text is None:
            self.problem(key, None, missing or f"missing; set it with {set_command(key, '<value>')} ({kind})")
            self.unreadable.add(key)
            return fallback
        try:
            return parse(text)
        except ValueError:
            position = self.problem(key, text, f"must be {kind}")
            if key in LIST_KEYS and text.strip() and not text.lstrip().startswith("["):
                # A plain string such as 203.0.113.7/32: offer it as the list's first element.
                self.suggest(
                    position,
                    json.dumps([text.strip()]),
                    f"must be {kind}; `pulumi config set {key} <value>` stores a plain string, so set "
                    f"each element with {set_command(key, text.strip())}",
                )
            self.unreadable.add(key)
            return fallback

    def string(self, key: str, missing: str | None = None) -> str:
        return self._value(key, str, "a string", "", missing)

    def integer(self, key: str) -> int:
        return self._value(key, int, "an integer", 0)

    def boolean(self, key: str) -> bool:
        def parse(text: str) -> bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"

        return self._value(key, parse, "true or false", False)

    def string_list(self, key: str, example: str = "203.0.113.7/32") -> tuple[str, ...]:
        def parse(text: str) -> tuple[str, ...]:
            value = json.loads(text)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(text)
            return tuple(value)

        return self._value(key, parse, f'a list of strings, e.g. ["{example}"]', ())


def project_from_environment(environ: Mapping[str, str]) -> str | None:
    """The project the gcp provider would take from the environment when gcp:project is unset."""
    return next((environ[name] for name in PROJECT_ENV_VARS if environ.get(name)), None)


def _network(
    r: _Reader, key: str, text: str, listed: tuple[str, ...] | None = None, index: int | None = None
) -> ipaddress.IPv4Network | None:
    """Parses one CIDR: a scalar setting, or element `index` of the list setting `listed`."""
    value: object = text if listed is None else listed
    where = "" if index is None else f"element {index} ({text}) "
    replace_it = "" if index is None else f"; replace it: {set_command(key, '<IPv4 CIDR>', index)}"
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        reason = f"{where}is not a valid IPv4 CIDR ({err})"
        position = r.problem(key, value, reason + replace_it, index)
        try:
            candidate = str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            return None
        hint = f"did you mean {candidate}?"
        if index is not None:
            hint += f" {set_command(key, candidate, index)}"
        r.suggest(position, candidate, f"{reason}; {hint}")
        return None
    if not isinstance(net, ipaddress.IPv4Network):
        r.problem(
            key, value, f"{where}must be an IPv4 CIDR (GCE firewall rules here are IPv4){replace_it}", index
        )
        return None
    return net


def _version(reader: _Reader, key: str, text: str) -> tuple[int, int, int] | None:
    match = VERSION.match(text)
    if not match:
        reader.problem(key, text, "must be a full version x.y.z, e.g. 1.36.4")
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def _check_machine_type(r: _Reader, machine_type: str) -> str:
    """Checks the type is a real GCE name of a series with nested virtualization and 2+ vCPUs.

    Returns the series ('' if the name does not show one).
    """
    key = "machineType"
    custom = CUSTOM_TYPE.match(machine_type)
    prefix = SERIES_PREFIX.match(machine_type)
    if custom and custom["series"] is None:
        series = "n1"
    elif prefix:
        series = prefix["series"]
    else:
        r.problem(key, machine_type, "must look like n2-standard-4, n2-custom-4-16384 or c3-standard-4-lssd")
        return ""
    if series in REJECTED_SERIES:
        r.problem(
            key,
            machine_type,
            f"{REJECTED_SERIES[series]}; use an Intel series: n2, c2, c3, or n1 with minCpuPlatform",
        )
        return series
    if series not in NESTED_VIRT_SERIES:
        r.problem(
            key,
            machine_type,
            f"series {series} is not known to support nested virtualization here; "
            "use n2, c2, c3, or n1 with minCpuPlatform",
        )
        return series
    predefined = PREDEFINED_TYPE.match(machine_type)
    looks_like = f"{series} machine types look like {MACHINE_TYPE_EXAMPLES[series]}"
    if custom:
        cpus = int(custom["cpus"])
        if series == "n1" and custom["series"]:
            position = r.problem(
                key, machine_type, f"N1 custom machine types have no series prefix; {looks_like}"
            )
            candidate = machine_type.removeprefix("n1-")
            r.suggest(
                position,
                candidate,
                f"N1 custom machine types have no series prefix; did you mean {candidate}?",
            )
            return series
        if series not in CUSTOM_SERIES:
            r.problem(key, machine_type, f"{series} has no custom machine types; {looks_like}")
            return series
    elif not predefined or predefined["kind"] not in SERIES_KINDS[series]:
        r.problem(key, machine_type, looks_like)
        return series
    else:
        cpus = int(predefined["cpus"])
        if predefined["suffix"] == "metal":
            r.problem(
                key,
                machine_type,
                "bare-metal machine types are out of scope: this program builds VMs with nested "
                f"virtualization; use a VM type, {looks_like}",
            )
            return series
        if predefined["suffix"] == "lssd" and (series not in LSSD_SERIES or predefined["kind"] != "standard"):
            r.problem(key, machine_type, f"only c3-standard types come with -lssd; {looks_like}")
            return series
    if cpus < MIN_VCPUS:
        r.problem(key, machine_type, "kubeadm needs at least 2 vCPUs; use e.g. n2-standard-2")
    return series


def _check_min_cpu_platform(r: _Reader, series: str, platform: str | None) -> None:
    """Checks the platform is one GCE offers for the series (and, on n1, Haswell or later)."""
    offered = MIN_CPU_PLATFORMS.get(series)
    if offered is None:
        return  # Not a supported series: the machineType problem says what to do.
    allowed = N1_NESTED_PLATFORMS if series == "n1" else offered
    nested = "nested virtualization on n1 needs Intel Haswell or later"
    choose = f"set one of {', '.join(allowed)}" + ("" if series == "n1" else ", or leave it empty")
    if platform is None:
        if series == "n1":
            r.problem(
                "minCpuPlatform",
                "",
                "n1 machines need a minimum CPU platform of Haswell or later for nested "
                f"virtualization; {choose}",
            )
        return
    if platform in allowed:
        return
    if platform in offered:
        position = r.problem("minCpuPlatform", platform, f"{nested}; {choose}")
    else:
        elsewhere = [s for s, platforms in MIN_CPU_PLATFORMS.items() if platform in platforms]
        found = f" ({platform} is offered on {', '.join(elsewhere)})" if elsewhere else ""
        reason = f"GCE offers {series} machines the minimum CPU platforms {', '.join(offered)}{found}"
        if series == "n1":
            reason += f", and {nested}"
        position = r.problem("minCpuPlatform", platform, f"{reason}; {choose}")
    spelled = {re.sub(r"\s+", "", p.lower()): p for p in allowed}.get(re.sub(r"\s+", "", platform.lower()))
    if spelled:
        r.suggest(position, spelled, f"did you mean {spelled} (GCE's spelling)?")


def _check_disk(r: _Reader, series: str, disk_type: str, size_gb: int) -> None:
    if disk_type not in DISK_TYPES:
        r.problem("bootDiskType", disk_type, f"must be one of {', '.join(DISK_TYPES)}")
    elif disk_type == "pd-standard" and series == "c3":
        r.problem("bootDiskType", disk_type, "c3 machines do not take pd-standard; use pd-balanced")
    elif disk_type.startswith("hyperdisk") and series != "c3":
        r.problem("bootDiskType", disk_type, f"{series} machines do not take Hyperdisk; use pd-balanced")
    if size_gb < MIN_BOOT_DISK_GB:
        r.problem(
            "bootDiskSizeGb",
            size_gb,
            f"must be at least {MIN_BOOT_DISK_GB} (Ubuntu, Kubernetes and Kata images)",
        )


def _check_networks(r: _Reader, subnet: str, pods: str, services: str, nodes: int) -> None:
    named = {
        key: net
        for key, net in (
            ("subnetCidr", _network(r, "subnetCidr", subnet)),
            ("podCidr", _network(r, "podCidr", pods)),
            ("serviceCidr", _network(r, "serviceCidr", services)),
        )
        if net is not None
    }
    node_net = named.get("subnetCidr")
    if node_net is not None and node_net.prefixlen > GCE_SMALLEST_SUBNET_PREFIX:
        r.problem(
            "subnetCidr",
            str(node_net),
            f"GCE subnets are /{GCE_SMALLEST_SUBNET_PREFIX} or larger; use e.g. {node_net.supernet(new_prefix=24)}",
        )
    elif node_net is not None and node_net.num_addresses - GCE_RESERVED_ADDRESSES < nodes:
        r.problem(
            "subnetCidr",
            str(node_net),
            f"has {node_net.num_addresses - GCE_RESERVED_ADDRESSES} usable addresses (GCE reserves "
            f"{GCE_RESERVED_ADDRESSES}), fewer than the {nodes} nodes; use a larger range, e.g. a /24",
        )
    keys = list(named)
    for i, first in enumerate(keys):
        for second in keys[i + 1 :]:
            if named[first].overlaps(named[second]):
                r.problem(
                    second,
                    str(named[second]),
                    f"overlaps {first} ({named[first]}); node, pod and service ranges must be disjoint",
                )


def _check_control_plane_count(r: _Reader, count: int) -> None:
    """1, 3 or 5: each control plane is an etcd member, and etcd commits on a majority."""
    key = "controlPlaneCount"
    if count in CONTROL_PLANE_COUNTS:
        return
    if count < 1:
        r.problem(
            key,
            count,
            "at least 1 control-plane node is needed (it runs the API server and etcd); use 1, 3 or 5, "
            f"e.g. {set_command(key, '1')}",
        )
    elif count > (most := max(CONTROL_PLANE_COUNTS)):
        r.problem(
            key,
            count,
            "etcd writes get slower with every member (each write waits for a majority of them), and "
            f"{most} members already tolerate {_failures(most)}; use {most}: {set_command(key, str(most))}",
        )
    else:
        below, above = count - 1, count + 1
        r.problem(
            key,
            count,
            "etcd needs a majority of its members to agree, so an even count tolerates no more member "
            f"failures than the odd count below it ({count} tolerate {_failures(count)}, like {below}); "
            f"use 1, 3 or 5: {below} for the same tolerance with one VM fewer "
            f"({set_command(key, str(below))}) or {above} to tolerate {_failures(above)} "
            f"({set_command(key, str(above))})",
        )


def _failures(members: int) -> str:
    """How many member failures etcd with this many members survives (it needs a majority)."""
    tolerated = (members - 1) // 2
    return f"{tolerated} failure" + ("" if tolerated == 1 else "s")


def _check_zones(r: _Reader, zones: tuple[str, ...], region: str) -> None:
    """Each element a zone of gcp:region, listed once; every bad element is reported."""
    key = "zones"
    example = f"{region}-a" if REGION.match(region) else "us-central1-a"
    for index, name in enumerate(zones):
        where = f"element {index} ({name})"
        replace_it = f"replace it: {set_command(key, '<zone>', index)}"
        match = ZONE.match(name)
        if not match:
            reason = f"{where} is not a zone name such as {example}"
            position = r.problem(key, zones, f"{reason}; {replace_it}", index)
            if REGION.match(region) and re.fullmatch(r"[a-z]", name):
                # Just the zone's letter: offer it in gcp:region.
                candidate = f"{region}-{name}"
                r.suggest(
                    position,
                    candidate,
                    f"{reason}; did you mean {candidate}? {set_command(key, candidate, index)}",
                )
        elif match["region"] != region:
            r.problem(
                key,
                zones,
                f"{where} lies in region {match['region']}, not in gcp:region {region}; {replace_it}",
                index,
            )
        elif name in zones[:index]:
            r.problem(
                key,
                zones,
                f"{where} repeats element {zones.index(name)}; list each zone once: remove it with "
                f"{remove_command(key, index)}",
                index,
            )


def _check_versions(r: _Reader, kubernetes_version: str, kata_version: str) -> None:
    k8s = _version(r, "kubernetesVersion", kubernetes_version)
    if k8s and (k8s[0] != 1 or k8s[1] not in versions.KUBERNETES_MINORS):
        supported = versions.KUBERNETES_MINORS
        r.problem(
            "kubernetesVersion",
            kubernetes_version,
            f"supported minors are 1.{supported.start} to 1.{supported.stop - 1} "
            "(kubeadm v1beta4 config and Istio 1.30's support range)",
        )
    kata = _version(r, "kataVersion", kata_version)
    if kata is None:
        return
    minimum = ".".join(map(str, versions.KATA_MINIMUM))
    if kata < versions.KATA_MINIMUM:
        r.problem(
            "kataVersion",
            kata_version,
            f"must be {minimum} or later: older guest kernels lack the nf_tables and legacy "
            "ip6tables support Istio's sidecar init needs",
        )
    elif kata[0] != versions.KATA_MAJOR:
        r.problem(
            "kataVersion",
            kata_version,
            "must be a 3.x release (4.x ships its runtime in a separate tarball)",
        )
    elif kata_version not in versions.KATA_RELEASES:
        r.problem(
            "kataVersion",
            kata_version,
            f"no pinned sha256 for this release; use one of {', '.join(versions.KATA_RELEASES)} "
            "or add its checksum to components/versions.py",
        )


@dataclass(frozen=True)
class _Exposure:
    """What an allowed-CIDRs setting opens, for its messages."""

    # What the listed ranges reach, e.g. "SSH (22) on every node".
    reaches: str
    # What anyone on the internet could then do, were the ranges world-open.
    risk: str


def _exposures(gateway_node_port: int, private_nodes: bool) -> dict[str, _Exposure]:
    return {
        "sshAllowedCidrs": _Exposure(
            "SSH (22) on the bastion, the only way to the private nodes"
            if private_nodes
            else "SSH (22) on every node",
            "anyone on the internet could try SSH logins on every node, with any key that leaks, "
            "and reach any sshd flaw before it is patched",
        ),
        "apiAllowedCidrs": _Exposure(
            "the Kubernetes API (6443)",
            "anyone on the internet could reach the Kubernetes API server: try stolen or leaked "
            "credentials and tokens, and probe it for flaws",
        ),
        "gatewayAllowedCidrs": _Exposure(
            f"the Istio ingress gateway (NodePort {gateway_node_port} on every node)",
            "anyone on the internet could call httpbin, and whatever else is routed through the "
            "ingress gateway",
        ),
    }


def _check_allowed_cidrs(
    r: _Reader,
    key: str,
    cidrs: tuple[str, ...],
    exposure: _Exposure,
    allow_world_access: bool,
    missing: str | None = None,
) -> None:
    """Each element an IPv4 CIDR, none open to the world without the override; `missing` is the
    fix when the list is empty and must not be (None: it may be empty)."""
    if not cidrs and missing is not None:
        r.problem(key, [], missing)
    for index, cidr in enumerate(cidrs):
        net = _network(r, key, cidr, cidrs, index)
        if net is None or net.prefixlen >= WORLD_OPEN_PREFIX or allow_world_access:
            continue
        r.problem(
            key,
            cidrs,
            f"element {index} ({cidr}) counts as open to the world: its prefix is shorter than "
            f"/{WORLD_OPEN_PREFIX}, so it spans {net.num_addresses:,} addresses and {exposure.risk}. List only the addresses that "
            "need it instead, such as your own address as a /32 or your office's or VPN's egress "
            f"range: {set_command(key, '203.0.113.7/32', index)}. If it must be open to the internet, "
            "allow world-open ranges with `pulumi config set allowWorldAccess true`",
            index,
        )


def _required_fix(key: str, reaches: str, who: str = "including the machine that runs `pulumi up`") -> str:
    return (
        f"list the IPv4 CIDRs allowed to reach {reaches}, {who}, one element at a time: "
        f"{set_command(key, '203.0.113.7/32')}; nothing is opened to the world by default"
    )


def _check_access(
    r: _Reader,
    listed: Mapping[str, tuple[str, ...]],
    allow_world_access: bool,
    ingress_gateway: bool,
    gateway_node_port: int,
    private_nodes: bool,
) -> None:
    """Who may reach the cluster: sshAllowedCidrs (the bastion's, with private nodes) and
    apiAllowedCidrs are always required, gatewayAllowedCidrs with the gateway on; every listed
    range is checked, world-open ones too."""
    exposures = _exposures(gateway_node_port, private_nodes)
    for key in ("sshAllowedCidrs", "apiAllowedCidrs"):
        missing = _required_fix(key, exposures[key].reaches)
        _check_allowed_cidrs(r, key, listed[key], exposures[key], allow_world_access, missing)
    key = "gatewayAllowedCidrs"
    required = _required_fix(key, exposures[key].reaches, "its clients' ranges only")
    gateway_missing = (
        "ingressGateway is true, and the gateway has its own ranges (it does not reuse "
        f"apiAllowedCidrs): {required}. Or turn the gateway off: {set_command('ingressGateway', 'false')}"
    )
    _check_allowed_cidrs(
        r,
        key,
        listed[key],
        exposures[key],
        allow_world_access,
        gateway_missing if ingress_gateway else None,
    )


# The production stack's name: its backups are never deleted with the stack.
PRODUCTION_STACK = "prod"
# Folders as the backup names them: each part starts with a letter or digit (no "." or "..").
BACKUP_OBJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


def _check_backups(
    r: _Reader, stack: str, interval_hours: int, retention_days: int, force_destroy: bool, backup_object: str
) -> None:
    if not 1 <= interval_hours <= backup_config.MAX_INTERVAL_HOURS:
        r.problem(
            "backupIntervalHours",
            interval_hours,
            f"must be 1 to {backup_config.MAX_INTERVAL_HOURS} hours: at least one backup a week, "
            "never more than one an hour; "
            f"{', '.join(map(str, backup_config.DAILY_INTERVAL_HOURS))} run at the same hours "
            "every day",
        )
    if not 1 <= retention_days <= 365:
        r.problem(
            "backupRetentionDays",
            retention_days,
            "must be 1 to 365: fewer than one day keeps no backup to restore, and the bucket's "
            "lifecycle rule counts whole days",
        )
    if force_destroy and stack == PRODUCTION_STACK:
        r.problem(
            "backupForceDestroy",
            force_destroy,
            "is never allowed in prod: `pulumi destroy` would delete every backup with the stack. "
            f"Unset it ({set_command('backupForceDestroy', 'false')}); to remove the bucket, empty "
            "it yourself first",
        )
    if backup_object and not BACKUP_OBJECT.match(backup_object):
        r.problem(
            "backupObject",
            backup_object,
            "must be a backup's folder in the bucket, as `gcloud storage ls gs://<backupBucket>/<prefix>/` "
            "lists it (e.g. kata-mesh-prod/control-plane/20261127T060000Z-kata-mesh-prod-cp-0), or empty "
            "for the newest",
        )


def _check_project(r: _Reader, project: str) -> None:
    if not project:
        r.problem(
            "gcp:project",
            project,
            "empty; set your project's ID with `pulumi config set gcp:project <id>`",
        )
    elif not PROJECT_ID.match(project):
        r.problem(
            "gcp:project",
            project,
            "not a Google Cloud project ID (6 to 30 lowercase letters, digits or hyphens, starting "
            "with a letter and not ending with a hyphen; the ID, not the project's name or number); "
            "set it with `pulumi config set gcp:project <id>`",
        )


def _check_mesh(
    r: _Reader,
    istio_version: str,
    istio_cni: bool,
    node_port: int,
    namespace: str,
    image: str,
    bookinfo: bool,
    runc_twin: bool,
) -> None:
    istio = _version(r, "istioVersion", istio_version)
    if istio and istio[:2] != versions.ISTIO_MINOR:
        r.problem(
            "istioVersion",
            istio_version,
            "use a 1.30.x release: its support range (Kubernetes 1.32-1.36) is the one this project pins",
        )
    if istio_cni:
        r.problem(
            "istioCni",
            istio_cni,
            "Istio CNI cannot redirect traffic for Kata pods: it writes iptables rules in the host-side "
            "pod network namespace, which Kata's VM networking bypasses (kata-containers#4080, "
            "istio#58913). Set it to false; sidecars then use the istio-init container, which works in "
            "Kata 3.23+",
        )
    if not 30000 <= node_port <= 32767:
        r.problem("gatewayNodePort", node_port, "must lie in Kubernetes' NodePort range 30000-32767")
    if not DNS_LABEL.match(namespace):
        r.problem(
            "appNamespace",
            namespace,
            "must be a DNS label (at most 63 lowercase letters, digits and dashes), e.g. "
            "`pulumi config set appNamespace httpbin`",
        )
    elif namespace in RESERVED_NAMESPACES:
        r.problem(
            "appNamespace",
            namespace,
            f"namespace {namespace} belongs to {RESERVED_NAMESPACES[namespace]}; choose another, e.g. "
            "`pulumi config set appNamespace httpbin`",
        )
    elif runc_twin and len(namespace) > DNS_LABEL_MAX - len(RUNC_TWIN_NAMESPACE_SUFFIX):
        r.problem(
            "appNamespace",
            namespace,
            f"runcTwin is true and the twin runs outside the sandbox in namespace "
            f"{namespace}{RUNC_TWIN_NAMESPACE_SUFFIX}, which must fit a DNS label of {DNS_LABEL_MAX} "
            f"characters: use at most {DNS_LABEL_MAX - len(RUNC_TWIN_NAMESPACE_SUFFIX)} characters, or "
            "`pulumi config set runcTwin false`",
        )
    elif bookinfo and namespace == BOOKINFO_NAMESPACE:
        r.problem(
            "appNamespace",
            namespace,
            f"bookinfo is true and Bookinfo gets its own namespace {BOOKINFO_NAMESPACE}: the program would "
            "declare two Namespaces with that name. Choose another appNamespace "
            "(`pulumi config set appNamespace httpbin`) or turn Bookinfo off "
            "(`pulumi config set bookinfo false`)",
        )
    if not image or any(c.isspace() for c in image):
        r.problem("httpbinImage", image, "must be an image reference such as docker.io/kennethreitz/httpbin")


def _read(raw: Mapping[str, str | None], stack: str) -> tuple[_Reader, Settings | None]:
    """Validates raw config strings: the reader's problems, and Settings when there are none."""
    r = _Reader(raw)
    project = r.string(
        "gcp:project",
        missing="missing; set your project's ID with `pulumi config set gcp:project <id>` (or export "
        f"{PROJECT_ENV_VARS[0]}, which the gcp provider also reads)",
    )
    region = r.string("gcp:region")
    zone = r.string("gcp:zone")
    machine_type = r.string("machineType")
    # GCE's "Automatic" is the same as no minimum.
    min_cpu_platform = r.string("minCpuPlatform").strip() or None
    if min_cpu_platform is not None and min_cpu_platform.lower() == "automatic":
        min_cpu_platform = None
    control_plane_count = r.integer("controlPlaneCount")
    allow_control_plane_shrink = r.boolean("allowControlPlaneShrink")
    allow_control_plane_replacement = r.boolean("allowControlPlaneReplacement")
    zones = r.string_list("zones", example="us-central1-a")
    worker_count = r.integer("workerCount")
    spot = r.boolean("spot")
    boot_disk_size_gb = r.integer("bootDiskSizeGb")
    boot_disk_type = r.string("bootDiskType")
    secure_boot = r.boolean("secureBoot")
    subnet_cidr = r.string("subnetCidr")
    pod_cidr = r.string("podCidr")
    service_cidr = r.string("serviceCidr")
    ssh_allowed_cidrs = r.string_list("sshAllowedCidrs")
    api_allowed_cidrs = r.string_list("apiAllowedCidrs")
    gateway_allowed_cidrs = r.string_list("gatewayAllowedCidrs")
    allow_world_access = r.boolean("allowWorldAccess")
    private_nodes = r.boolean("privateNodes")
    bastion_machine_type = r.string("bastionMachineType")
    admin_user = r.string("adminUser")
    ssh_private_key = r.string("sshPrivateKey") or None
    kubernetes_version = r.string("kubernetesVersion")
    kata_version = r.string("kataVersion")
    node_image = r.string("nodeImage")
    artifact_mirror_url = r.string("artifactMirrorUrl").rstrip("/") or None
    istio_version = r.string("istioVersion")
    istio_cni = r.boolean("istioCni")
    ingress_gateway = r.boolean("ingressGateway")
    gateway_node_port = r.integer("gatewayNodePort")
    app_namespace = r.string("appNamespace")
    httpbin_image = r.string("httpbinImage")
    runc_twin = r.boolean("runcTwin")
    bookinfo = r.boolean("bookinfo")
    verification_run = r.string("verificationRun")
    backup_interval_hours = r.integer("backupIntervalHours")
    backup_retention_days = r.integer("backupRetentionDays")
    backup_force_destroy = r.boolean("backupForceDestroy")
    backup_object = r.string("backupObject").strip()

    if not GCE_NAME.match(stack) or len(stack) > STACK_NAME_MAX:
        r.problem(
            "stack name",
            stack,
            "must be lowercase letters, digits and dashes, start with a letter and have at most "
            f"{STACK_NAME_MAX} characters (it is part of GCE resource names)",
        )
    if "gcp:project" not in r.unreadable:
        _check_project(r, project)
    if not REGION.match(region):
        r.problem("gcp:region", region, "must be a region, e.g. `pulumi config set gcp:region us-central1`")
    zone_match = ZONE.match(zone)
    if not zone_match:
        r.problem("gcp:zone", zone, "must be a zone, e.g. `pulumi config set gcp:zone us-central1-a`")
    elif zone_match["region"] != region:
        r.problem("gcp:zone", zone, f"lies in region {zone_match['region']}, not in gcp:region {region}")
    _check_zones(r, zones, region)

    series = _check_machine_type(r, machine_type)
    _check_min_cpu_platform(r, series, min_cpu_platform)
    _check_control_plane_count(r, control_plane_count)
    if worker_count < 0:
        r.problem("workerCount", worker_count, "must be 0 or more")
    elif worker_count > 99:
        r.problem("workerCount", worker_count, "at most 99 workers (node names end in -worker-NN)")
    _check_disk(r, series, boot_disk_type, boot_disk_size_gb)
    _check_networks(
        r, subnet_cidr, pod_cidr, service_cidr, max(control_plane_count, 0) + max(worker_count, 0)
    )
    _check_access(
        r,
        {
            "sshAllowedCidrs": ssh_allowed_cidrs,
            "apiAllowedCidrs": api_allowed_cidrs,
            "gatewayAllowedCidrs": gateway_allowed_cidrs,
        },
        allow_world_access,
        ingress_gateway,
        gateway_node_port,
        private_nodes,
    )
    if private_nodes and not any(
        pattern.match(bastion_machine_type) for pattern in (SHARED_CORE_TYPE, PREDEFINED_TYPE, CUSTOM_TYPE)
    ):
        r.problem(
            "bastionMachineType",
            bastion_machine_type,
            "must be a GCE machine type for the bastion, which only forwards SSH (no nested "
            f"virtualization needed), e.g. {set_command('bastionMachineType', 'e2-small')}",
        )
    if not LINUX_USER.match(admin_user) or admin_user == "root":
        r.problem("adminUser", admin_user, "must be a lowercase Linux user name other than root")
    if ssh_private_key is not None and not PRIVATE_KEY_HEADER.match(ssh_private_key.strip()):
        r.problem(
            "sshPrivateKey",
            ssh_private_key,
            "must be a PEM/OpenSSH private key; set it with "
            "`pulumi config set --secret sshPrivateKey < ~/.ssh/id_ed25519`, or unset it to generate one",
        )
    _check_versions(r, kubernetes_version, kata_version)
    if node_image not in NODE_IMAGE_MODES:
        r.problem(
            "nodeImage",
            node_image,
            f"must be {' or '.join(NODE_IMAGE_MODES)}: baked boots nodes from the node image built "
            f"for these versions (README, Node images), stock installs everything at boot, e.g. "
            f"{set_command('nodeImage', 'stock')}",
        )
    if artifact_mirror_url and not MIRROR_URL.match(artifact_mirror_url):
        r.problem(
            "artifactMirrorUrl",
            artifact_mirror_url,
            "must be an http(s) base URL without query, e.g. https://storage.googleapis.com/my-bucket/kata-mesh",
        )

    _check_mesh(
        r, istio_version, istio_cni, gateway_node_port, app_namespace, httpbin_image, bookinfo, runc_twin
    )

    _check_backups(
        r, stack, backup_interval_hours, backup_retention_days, backup_force_destroy, backup_object
    )

    if r.problems:
        return r, None
    return r, Settings(
        stack=stack,
        project=project,
        region=region,
        zone=zone,
        machine_type=machine_type,
        min_cpu_platform=min_cpu_platform,
        control_plane_count=control_plane_count,
        allow_control_plane_shrink=allow_control_plane_shrink,
        allow_control_plane_replacement=allow_control_plane_replacement,
        zones=zones or (zone,),
        worker_count=worker_count,
        spot=spot,
        boot_disk_size_gb=boot_disk_size_gb,
        boot_disk_type=boot_disk_type,
        secure_boot=secure_boot,
        subnet_cidr=subnet_cidr,
        pod_cidr=pod_cidr,
        service_cidr=service_cidr,
        ssh_allowed_cidrs=ssh_allowed_cidrs,
        api_allowed_cidrs=api_allowed_cidrs,
        gateway_allowed_cidrs=gateway_allowed_cidrs,
        allow_world_access=allow_world_access,
        private_nodes=private_nodes,
        bastion_machine_type=bastion_machine_type,
        admin_user=admin_user,
        kubernetes_version=kubernetes_version,
        kata_version=kata_version,
        node_image=node_image,
        artifact_mirror_url=artifact_mirror_url,
        istio_version=istio_version,
        ingress_gateway=ingress_gateway,
        gateway_node_port=gateway_node_port,
        app_namespace=app_namespace,
        httpbin_image=httpbin_image,
        runc_twin=runc_twin,
        bookinfo=bookinfo,
        verification_run=verification_run,
        backup_interval_hours=backup_interval_hours,
        backup_retention_days=backup_retention_days,
        backup_force_destroy=backup_force_destroy,
        backup_object=backup_object,
        ssh_private_key=ssh_private_key,
    )


def _substituted(raw: Mapping[str, str | None], problem: Problem, candidate: str) -> dict[str, str | None]:
    """The raw config with the candidate in place of the problem's value (or list element)."""
    trial = dict(raw)
    if problem.index is None:
        trial[problem.key] = candidate
    else:
        items = json.loads(raw[problem.key] or "[]")
        items[problem.index] = candidate
        trial[problem.key] = json.dumps(items)
    return trial


def _with_hints(raw: Mapping[str, str | None], stack: str, reader: _Reader) -> list[Problem]:
    """The reader's problems, with each suggestion that passes every rule added to its fix.

    Suggestions are tried in order, each together with those already kept: one is kept when, with
    all their candidates substituted, none of their keys (or list elements) has a problem left and
    no problem appears that the config did not already have. So a user who follows every hint
    gets no new problem from them (a corrected serviceCidr may not overlap a corrected subnetCidr).
    """
    known = {(p.key, p.index, p.fix) for p in reader.problems}
    kept: list[_Suggestion] = []
    for suggestion in reader.suggestions:
        trying = [*kept, suggestion]
        trial_raw = dict(raw)
        for s in trying:
            trial_raw = _substituted(trial_raw, reader.problems[s.position], s.candidate)
        trial, _ = _read(trial_raw, stack)
        fixed = {(reader.problems[s.position].key, reader.problems[s.position].index) for s in trying}
        if all((p.key, p.index) not in fixed and (p.key, p.index, p.fix) in known for p in trial.problems):
            kept.append(suggestion)
    problems = list(reader.problems)
    for s in kept:
        problems[s.position] = replace(problems[s.position], fix=s.hinted_fix)
    return problems


def parse_settings(raw: Mapping[str, str | None], stack: str) -> Settings:
    """Builds Settings from raw config strings, or raises SettingsError listing every problem."""
    reader, settings = _read(raw, stack)
    if settings is None:
        raise SettingsError(_with_hints(raw, stack, reader))
    return settings


def load_settings() -> Settings:
    """Reads the stack's config through the Pulumi SDK and validates it."""
    import pulumi

    project = pulumi.Config()
    gcp = pulumi.Config("gcp")
    raw: dict[str, str | None] = {key: project.get(key) for key in PROJECT_KEYS}
    raw.update({key: gcp.get(key.split(":", 1)[1]) for key in GCP_KEYS})
    # Like the gcp provider, fall back to the project environment variables.
    raw["gcp:project"] = raw["gcp:project"] or project_from_environment(os.environ)
    return parse_settings(raw, pulumi.get_stack())
