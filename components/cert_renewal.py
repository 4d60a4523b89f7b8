"""kubeadm certificate renewal (issue 13), rendered by small pure functions that tests call
directly: the systemd service and timer that run scripts/node/kata-mesh-renew-certs.sh on every
control plane, and its arguments.

Why a weekly check with a 90-day window renews well before expiry: kubeadm's leaf certificates
(the API server's, etcd's, the kubeconfigs' client certificates) last 365 days. The script does
nothing unless one of them expires within RENEW_WITHIN_DAYS, so the check itself can run often:
the first weekly check inside the window renews with at least 90 - 7 = 83 days left (the random
delay below adds at most 6 hours, and Persistent= makes up a check missed while the VM was off as
soon as it is back). A renewal that fails leaves the unit failed and is tried again every week,
about a dozen more times before anything expires. A renewed certificate lasts 365 days again,
far outside the window, so the next checks do nothing for about nine months (and neither do they
after a `kubeadm upgrade`, which renews the certificates itself).

The renewal restarts the control-plane static pods one at a time (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler); each node waits a random delay of its own (fixed per
node), so the control planes do not restart their API servers at the same moment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components.backups import INSTALL_TIMER_SCRIPT
from components.node_provisioning import NodeStep, b64, remote_step, script_source, ssh_connection
from components.nodes import NodeVm

# Where the installer puts the script and the units, and where the script works.
RENEW_SCRIPT = "kata-mesh-renew-certs.sh"
RENEW_SCRIPT_PATH = "/usr/local/sbin/kata-mesh-renew-certs"
UNIT_DIR = "/etc/systemd/system"
RENEW_SERVICE = "kata-mesh-renew-certs.service"
RENEW_TIMER = "kata-mesh-renew-certs.timer"
# Private (0700): where a static pod's manifest waits while its pod stops.
WORK_DIR = "/var/lib/kata-mesh/renew-certs"
KUBERNETES_DIR = "/etc/kubernetes"
MANIFESTS_DIR = f"{KUBERNETES_DIR}/manifests"
API_SERVER_MANIFEST = f"{MANIFESTS_DIR}/kube-apiserver.yaml"
# Restarted in this order, one at a time, once the certificates are renewed.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")

# kubeadm's leaf certificates last a year; the timer checks once a week.
LEAF_VALIDITY_DAYS = 365
CHECK_INTERVAL_DAYS = 7
RENEW_WITHIN_DAYS = 90
# At least two weekly checks inside the window; and a certificate just renewed must be outside
# the window at the next check, or every check would renew (and restart the control plane) again.
MIN_RENEW_WITHIN_DAYS = 2 * CHECK_INTERVAL_DAYS
MAX_RENEW_WITHIN_DAYS = LEAF_VALIDITY_DAYS - CHECK_INTERVAL_DAYS - 1
# How long the script waits for a pod to stop, to start again, for the API server's /readyz.
DEFAULT_WAIT_SECONDS = 300

_PATH = re.compile(r"/[A-Za-z0-9._/-]+")


def renewal_args(
    renew_within_days: int = RENEW_WITHIN_DAYS, wait_seconds: int = DEFAULT_WAIT_SECONDS
) -> tuple[tuple[str, str], ...]:
    """kata-mesh-renew-certs's arguments on a control plane (every other one has its default:
    the four control-plane components in COMPONENTS' order, https://kubernetes:6443/readyz (resolved to 127.0.0.1: the API server's certificate names `kubernetes`, not 127.0.0.1)
    trusted with kubeadm's CA, containerd's socket)."""
    if not MIN_RENEW_WITHIN_DAYS <= renew_within_days <= MAX_RENEW_WITHIN_DAYS:
        raise ValueError(
            f"renew_within_days must be from {MIN_RENEW_WITHIN_DAYS} to {MAX_RENEW_WITHIN_DAYS}"
            f" (certificates last {LEAF_VALIDITY_DAYS} days, checked every {CHECK_INTERVAL_DAYS}),"
            f" not {renew_within_days}"
        )
    if not 30 <= wait_seconds <= 3600:
        raise ValueError(f"wait_seconds must be from 30 to 3600, not {wait_seconds}")
    return (
        ("renew-within-days", str(renew_within_days)),
        ("manifests-dir", MANIFESTS_DIR),
        ("work-dir", WORK_DIR),
        ("wait-seconds", str(wait_seconds)),
    )


def render_renewal_service(
    renew_within_days: int = RENEW_WITHIN_DAYS,
    wait_seconds: int = DEFAULT_WAIT_SECONDS,
    script_path: str = RENEW_SCRIPT_PATH,
) -> str:
    """kata-mesh-renew-certs.service: one check (and, within the window, one renewal), as root.
    Hardened like the backup service where kubeadm allows it: the system read-only but for /var
    and /etc/kubernetes (kubeadm rewrites the PKI and the kubeconfigs there; containerd's socket
    is under /run, which stays writable), its own /tmp, no home folders. It runs on a control
    plane only, and also when a run that died left the API server's manifest in its work folder
    (that run's leftovers are put back first). Its start timeout covers every bounded wait."""
    if not _PATH.fullmatch(script_path):
        raise ValueError(f"script path {script_path!r} does not match {_PATH.pattern}")
    args = " ".join(f"--{key} {value}" for key, value in renewal_args(renew_within_days, wait_seconds))
    # Each component: a stop, a start and (the API server) /readyz, each at most wait_seconds;
    # the leftovers of an interrupted run likewise; kubeadm's own two checks and the renewal.
    timeout = (3 * len(COMPONENTS) + 3) * wait_seconds + 600
    return f"""[Unit]
Description=kata-mesh: renew kubeadm's certificates on this control plane when one expires within {renew_within_days} days
After=containerd.service kubelet.service
ConditionPathExists=|{API_SERVER_MANIFEST}
ConditionPathExistsGlob=|{WORK_DIR}/*.yaml

[Service]
Type=oneshot
ExecStart={script_path} {args}
TimeoutStartSec={timeout}s
UMask=0077
PrivateTmp=true
ProtectSystem=full
ReadWritePaths={KUBERNETES_DIR}
ProtectHome=true
NoNewPrivileges=true
"""


def render_renewal_timer() -> str:
    """kata-mesh-renew-certs.timer: a check once a week (see the module's docstring for why that
    renews well before expiry), made up at boot when one was missed (Persistent=), each node at a
    random delay of up to 6 hours of its own (fixed per node). Also 15 minutes (plus that delay)
    after each boot, so that a manifest a run left out of place when the machine went down goes
    back without waiting for the next week."""
    return f"""[Unit]
Description=kata-mesh: check kubeadm's certificates weekly, renew them when they expire soon

[Timer]
OnCalendar=weekly
OnBootSec=15min
Persistent=true
RandomizedDelaySec=6h
FixedRandomDelay=true
AccuracySec=1min
Unit={RENEW_SERVICE}

[Install]
WantedBy=timers.target
"""


def renewal_timer_step(renew_within_days: int = RENEW_WITHIN_DAYS) -> NodeStep:
    """75-install-timer.sh: the renewal script, its service and timer on a control plane (the first
    check waits for the timer: a new cluster's certificates have a year ahead)."""
    return NodeStep(
        "renewal-timer",
        INSTALL_TIMER_SCRIPT,
        (
            ("script-b64", b64(script_source(RENEW_SCRIPT))),
            ("script-path", RENEW_SCRIPT_PATH),
            ("service-b64", b64(render_renewal_service(renew_within_days))),
            ("timer-b64", b64(render_renewal_timer())),
            ("unit-dir", UNIT_DIR),
            ("service-name", RENEW_SERVICE),
            ("timer-name", RENEW_TIMER),
            ("private-dir", WORK_DIR),
            ("run-now", "false"),
        ),
    )


@dataclass(frozen=True)
class RenewalScheduleArgs:
    control_planes: Sequence[NodeVm]
    # What each control plane's timer waits for, by name: that it serves (init on the first, its
    # join on the others), or a later step on it.
    served: Mapping[str, pulumi.Resource]
    # The cluster ready: the first control plane's SSH sessions stay within their bound.
    after: Sequence[pulumi.Resource] = ()


class RenewalSchedule(pulumi.ComponentResource):
    """The certificate renewal timer on every control plane, once it serves."""

    timers: dict[str, command.remote.Command]

    def __init__(
        self, name: str, args: RenewalScheduleArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("kata-mesh:cert_renewal:RenewalSchedule", name, None, opts)
        step = renewal_timer_step()
        self.timers = {
            vm.node_name: remote_step(
                f"{vm.node_name}-renewal-timer",
                step,
                ssh_connection(vm.ssh),
                pulumi.ResourceOptions(parent=self, depends_on=[args.served[vm.node_name], *args.after]),
                extra_triggers=[vm.instance_id],
            )
            for vm in args.control_planes
        }
        self.register_outputs({})
