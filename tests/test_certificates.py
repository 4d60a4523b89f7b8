"""The program's side of certificate renewal: admin.conf read again each month (so a renewed
certificate reaches the kubeconfig and the provider), and the admin certificate's expiry as an
output, read from the certificate itself."""

from __future__ import annotations

import base64
import datetime
import ssl
from pathlib import Path

import pytest
from harness import MOCK_ADMIN_CONF, STACKS, cached_run, command_args, node_vms

from components.kubeadm_config import admin_client_certificate, kubeconfig_period
from components.node_provisioning import SCRIPTS_DIR

SAMPLE_CERT = Path(__file__).parent / "samples" / "admin-client.crt"


def test_admin_conf_is_read_again_each_calendar_month_and_not_within_one():
    days = [datetime.date(2026, 11, 1) + datetime.timedelta(days=n) for n in range(400)]
    periods = [kubeconfig_period(day) for day in days]
    for day, next_day, period, next_period in zip(days, days[1:], periods, periods[1:], strict=False):
        assert (period == next_period) == (day.month == next_day.month), day
    # Every period is at most 31 days: far inside the 90 days the renewal leaves before expiry.
    assert max(periods.count(p) for p in set(periods)) == 31
    assert kubeconfig_period(datetime.date(2026, 12, 31)) != kubeconfig_period(datetime.date(2027, 12, 31))


def test_the_client_certificate_is_the_one_admin_conf_carries():
    assert admin_client_certificate(MOCK_ADMIN_CONF) == SAMPLE_CERT.read_text()
    with pytest.raises(ValueError, match="no client-certificate-data"):
        admin_client_certificate("apiVersion: v1\nkind: Config\nusers: []\n")


def test_the_stack_reads_admin_conf_again_each_month_and_exports_the_certificates_expiry():
    program = cached_run("dev")
    admin_conf = program.one("command:remote:Command", "cluster-admin-conf")
    this_month = datetime.datetime.now(datetime.UTC).strftime("%Y-%m")
    assert this_month in admin_conf.inputs["triggers"]
    # Python's own certificate parser, not the one the mocks use.
    not_after = ssl._ssl._test_decode_cert(str(SAMPLE_CERT))["notAfter"]  # type: ignore[attr-defined]
    expected = datetime.datetime.strptime(not_after, "%b %d %H:%M:%S %Y %Z").strftime("%Y-%m-%dT%H:%M:%SZ")
    assert program.output("adminCertificateExpiry") == expected
    assert not program.is_secret_output("adminCertificateExpiry")


@pytest.mark.parametrize("stack", STACKS)
def test_every_control_plane_gets_the_renewal_timer_after_its_backup_timer(stack):
    program = cached_run(stack)
    control_planes = sorted(r.inputs["name"] for r in node_vms(program) if "-cp-" in r.inputs["name"])
    timers = sorted(
        r.name for r in program.of_type("command:remote:Command") if r.name.endswith("-renewal-timer")
    )
    assert timers == [f"{name}-renewal-timer" for name in control_planes]
    for name in control_planes:
        timer = program.one("command:remote:Command", f"{name}-renewal-timer")
        assert program.one("command:remote:Command", f"{name}-backup-timer").urn in timer.dependencies
        args = command_args(timer.inputs["create"])
        assert (
            base64.b64decode(args["--script-b64"]).decode()
            == (SCRIPTS_DIR / "kata-mesh-renew-certs.sh").read_text()
        )
        service = base64.b64decode(args["--service-b64"]).decode()
        exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
        assert exec_start.split("=", 1)[1].split()[0] == args["--script-path"]
        # A renewal only near expiry: the timer checks, nothing runs at install.
        assert args["--run-now"] == "false"
        assert "OnCalendar=" in base64.b64decode(args["--timer-b64"]).decode()


def test_the_provider_is_replaced_only_with_a_new_cluster_not_with_a_reread_admin_conf():
    program = cached_run("dev")
    [provider] = [r for r in program.registrations if r.type == "pulumi:providers:kubernetes"]
    # pulumi-kubernetes replaces a provider only when clusterIdentifier changes (its docs): the
    # cluster CA's fingerprint, as openssl prints it on cp-0, read once per VM.
    cluster_ca = program.one("command:remote:Command", "cluster-cluster-ca")
    assert (
        cluster_ca.inputs["create"]
        == "openssl x509 -noout -fingerprint -sha256 -in /etc/kubernetes/pki/ca.crt"
    )
    assert provider.inputs["clusterIdentifier"] == program.states[cluster_ca.urn]["stdout"]
    assert provider.inputs["clusterIdentifier"].startswith("sha256 Fingerprint=")
    # Not re-read with init (a new script re-runs init on the same cluster), nor monthly.
    cp0 = program.one("gcp:compute/instance:Instance", "kata-mesh-dev-cp-0")
    assert cluster_ca.inputs["triggers"] == [program.states[cp0.urn]["instanceId"]]
    init = program.one("command:remote:Command", "cluster-init")
    assert init.urn in cluster_ca.dependencies
    admin_conf = program.one("command:remote:Command", "cluster-admin-conf")
    assert "cluster-init-id" in admin_conf.inputs["triggers"]
