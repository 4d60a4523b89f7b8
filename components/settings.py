"""The stack's settings: one typed, frozen object, validated before any resource is declared.

Defaults live in Pulumi.yaml only (the CLI applies them); `parse_settings` is a pure function of
the raw config strings so tests can call it directly, and it reports every problem at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from components import versions

T = TypeVar("T")

# Project keys (namespace kata-mesh), each declared with a default in Pulumi.yaml.
PROJECT_KEYS = (
    "machineType",
    "minCpuPlatform",
    "controlPlaneCount",
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
    "adminUser",
    "sshPrivateKey",
    "kubernetesVersion",
    "kataVersion",
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
)
# Provider keys every stack file sets.
GCP_KEYS = ("gcp:region", "gcp:zone")
SECRET_KEYS = frozenset({"sshPrivateKey"})

# Series with Intel VT-x exposed to guests (REFERENCE section 3). N1 also needs a CPU platform.
NESTED_VIRT_SERIES = ("n2", "c2", "c3", "n1")
N1_NESTED_PLATFORMS = ("Intel Haswell", "Intel Broadwell", "Intel Skylake")
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
DISK_TYPES = ("pd-balanced", "pd-ssd", "pd-standard", "hyperdisk-balanced")
MIN_BOOT_DISK_GB = 30
# kubeadm's preflight check NumCPU refuses fewer than 2 vCPUs.
MIN_VCPUS = 2
GCE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# The node service account id "km-<stack>-nodes" may have at most 30 characters.
STACK_NAME_MAX = 30 - len("km--nodes")
LINUX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
MACHINE_TYPE = re.compile(r"^(?P<series>[a-z][a-z0-9]*)-(?P<kind>[a-z]+)-(?P<cpus>\d+)(-(?P<mem>\d+))?$")
ZONE = re.compile(r"^(?P<region>[a-z]+-[a-z]+\d+)-[a-z]$")
REGION = re.compile(r"^[a-z]+-[a-z]+\d+$")
MIRROR_URL = re.compile(r"^https?://[^\s?#]+$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
RESERVED_NAMESPACES = (
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "kube-flannel",
    "istio-system",
    "istio-ingress",
)
PRIVATE_KEY_HEADER = re.compile(r"^-----BEGIN (OPENSSH|RSA|EC) PRIVATE KEY-----")


@dataclass(frozen=True)
class Problem:
    key: str
    value: object
    fix: str

    def __str__(self) -> str:
        shown = "<secret>" if self.key in SECRET_KEYS else repr(self.value)
        return f"{self.key} = {shown}: {self.fix}"


class SettingsError(ValueError):
    """Every problem found in the stack's settings, reported together."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{len(problems)} problem(s) in the stack settings "
            f"(fix with `pulumi config set <key> <value>`):\n{lines}"
        )


@dataclass(frozen=True)
class Settings:
    stack: str
    region: str
    zone: str
    machine_type: str
    min_cpu_platform: str | None
    control_plane_count: int
    worker_count: int
    spot: bool
    boot_disk_size_gb: int
    boot_disk_type: str
    secure_boot: bool
    subnet_cidr: str
    pod_cidr: str
    service_cidr: str
    ssh_allowed_cidrs: tuple[str, ...]
    api_allowed_cidrs: tuple[str, ...]
    admin_user: str
    kubernetes_version: str
    kata_version: str
    artifact_mirror_url: str | None
    istio_version: str
    ingress_gateway: bool
    gateway_node_port: int
    app_namespace: str
    httpbin_image: str
    runc_twin: bool
    bookinfo: bool
    verification_run: str
    # A user-supplied key is plain text only here; components wrap it with Output.secret.
    ssh_private_key: str | None = field(default=None, repr=False)

    @property
    def name_prefix(self) -> str:
        """Prefix of every GCE resource name, so stacks can share one project."""
        return f"kata-mesh-{self.stack}"

    @property
    def kata(self) -> versions.Artifact:
        return versions.KATA_RELEASES[self.kata_version]


class _Reader:
    """Parses raw config strings, collecting problems instead of stopping at the first."""

    def __init__(self, raw: Mapping[str, str | None]) -> None:
        self.raw = raw
        self.problems: list[Problem] = []
        # Keys already reported as missing or unparsable: one problem per bad value is enough.
        self.unreadable: set[str] = set()

    def problem(self, key: str, value: object, fix: str) -> None:
        if key not in self.unreadable:
            self.problems.append(Problem(key, value, fix))

    def _value(self, key: str, parse: Callable[[str], T], kind: str, fallback: T) -> T:
        text = self.raw.get(key)
        if text is None:
            self.problem(key, None, f"missing; set it with `pulumi config set {key} <value>` ({kind})")
            self.unreadable.add(key)
            return fallback
        try:
            return parse(text)
        except ValueError:
            self.problem(key, text, f"must be {kind}")
            self.unreadable.add(key)
            return fallback

    def string(self, key: str) -> str:
        return self._value(key, str, "a string", "")

    def integer(self, key: str) -> int:
        return self._value(key, int, "an integer", 0)

    def boolean(self, key: str) -> bool:
        def parse(text: str) -> bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"

        return self._value(key, parse, "true or false", False)

    def string_list(self, key: str) -> tuple[str, ...]:
        def parse(text: str) -> tuple[str, ...]:
            value = json.loads(text)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(text)
            return tuple(value)

        return self._value(key, parse, 'a list of strings, e.g. ["203.0.113.7/32"]', ())


def _network(reader: _Reader, key: str, text: str) -> ipaddress.IPv4Network | None:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        hint = ""
        with contextlib.suppress(ValueError):
            hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
        reader.problem(key, text, f"not a valid IPv4 CIDR ({err}){hint}")
        return None
    if not isinstance(net, ipaddress.IPv4Network):
        reader.problem(key, text, "must be an IPv4 CIDR (GCE firewall rules here are IPv4)")
        return None
    return net


def _version(reader: _Reader, key: str, text: str) -> tuple[int, int, int] | None:
    match = VERSION.match(text)
    if not match:
        reader.problem(key, text, "must be a full version x.y.z, e.g. 1.36.4")
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def _check_machine_type(r: _Reader, machine_type: str, min_cpu_platform: str | None) -> str:
    """Checks the series supports nested virtualization; returns the series ('' if unknown)."""
    match = MACHINE_TYPE.match(machine_type)
    if not match:
        r.problem("machineType", machine_type, "must look like n2-standard-4 or n2-custom-4-16384")
        return ""
    series = match["series"]
    if series in REJECTED_SERIES:
        r.problem(
            "machineType",
            machine_type,
            f"{REJECTED_SERIES[series]}; use an Intel series: n2, c2, c3, or n1 with minCpuPlatform",
        )
    elif series not in NESTED_VIRT_SERIES:
        r.problem(
            "machineType",
            machine_type,
            f"series {series} is not known to support nested virtualization here; "
            "use n2, c2, c3, or n1 with minCpuPlatform",
        )
    elif int(match["cpus"]) < MIN_VCPUS:
        r.problem("machineType", machine_type, "kubeadm needs at least 2 vCPUs; use e.g. n2-standard-2")
    if series == "n1" and min_cpu_platform not in N1_NESTED_PLATFORMS:
        r.problem(
            "minCpuPlatform",
            min_cpu_platform or "",
            "n1 machines need a minimum CPU platform of Haswell or later for nested "
            f"virtualization; set one of {', '.join(N1_NESTED_PLATFORMS)}",
        )
    return series


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


def _check_networks(r: _Reader, subnet: str, pods: str, services: str) -> None:
    named = {
        key: net
        for key, net in (
            ("subnetCidr", _network(r, "subnetCidr", subnet)),
            ("podCidr", _network(r, "podCidr", pods)),
            ("serviceCidr", _network(r, "serviceCidr", services)),
        )
        if net is not None
    }
    keys = list(named)
    for i, first in enumerate(keys):
        for second in keys[i + 1 :]:
            if named[first].overlaps(named[second]):
                r.problem(
                    second,
                    str(named[second]),
                    f"overlaps {first} ({named[first]}); node, pod and service ranges must be disjoint",
                )


def _check_allowed_cidrs(r: _Reader, key: str, cidrs: tuple[str, ...], purpose: str) -> None:
    if not cidrs:
        r.problem(
            key,
            [],
            f"list the IPv4 CIDRs allowed to reach {purpose}, including the machine that runs "
            f'`pulumi up` (e.g. ["203.0.113.7/32"]); nothing is opened to the world by default',
        )
    for cidr in cidrs:
        _network(r, key, cidr)


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


def _check_mesh(
    r: _Reader, istio_version: str, istio_cni: bool, node_port: int, namespace: str, image: str
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
    if not DNS_LABEL.match(namespace) or namespace in RESERVED_NAMESPACES:
        r.problem(
            "appNamespace",
            namespace,
            f"must be a DNS label (lowercase letters, digits, dashes) other than {', '.join(RESERVED_NAMESPACES)}",
        )
    if not image or any(c.isspace() for c in image):
        r.problem("httpbinImage", image, "must be an image reference such as docker.io/kennethreitz/httpbin")


def parse_settings(raw: Mapping[str, str | None], stack: str) -> Settings:
    """Builds Settings from raw config strings, or raises SettingsError listing every problem."""
    r = _Reader(raw)
    region = r.string("gcp:region")
    zone = r.string("gcp:zone")
    machine_type = r.string("machineType")
    min_cpu_platform = r.string("minCpuPlatform") or None
    control_plane_count = r.integer("controlPlaneCount")
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
    admin_user = r.string("adminUser")
    ssh_private_key = r.string("sshPrivateKey") or None
    kubernetes_version = r.string("kubernetesVersion")
    kata_version = r.string("kataVersion")
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

    if not GCE_NAME.match(stack) or len(stack) > STACK_NAME_MAX:
        r.problem(
            "stack name",
            stack,
            "must be lowercase letters, digits and dashes, start with a letter and have at most "
            f"{STACK_NAME_MAX} characters (it is part of GCE resource names)",
        )
    if not REGION.match(region):
        r.problem("gcp:region", region, "must be a region, e.g. `pulumi config set gcp:region us-central1`")
    zone_match = ZONE.match(zone)
    if not zone_match:
        r.problem("gcp:zone", zone, "must be a zone, e.g. `pulumi config set gcp:zone us-central1-a`")
    elif zone_match["region"] != region:
        r.problem("gcp:zone", zone, f"lies in region {zone_match['region']}, not in gcp:region {region}")

    series = _check_machine_type(r, machine_type, min_cpu_platform)
    if control_plane_count != 1:
        r.problem(
            "controlPlaneCount",
            control_plane_count,
            "only 1 control-plane node is supported for now (no HA control plane yet); set 1",
        )
    if worker_count < 0:
        r.problem("workerCount", worker_count, "must be 0 or more")
    elif worker_count > 99:
        r.problem("workerCount", worker_count, "at most 99 workers (node names end in -worker-NN)")
    _check_disk(r, series, boot_disk_type, boot_disk_size_gb)
    _check_networks(r, subnet_cidr, pod_cidr, service_cidr)
    _check_allowed_cidrs(r, "sshAllowedCidrs", ssh_allowed_cidrs, "SSH (22) on every node")
    _check_allowed_cidrs(r, "apiAllowedCidrs", api_allowed_cidrs, "the Kubernetes API (6443)")
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
    if artifact_mirror_url and not MIRROR_URL.match(artifact_mirror_url):
        r.problem(
            "artifactMirrorUrl",
            artifact_mirror_url,
            "must be an http(s) base URL without query, e.g. https://storage.googleapis.com/my-bucket/kata-mesh",
        )

    _check_mesh(r, istio_version, istio_cni, gateway_node_port, app_namespace, httpbin_image)

    if r.problems:
        raise SettingsError(r.problems)
    return Settings(
        stack=stack,
        region=region,
        zone=zone,
        machine_type=machine_type,
        min_cpu_platform=min_cpu_platform,
        control_plane_count=control_plane_count,
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
        admin_user=admin_user,
        kubernetes_version=kubernetes_version,
        kata_version=kata_version,
        artifact_mirror_url=artifact_mirror_url,
        istio_version=istio_version,
        ingress_gateway=ingress_gateway,
        gateway_node_port=gateway_node_port,
        app_namespace=app_namespace,
        httpbin_image=httpbin_image,
        runc_twin=runc_twin,
        bookinfo=bookinfo,
        verification_run=verification_run,
        ssh_private_key=ssh_private_key,
    )


def load_settings() -> Settings:
    """Reads the stack's config through the Pulumi SDK and validates it."""
    import pulumi

    project = pulumi.Config()
    gcp = pulumi.Config("gcp")
    raw: dict[str, str | None] = {key: project.get(key) for key in PROJECT_KEYS}
    raw.update({key: gcp.get(key.split(":", 1)[1]) for key in GCP_KEYS})
    return parse_settings(raw, pulumi.get_stack())
