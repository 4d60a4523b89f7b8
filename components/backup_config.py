"""Control-plane backups (issue 13), rendered by small pure functions that tests call directly: the
systemd units that run scripts/node/kata-mesh-backup.sh on every control plane, and the arguments
of the backup and of the restore step (scripts/node/45-restore-control-plane.sh).

A backup is gs://BUCKET/PREFIX/<UTC time>-<node>/ holding etcd.db (an etcd snapshot), pki.tar.gz
(kubeadm's PKI folder) and, uploaded last, manifest.json (their sha256 and sizes): a backup without
its manifest is incomplete and never restored.
"""

from __future__ import annotations

import re

# Where the installer puts the backup script, the units and what the backup and restore touch.
BACKUP_SCRIPT = "kata-mesh-backup.sh"
BACKUP_SCRIPT_PATH = "/usr/local/sbin/kata-mesh-backup"
UNIT_DIR = "/etc/systemd/system"
BACKUP_SERVICE = "kata-mesh-backup.service"
BACKUP_TIMER = "kata-mesh-backup.timer"
STAGING_DIR = "/var/backups/kata-mesh"
PKI_DIR = "/etc/kubernetes/pki"
ETCD_DATA_DIR = "/var/lib/etcd"
ETCD_MANIFEST = "/etc/kubernetes/manifests/etcd.yaml"
ETCD_PEER_PORT = 2380
# Written by the restore step; 50-kubeadm-init.sh reads it (beside its own .kata-mesh-initialized).
RESTORE_MARKER = "/etc/kubernetes/.kata-mesh-restored"
RESTORE_SCRIPT = "45-restore-control-plane.sh"

# The VM's service account token (GCE metadata server) and Cloud Storage's JSON API.
METADATA_TOKEN_URL = "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token"
STORAGE_URL = "https://storage.googleapis.com"
# The access scope the control planes' VMs need (upload, list, download).
STORAGE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"

DEFAULT_KEEP_LOCAL = 3
DEFAULT_INTERVAL_HOURS = 6
# Intervals that divide a day: OnCalendar= runs at the same hours every day.
DAILY_INTERVAL_HOURS = (1, 2, 3, 4, 6, 8, 12, 24)
WEEK_HOURS = 7 * 24
# Any whole number of hours up to a week; the others run from the last backup (and each boot).
MAX_INTERVAL_HOURS = WEEK_HOURS

_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PATH = re.compile(r"/[A-Za-z0-9._/-]+")


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    """The scripts refuse the same values; refused here, nothing odd ever reaches a unit file
    (where %, $, quotes and spaces would need systemd's own escaping)."""
    if not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} does not match {pattern.pattern}")
    return value


def backup_object_prefix(cluster_name: str) -> str:
    """Where a cluster's backups go in the bucket: every control plane of one cluster writes
    there, so the restore finds the newest whichever took it."""
    return _check(_PREFIX, f"{cluster_name}/control-plane", "backup prefix")


def etcd_peer_url(address: str) -> str:
    """The peer URL kubeadm's stacked etcd advertises for a control plane at this address."""
    return f"https://{address}:{ETCD_PEER_PORT}"


def backup_args(
    bucket: str, prefix: str, node_name: str, keep_local: int = DEFAULT_KEEP_LOCAL
) -> tuple[tuple[str, str], ...]:
    """kata-mesh-backup's arguments on a control plane (every other one has its default: the
    local member at https://127.0.0.1:2379, kubeadm's certificates, STAGING_DIR)."""
    if keep_local < 1:
        raise ValueError(f"keep_local must be 1 or more, not {keep_local}")
    return (
        ("bucket", _check(_BUCKET, bucket, "bucket")),
        ("prefix", _check(_PREFIX, prefix, "prefix")),
        ("node-name", _check(_NODE, node_name, "node name")),
        ("keep-local", str(keep_local)),
        ("staging-dir", STAGING_DIR),
    )


def render_backup_service(
    bucket: str,
    prefix: str,
    node_name: str,
    keep_local: int = DEFAULT_KEEP_LOCAL,
    script_path: str = BACKUP_SCRIPT_PATH,
) -> str:
    """kata-mesh-backup.service: one backup, as root (it reads kubeadm's keys), with the system
    read-only but for /var and its own /tmp. A node without its etcd static pod manifest (no
    control plane yet) skips the run instead of failing."""
    _check(_PATH, script_path, "script path")
    args = " ".join(f"--{key} {value}" for key, value in backup_args(bucket, prefix, node_name, keep_local))
    return f"""[Unit]
Description=kata-mesh: etcd snapshot and PKI backup of this control plane to gs://{bucket}/{prefix}/
Wants=network-online.target
After=network-online.target
ConditionPathExists={ETCD_MANIFEST}

[Service]
Type=oneshot
ExecStart={script_path} {args}
TimeoutStartSec=1h
Nice=10
IOSchedulingClass=idle
UMask=0077
PrivateTmp=true
ProtectSystem=full
ProtectHome=true
NoNewPrivileges=true
"""


def backup_schedule(interval_hours: int) -> str:
    """The [Timer] lines that set when backups run. Intervals that divide a day run at fixed hours
    of it, and a week on Mondays: Persistent= runs a backup missed while the VM was off as soon as
    it is back. Any other interval (up to a week) counts from the last backup, and a backup runs
    15 minutes after each boot (a monotonic timer does not survive a reboot)."""
    if not 1 <= interval_hours <= MAX_INTERVAL_HOURS:
        raise ValueError(f"interval_hours must be 1 to {MAX_INTERVAL_HOURS} (a week), not {interval_hours}")
    if interval_hours in DAILY_INTERVAL_HOURS:
        # 00/H: from midnight every H hours; systemd refuses a repetition as long as the day (00/24).
        hours = "00" if interval_hours == 24 else f"00/{interval_hours}"
        return f"OnCalendar=*-*-* {hours}:00:00\nPersistent=true"
    if interval_hours == WEEK_HOURS:
        return "OnCalendar=Mon *-*-* 00:00:00\nPersistent=true"
    return f"OnBootSec=15min\nOnUnitActiveSec={interval_hours}h"


def render_backup_timer(interval_hours: int = DEFAULT_INTERVAL_HOURS) -> str:
    """kata-mesh-backup.timer: every interval_hours (backup_schedule); each node waits a delay of
    its own (fixed per node), so the control planes do not all snapshot at once."""
    return f"""[Unit]
Description=kata-mesh: back up this control plane every {interval_hours} h

[Timer]
{backup_schedule(interval_hours)}
RandomizedDelaySec=15min
FixedRandomDelay=true
AccuracySec=1min
Unit={BACKUP_SERVICE}

[Install]
WantedBy=timers.target
"""


def restore_args(
    bucket: str,
    prefix: str,
    node_name: str,
    peer_url: str,
    backup_object: str = "",
    metadata_url: str = METADATA_TOKEN_URL,
    storage_url: str = STORAGE_URL,
    rejoining: bool = False,
) -> tuple[tuple[str, str], ...]:
    """45-restore-control-plane.sh's arguments on the first control plane (backup_object: a
    backup to restore instead of the newest, PREFIX/<time>-<node>; rejoining: it joins the control
    planes that survive, and nothing is restored)."""
    return (
        ("bucket", _check(_BUCKET, bucket, "bucket")),
        ("prefix", _check(_PREFIX, prefix, "prefix")),
        ("node-name", _check(_NODE, node_name, "node name")),
        ("peer-url", peer_url),
        ("data-dir", ETCD_DATA_DIR),
        ("pki-dir", PKI_DIR),
        ("marker-file", RESTORE_MARKER),
        ("backup-object", backup_object),
        ("metadata-url", metadata_url),
        ("storage-url", storage_url),
        ("rejoining", "true" if rejoining else "false"),
    )
