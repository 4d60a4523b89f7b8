"""Backups of the control plane (issue 13): a Cloud Storage bucket per stack that only the nodes' own
service account may write, with the newest backup read back at each `pulumi up` without SSH; the
etcd tools and the restore on a new first control plane before `kubeadm init`; a backup timer on
every control plane once it serves. The scripts' formats: components/backup_config.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_gcp as gcp
import pulumi_random as random

from components import backup_config, node_config
from components.cluster import CERTIFICATE_KEY_BYTES, JOIN_TOKEN_TTL, NODE_REMOVAL_TIMEOUT_SECONDS, Rejoin
from components.node_provisioning import NodeStep, b64, remote_step, script_source, ssh_connection
from components.nodes import NodeVm

# Written last by a backup (PREFIX/<UTC time>-<node>/), so a backup with it is complete.
MANIFEST_NAME = "manifest.json"
# Where the etcd tools go, taken from the etcd image kubeadm pins (47-etcd-tools.sh).
ETCD_TOOLS = ("etcdctl", "etcdutl")
BIN_DIR = "/usr/local/bin"
# Installs a script with the systemd service and timer that run it (backups, certificate renewal).
INSTALL_TIMER_SCRIPT = "75-install-timer.sh"
# On a surviving control plane, when the first one is on a new VM: its join (a rejoin).
REJOIN_TOKEN_SCRIPT = "62-rejoin-token.sh"
# How long the survivor waits for its own API server before it refuses.
SURVIVOR_API_TIMEOUT_SECONDS = 300
# The fewest control planes with which one can be lost and the others keep etcd's quorum.
CONTROL_PLANES_TO_SURVIVE_ONE = 3
# What the nodes may do there: add objects (never replace or delete one) and read them back.
NODE_ROLES = ("roles/storage.objectCreator", "roles/storage.objectViewer")


@dataclass(frozen=True)
class BackupBucketArgs:
    name_prefix: str
    region: str
    node_service_account_email: pulumi.Input[str]
    # Where the cluster's backups go in the bucket (backup_config.backup_object_prefix).
    prefix: str
    retention_days: int
    # Let `pulumi destroy` delete a bucket that still holds backups (never in prod).
    force_destroy: bool


def newest_backup(names: list[str]) -> str | None:
    """The newest complete backup's folder (PREFIX/<UTC time>-<node>), from the bucket's object
    names: the times sort as text, and a folder without its manifest is incomplete."""
    complete = sorted(name.rsplit("/", 1)[0] for name in names if name.endswith(f"/{MANIFEST_NAME}"))
    return complete[-1] if complete else None


class BackupBucket(pulumi.ComponentResource):
    """A regional bucket: uniform access, public access prevented, versioned, objects kept
    retention_days; the nodes' service account may add and read objects, nothing else."""

    name: pulumi.Output[str]
    newest: pulumi.Output[str | None]

    def __init__(self, name: str, args: BackupBucketArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:backups:BackupBucket", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Bucket names are global: the stack's prefix and a random suffix keep it unique.
        suffix = random.RandomId(f"{name}-suffix", byte_length=4, opts=child)
        self.bucket = gcp.storage.Bucket(
            name,
            name=suffix.hex.apply(lambda hex_: f"{args.name_prefix}-backups-{hex_}"),
            location=args.region,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            versioning=gcp.storage.BucketVersioningArgs(enabled=True),
            lifecycle_rules=[
                gcp.storage.BucketLifecycleRuleArgs(
                    action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                    # Live objects only: the rule below counts a replaced version's days itself.
                    condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                        age=args.retention_days, with_state="LIVE"
                    ),
                ),
                # Versions replaced or deleted by hand are kept as long, then go too.
                gcp.storage.BucketLifecycleRuleArgs(
                    action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                    condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                        days_since_noncurrent_time=args.retention_days, with_state="ARCHIVED"
                    ),
                ),
            ],
            force_destroy=args.force_destroy,
            labels={"app": "kata-mesh"},
            # Without force_destroy, `pulumi destroy` leaves the bucket and its backups in the
            # project (GCE would refuse to delete a bucket that holds objects anyway).
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=not args.force_destroy),
        )
        self.name = self.bucket.name
        self.node_access = [
            gcp.storage.BucketIAMMember(
                f"{name}-nodes-{role.rsplit('.', 1)[1].lower()}",
                bucket=self.bucket.name,
                role=role,
                member=pulumi.Output.concat("serviceAccount:", args.node_service_account_email),
                opts=child,
            )
            for role in NODE_ROLES
        ]
        listing = gcp.storage.get_bucket_objects_output(
            bucket=self.bucket.name, prefix=f"{args.prefix}/", opts=pulumi.InvokeOutputOptions(parent=self)
        )
        self.newest = listing.bucket_objects.apply(lambda objects: newest_backup([o.name for o in objects]))
        self.register_outputs({"name": self.name, "newest": self.newest})


def etcd_tools_step(kubernetes_version: str) -> NodeStep:
    """47-etcd-tools.sh: etcdctl and etcdutl of the cluster's etcd, from the image kubeadm pins."""
    return NodeStep(
        "etcd-tools",
        "47-etcd-tools.sh",
        (
            ("kubernetes-version", kubernetes_version),
            ("cri-socket", node_config.CONTAINERD_SOCKET),
            ("bin-dir", BIN_DIR),
            ("tools", " ".join(ETCD_TOOLS)),
        ),
    )


@dataclass(frozen=True)
class ControlPlaneRestoreArgs:
    control_planes: Sequence[NodeVm]
    # The last provisioning step of each node, by node name.
    provisioned: Mapping[str, pulumi.Resource]
    kubernetes_version: str
    bucket: pulumi.Input[str]
    prefix: str
    # A backup's folder to restore instead of the newest ("").
    backup_object: str
    # The bucket's IAM members: the node's token must be able to list and read before it asks.
    bucket_access: Sequence[pulumi.Resource]


def rejoin_token_step(node_name: str) -> NodeStep:
    """62-rejoin-token.sh on the second control plane, for the first one (node_name)."""
    return NodeStep(
        "rejoin-token",
        REJOIN_TOKEN_SCRIPT,
        (
            ("node-name", node_name),
            ("ttl", JOIN_TOKEN_TTL),
            ("timeout-seconds", str(NODE_REMOVAL_TIMEOUT_SECONDS)),
            ("api-timeout-seconds", str(SURVIVOR_API_TIMEOUT_SECONDS)),
        ),
    )


class ControlPlaneRestore(pulumi.ComponentResource):
    """How a new VM of the first control plane comes back as the same cluster. With 3 or more
    control planes, the second one is asked first: while it serves, the new VM joins it and the
    others (rejoin). Otherwise the newest backup (or backup_object) is restored before `kubeadm
    init`: the cluster comes back with its CA and data. With no backup in the bucket nothing is
    restored and init makes a new cluster. The etcd tools go on every control plane."""

    tools: dict[str, command.remote.Command]
    restore: command.remote.Command
    # None with a single control plane: nothing can survive it.
    rejoin: Rejoin | None

    def __init__(
        self, name: str, args: ControlPlaneRestoreArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("kata-mesh:backups:ControlPlaneRestore", name, None, opts)
        step = etcd_tools_step(args.kubernetes_version)
        self.tools = {
            vm.node_name: remote_step(
                f"{vm.node_name}-etcd-tools",
                step,
                ssh_connection(vm.ssh),
                pulumi.ResourceOptions(parent=self, depends_on=[args.provisioned[vm.node_name]]),
                extra_triggers=[vm.instance_id],
            )
            for vm in args.control_planes
        }
        cp = args.control_planes[0]
        self.rejoin = None
        rejoining: pulumi.Output[bool] = pulumi.Output.from_input(False)
        asked: list[pulumi.Resource] = []
        if len(args.control_planes) >= CONTROL_PLANES_TO_SURVIVE_ONE:
            survivor = args.control_planes[1]
            certificate_key = random.RandomBytes(
                f"{cp.node_name}-rejoin-certificate-key",
                length=CERTIFICATE_KEY_BYTES,
                opts=pulumi.ResourceOptions(parent=self),
            )
            # Once per new first-control-plane VM, never for a new script: run later, it would
            # make a join for a VM that is initialised already.
            token = remote_step(
                f"{cp.node_name}-rejoin-token",
                rejoin_token_step(cp.node_name),
                ssh_connection(survivor.ssh),
                pulumi.ResourceOptions(parent=self, depends_on=[args.provisioned[survivor.node_name]]),
                extra_triggers=[cp.instance_id],
                secret_stdout=True,
                secret_args=certificate_key.hex.apply(lambda key: (("certificate-key", key),)),
                rerun_on_change=False,
            )
            self.rejoin = Rejoin(
                join_command=pulumi.Output.secret(token.stdout),
                certificate_key=certificate_key.hex,
                via=pulumi.Output.from_input(survivor.internal_ip),
            )
            # Whether a join was made says nothing of the token in it.
            rejoining = pulumi.Output.unsecret(token.stdout.apply(lambda out: bool(out.strip())))
            asked.append(token)
        restore_args = pulumi.Output.all(args.bucket, cp.internal_ip, rejoining).apply(
            lambda values: backup_config.restore_args(
                values[0],
                args.prefix,
                cp.node_name,
                backup_config.etcd_peer_url(values[1]),
                backup_object=args.backup_object,
                rejoining=values[2],
            )
        )
        # A new VM only (its instance id): a running first control plane is never restored over.
        self.restore = remote_step(
            f"{cp.node_name}-restore",
            NodeStep("restore-control-plane", backup_config.RESTORE_SCRIPT, ()),
            ssh_connection(cp.ssh),
            pulumi.ResourceOptions(
                parent=self, depends_on=[self.tools[cp.node_name], *args.bucket_access, *asked]
            ),
            extra_triggers=[cp.instance_id],
            args=restore_args,
        )
        self.register_outputs({})


@dataclass(frozen=True)
class BackupScheduleArgs:
    control_planes: Sequence[NodeVm]
    # What makes each control plane serve (init on the first, its join on the others), by name.
    served: Mapping[str, pulumi.Resource]
    # Each control plane's etcd tools step, by name (the backup runs them).
    tools: Mapping[str, pulumi.Resource]
    bucket: pulumi.Input[str]
    prefix: str
    interval_hours: int
    # What else the timers wait for: the whole cluster ready, so that the first control plane's
    # SSH sessions during the joins stay within their bound (components/cluster.py, SshLanes).
    after: Sequence[pulumi.Resource] = ()


def backup_timer_step(bucket: str, prefix: str, node_name: str, interval_hours: int) -> NodeStep:
    """75-install-timer.sh: the backup script, its service and timer for this control plane; the
    first backup at once."""
    return NodeStep(
        "backup-timer",
        INSTALL_TIMER_SCRIPT,
        (
            ("script-b64", b64(script_source(backup_config.BACKUP_SCRIPT))),
            ("script-path", backup_config.BACKUP_SCRIPT_PATH),
            ("service-b64", b64(backup_config.render_backup_service(bucket, prefix, node_name))),
            ("timer-b64", b64(backup_config.render_backup_timer(interval_hours))),
            ("unit-dir", backup_config.UNIT_DIR),
            ("service-name", backup_config.BACKUP_SERVICE),
            ("timer-name", backup_config.BACKUP_TIMER),
            ("private-dir", backup_config.STAGING_DIR),
            ("run-now", "true"),
        ),
    )


class BackupSchedule(pulumi.ComponentResource):
    """The backup timer on every control plane, installed once it serves (the first backup runs
    at once)."""

    timers: dict[str, command.remote.Command]

    def __init__(
        self, name: str, args: BackupScheduleArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("kata-mesh:backups:BackupSchedule", name, None, opts)
        self.timers = {}
        for vm in args.control_planes:
            # The script is known now; its arguments once the bucket has its name.
            self.timers[vm.node_name] = remote_step(
                f"{vm.node_name}-backup-timer",
                NodeStep("backup-timer", INSTALL_TIMER_SCRIPT, ()),
                ssh_connection(vm.ssh),
                pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[args.served[vm.node_name], args.tools[vm.node_name], *args.after],
                ),
                extra_triggers=[vm.instance_id],
                args=pulumi.Output.from_input(args.bucket).apply(
                    lambda bucket, vm=vm: (
                        backup_timer_step(bucket, args.prefix, vm.node_name, args.interval_hours).args
                    )
                ),
            )
        self.register_outputs({})
