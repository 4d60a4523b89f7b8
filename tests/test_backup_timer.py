"""75-install-timer.sh run as the program sends it (components.backups.backup_timer_step), as root
on a sandboxed node (tests/node_sandbox.py), with a systemctl stand-in that remembers which units
are enabled. Checked: the first run installs the script and both units, enables the timer and
starts one backup at once; a second run changes and restarts nothing; changed units are rewritten
and the timer restarted, without another immediate backup."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from node_sandbox import Result, Sandbox, require_sandbox

from components import backup_config
from components.backups import backup_timer_step
from components.node_provisioning import SCRIPTS_DIR

BUCKET = "kata-mesh-dev-backups-a8251a7c"
PREFIX = "kata-mesh-dev/control-plane"
NODE = "kata-mesh-dev-cp-0"
# systemctl as far as this step asks it: enable/is-enabled remember, the rest is recorded.
SYSTEMCTL = """case "${1:-}" in
  is-enabled) [[ -f $state/enabled-${*: -1} ]]; exit ;;
  enable) touch "$state/enabled-${*: -1}"; exit 0 ;;
esac
exit 0
"""


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    require_sandbox()
    sandbox = Sandbox(tmp_path / "node")
    sandbox.behaviour.update(systemctl=SYSTEMCTL)
    return sandbox


def run(node: Sandbox, interval_hours: int = 6) -> Result:
    return node.run(backup_timer_step(BUCKET, PREFIX, NODE, interval_hours))


def systemctl_calls(result: Result) -> list[str]:
    return [c for c in result.calls if c.startswith("systemctl ")]


def test_the_first_run_installs_enables_and_backs_up_at_once(node):
    result = run(node)
    assert result.returncode == 0, result.stderr
    files = node.changes()
    script = files["/usr/local/sbin/kata-mesh-backup"]
    assert script[0] == (SCRIPTS_DIR / "kata-mesh-backup.sh").read_text()
    assert script[1] == 0o755
    service = files["/etc/systemd/system/kata-mesh-backup.service"]
    assert service[0] == backup_config.render_backup_service(BUCKET, PREFIX, NODE)
    assert service[1] == 0o644
    assert files["/etc/systemd/system/kata-mesh-backup.timer"][0] == backup_config.render_backup_timer(6)
    assert node.path("/var/backups/kata-mesh").stat().st_mode & 0o777 == 0o700
    assert systemctl_calls(result) == [
        "systemctl is-enabled --quiet kata-mesh-backup.timer",
        "systemctl daemon-reload",
        "systemctl enable --now kata-mesh-backup.timer",
        "systemctl start --no-block kata-mesh-backup.service",
    ]


def test_a_second_run_changes_nothing_and_starts_nothing(node):
    assert run(node).returncode == 0
    before = node.changes()
    second = run(node)
    assert second.returncode == 0, second.stderr
    assert node.changes() == before
    assert systemctl_calls(second) == [
        "systemctl is-enabled --quiet kata-mesh-backup.timer",
        "systemctl enable --now kata-mesh-backup.timer",
    ]


def test_a_new_interval_rewrites_the_timer_and_restarts_it_without_another_backup(node):
    assert run(node).returncode == 0
    changed = run(node, interval_hours=12)
    assert changed.returncode == 0, changed.stderr
    assert node.changes()["/etc/systemd/system/kata-mesh-backup.timer"][
        0
    ] == backup_config.render_backup_timer(12)
    assert systemctl_calls(changed) == [
        "systemctl is-enabled --quiet kata-mesh-backup.timer",
        "systemctl daemon-reload",
        "systemctl enable --now kata-mesh-backup.timer",
        "systemctl restart kata-mesh-backup.timer",
    ]


def test_unit_names_that_are_not_plain_are_refused(node):
    step = backup_timer_step(BUCKET, PREFIX, NODE, 6)
    args = tuple((k, "x y.service" if k == "service-name" else v) for k, v in step.args)
    result = node.run(type(step)(step.name, step.script, args))
    assert result.returncode == 1
    assert "--service-name and --timer-name must be plain unit names" in result.stderr
    assert node.changes() == {}
    # The script arrives intact through base64 (no shell quoting can bend it).
    assert (
        base64.b64decode(dict(step.args)["script-b64"]).decode()
        == (SCRIPTS_DIR / "kata-mesh-backup.sh").read_text()
    )


def test_without_run_now_the_timer_is_enabled_but_nothing_runs_yet(node):
    step = backup_timer_step(BUCKET, PREFIX, NODE, 6)
    args = tuple((k, "false" if k == "run-now" else v) for k, v in step.args)
    result = node.run(type(step)(step.name, step.script, args))
    assert result.returncode == 0, result.stderr
    assert systemctl_calls(result) == [
        "systemctl is-enabled --quiet kata-mesh-backup.timer",
        "systemctl daemon-reload",
        "systemctl enable --now kata-mesh-backup.timer",
    ]
