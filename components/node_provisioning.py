"""Node provisioning over SSH: one remote command per node concern, in order, on every node.

Each step is a shell script in scripts/node, sent on stdin behind scripts/node/lib.sh, with its
parameters as explicit arguments. A step's trigger is a hash of exactly that, so a step re-runs
when, and only when, its script or its parameters change (or its VM is replaced).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_command as command

from components import node_config, versions

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts" / "node"
CACHE_DIR = "/var/cache/kata-mesh"
CNI_TARBALL = f"{CACHE_DIR}/{versions.CNI_PLUGINS.filename}"
# The rollout a node was last brought to (83-rollout-check.sh reads it).
ROLLOUT_MARKER = "/var/lib/kata-mesh/rollout"
KERNEL_MODULES = ("overlay", "br_netfilter", "kvm_intel", "vhost", "vhost_net", "vhost_vsock")
SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.bridge.bridge-nf-call-iptables=1",
    "net.bridge.bridge-nf-call-ip6tables=1",
)
# jq: the verification scripts build their JSON reports with it.
NODE_PACKAGES = ("ca-certificates", "curl", "gpg", "zstd", "conntrack", "socat", "jq")
# The seed's five links from /opt/kata/bin into /usr/local/bin.
KATA_LINKS = (
    "kata-runtime",
    "containerd-shim-kata-v2",
    "kata-monitor",
    "kata-collect-data.sh",
    "qemu-system-x86_64",
)
CLOUD_INIT_TIMEOUT_SECONDS = 900
# A booting VM's first step dials until sshd answers, this many times at most (a few seconds
# apart once pulumi-command's backoff has grown): bounded, so that a host key mismatch ends the
# step with its own error before the step's timeout would hide it.
BOOT_DIAL_ATTEMPTS = 120
# The GCE metadata server (metadata.google.internal), which pods may not reach; the step's
# nftables table, its ruleset file and the unit that loads it at boot.
METADATA_IP = "169.254.169.254"
METADATA_BLOCK_TABLE = "kata_mesh_metadata"
METADATA_BLOCK_RULESET = "/etc/kata-mesh/metadata-block.nft"
METADATA_BLOCK_UNIT = "/etc/systemd/system/kata-mesh-metadata-block.service"
METADATA_BLOCK_PACKAGES = ("nftables",)


@functools.cache
def script_source(name: str) -> str:
    """Each script is read once per run, however many nodes and steps send it."""
    return (SCRIPTS_DIR / name).read_text()


@dataclass(frozen=True)
class NodeStep:
    """One node concern: a script and the arguments it is run with."""

    name: str
    script: str
    args: tuple[tuple[str, str], ...]
    privileged: bool = True
    # Runs once per VM; a change on a live node is rolled node by node (components/rollout.py).
    rolled: bool = False

    @property
    def script_text(self) -> str:
        return f"{script_source('lib.sh')}\n{script_source(self.script)}"

    @property
    def command_line(self) -> str:
        runner = "sudo -n bash -s --" if self.privileged else "bash -s --"
        return " ".join([runner, *(f"--{key} {shlex.quote(value)}" for key, value in self.args)])

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(f"{self.script_text}\0{self.command_line}".encode()).hexdigest()


def with_secret_args(script_text: str, secret_args: tuple[tuple[str, str], ...]) -> str:
    """The script with secret arguments appended to "$@" on its first line: they travel on stdin,
    never on the command line, which pulumi-command prints when a command fails."""
    appended = " ".join(f"--{key} {shlex.quote(value)}" for key, value in secret_args)
    return f'set -- "$@" {appended}\n{script_text}'


@dataclass(frozen=True)
class ProvisioningSpec:
    kubernetes_version: str
    kata: versions.Artifact
    artifact_mirror_url: str | None = None
    # The podCidr setting (the program passes it; Flannel's default otherwise).
    pod_cidr: str = "10.244.0.0/16"

    def url(self, artifact: versions.Artifact) -> str:
        """Where the nodes fetch an artifact: the mirror when set, else upstream; checksums either way."""
        if self.artifact_mirror_url:
            return f"{self.artifact_mirror_url.rstrip('/')}/{artifact.filename}"
        return artifact.upstream_url


def kubernetes_apt_repository(kubernetes_version: str) -> str:
    minor = ".".join(kubernetes_version.split(".")[:2])
    return f"https://pkgs.k8s.io/core:/stable:/v{minor}/deb/"


def b64(text: str) -> str:
    """Config files travel as base64 arguments, so no quoting can bend them."""
    return base64.b64encode(text.encode()).decode()


def wait_ready_step() -> NodeStep:
    """Every machine's first step (the bastion's only one): cloud-init done, host key installed."""
    return NodeStep(
        "wait-ready",
        "00-wait-ready.sh",
        (("timeout-seconds", str(CLOUD_INIT_TIMEOUT_SECONDS)),),
        privileged=False,
    )


def rollout_hash(rolled: Sequence[NodeStep], kubernetes_version: str, apt_repository: str) -> str:
    """What a node is brought to: the rolled steps' arguments (pins, checksums, configs) and the
    Kubernetes version, not their scripts (a new script changes no node)."""
    parts = [f"{step.name}\0{step.command_line}" for step in rolled]
    return hashlib.sha256("\0".join([*parts, kubernetes_version, apt_repository]).encode()).hexdigest()


def rollout_of(steps: Sequence[NodeStep]) -> str:
    """The rollout hash the steps provision a new VM to (the kubernetes step's --rollout)."""
    return dict(next(step for step in steps if step.name == "kubernetes").args)["rollout"]


def node_steps(spec: ProvisioningSpec) -> list[NodeStep]:
    """The six steps every node runs, in order."""
    containerd_major = int(versions.CONTAINERD.version.split(".")[0])
    containerd = NodeStep(
        "containerd",
        "20-containerd.sh",
        (
            ("containerd-url", spec.url(versions.CONTAINERD)),
            ("containerd-sha256", versions.CONTAINERD.sha256),
            ("runc-url", spec.url(versions.RUNC)),
            ("runc-sha256", versions.RUNC.sha256),
            ("cni-url", spec.url(versions.CNI_PLUGINS)),
            ("cni-sha256", versions.CNI_PLUGINS.sha256),
            ("config-b64", b64(node_config.render_containerd_config(containerd_major))),
            ("unit-b64", b64(node_config.render_containerd_unit())),
            ("cache-dir", CACHE_DIR),
        ),
        rolled=True,
    )
    kata = NodeStep(
        "kata",
        "30-kata.sh",
        (
            ("kata-url", spec.url(spec.kata)),
            ("kata-sha256", spec.kata.sha256),
            ("prefix", node_config.KATA_PREFIX),
            ("bin-dir", "/usr/local/bin"),
            ("links", " ".join(KATA_LINKS)),
            ("dropin-name", node_config.KATA_DROPIN_NAME),
            ("dropin-b64", b64(node_config.render_kata_dropin())),
            ("cache-dir", CACHE_DIR),
        ),
        rolled=True,
    )
    apt_repository = kubernetes_apt_repository(spec.kubernetes_version)
    return [
        wait_ready_step(),
        NodeStep(
            "prerequisites",
            "10-prerequisites.sh",
            (
                ("modules", " ".join(KERNEL_MODULES)),
                ("sysctls", " ".join(SYSCTLS)),
                ("packages", " ".join(NODE_PACKAGES)),
            ),
        ),
        # Before containerd: no pod ever runs on a node without the block.
        NodeStep(
            "metadata-block",
            "15-metadata-block.sh",
            (
                ("pod-cidr", spec.pod_cidr),
                ("metadata-ip", METADATA_IP),
                ("table", METADATA_BLOCK_TABLE),
                ("ruleset-path", METADATA_BLOCK_RULESET),
                ("unit-path", METADATA_BLOCK_UNIT),
                ("packages", " ".join(METADATA_BLOCK_PACKAGES)),
            ),
        ),
        containerd,
        kata,
        NodeStep(
            "kubernetes",
            "40-kubernetes.sh",
            (
                ("kubernetes-version", spec.kubernetes_version),
                ("apt-repository", apt_repository),
                ("cri-socket", node_config.CONTAINERD_SOCKET),
                ("cni-tarball", CNI_TARBALL),
                ("cni-sha256", versions.CNI_PLUGINS.sha256),
                ("rollout", rollout_hash([containerd, kata], spec.kubernetes_version, apt_repository)),
                ("marker", ROLLOUT_MARKER),
            ),
            rolled=True,
        ),
    ]


@dataclass(frozen=True)
class SshTarget:
    """How the program reaches one machine over SSH: where, as whom, and whose host key to expect."""

    host: pulumi.Input[str]
    user: str
    private_key: pulumi.Input[str]
    # The machine's ED25519 host key (authorized_keys format): a different one fails the step.
    host_key: pulumi.Input[str]
    # The bastion to go through when the machine has no external address.
    proxy: SshTarget | None = None


def ssh_connection(target: SshTarget, wait_for_boot: bool = False) -> command.remote.ConnectionArgs:
    dial_error_limit = BOOT_DIAL_ATTEMPTS if wait_for_boot else 10
    proxy = target.proxy
    return command.remote.ConnectionArgs(
        host=target.host,
        user=target.user,
        private_key=target.private_key,
        host_key=target.host_key,
        proxy=None
        if proxy is None
        else command.remote.ProxyConnectionArgs(
            host=proxy.host,
            user=proxy.user,
            private_key=proxy.private_key,
            host_key=proxy.host_key,
            dial_error_limit=dial_error_limit,
            per_dial_timeout=15,
        ),
        dial_error_limit=dial_error_limit,
        per_dial_timeout=15,
    )


def remote_step(
    resource_name: str,
    step: NodeStep,
    connection: command.remote.ConnectionArgs,
    opts: pulumi.ResourceOptions,
    extra_triggers: Sequence[pulumi.Input[str]] = (),
    secret_stdout: bool = False,
    args: pulumi.Output[tuple[tuple[str, str], ...]] | None = None,
    secret_args: pulumi.Output[tuple[tuple[str, str], ...]] | None = None,
    rerun_on_change: bool = True,
) -> command.remote.Command:
    """Runs one step over SSH: its script on stdin, its arguments on the command line.

    `args`, when given, replaces the step's arguments with values known only once other
    resources exist (node addresses); the script itself is known from the start. `secret_args`
    (tokens) are added on stdin instead, as a secret.
    """
    stdin: pulumi.Input[str] = step.script_text
    if args is None:
        command_line: pulumi.Input[str] = step.command_line
        content_hash: pulumi.Input[str] = step.content_hash
    else:
        resolved = args.apply(lambda values: dataclasses.replace(step, args=values))
        command_line = resolved.apply(lambda s: s.command_line)
        content_hash = resolved.apply(lambda s: s.content_hash)
    if secret_args is not None:
        stdin = pulumi.Output.secret(
            secret_args.apply(lambda values: with_secret_args(step.script_text, values))
        )
        content_hash = pulumi.Output.all(content_hash, stdin).apply(
            lambda parts: hashlib.sha256("\0".join(parts).encode()).hexdigest()
        )
    if secret_stdout:
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["stdout"])
        )
    return command.remote.Command(
        resource_name,
        connection=connection,
        create=command_line,
        # A change of anything but the triggers (the connection: a new bastion address, a
        # rotated stack key) runs nothing again; pulumi-command would rerun `create` otherwise.
        update=":",
        stdin=stdin,
        # rerun_on_change=False: only extra_triggers run it again, never a new script or arguments
        # (a step that must run once per VM and never after, whatever the program becomes).
        triggers=[content_hash, *extra_triggers] if rerun_on_change else list(extra_triggers),
        add_previous_output_in_env=False,
        # Secret output is kept out of the logs too; stderr still shows what went wrong.
        logging=command.remote.Logging.STDERR if secret_stdout else None,
        opts=opts,
    )


@dataclass(frozen=True)
class NodeProvisioningArgs:
    ssh: SshTarget
    # The VM's id: a replaced VM is a new machine, so every step runs again on it.
    instance_id: pulumi.Input[str]
    instance: pulumi.Resource
    steps: Sequence[NodeStep]
    # What the first step waits for besides the VM (the bastion it goes through).
    after: Sequence[pulumi.Resource] = ()
    # Every step runs once per VM, whatever changes later (a node image's builder: what it builds
    # is named by its inputs hash, and a new hash is a new builder).
    once_per_vm: bool = False


class NodeProvisioning(pulumi.ComponentResource):
    """Runs the node steps over SSH, each after the previous one, on one node only."""

    steps: dict[str, command.remote.Command]
    last: command.remote.Command

    def __init__(
        self, name: str, args: NodeProvisioningArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("kata-mesh:provisioning:NodeProvisioning", name, None, opts)
        self.steps = {}
        previous: pulumi.Resource = args.instance
        for index, step in enumerate(args.steps):
            first = index == 0
            self.steps[step.name] = remote_step(
                f"{name}-{step.name}",
                step,
                ssh_connection(args.ssh, wait_for_boot=first),
                pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[previous, *(args.after if first else ())],
                    custom_timeouts=pulumi.CustomTimeouts(create="20m" if first else "30m"),
                ),
                extra_triggers=[args.instance_id],
                # A rolled step changes a live node only in its turn (components/rollout.py).
                rerun_on_change=not (step.rolled or args.once_per_vm),
            )
            previous = self.steps[step.name]
        self.last = self.steps[args.steps[-1].name]
        self.register_outputs({})
