"""The backups as every stack declares them (mock runs): the bucket and who may write it, the
control planes' scope, the etcd tools and the restore before init on the first control plane, a
backup timer on every control plane once it serves, and the newest backup read from the bucket."""

from __future__ import annotations

import base64
import configparser

import pytest
from harness import PROJECT, STACKS, cached_run, command_args, node_vms, run_program

from components.settings import SettingsError
from offline.engine import stack_file_values as stack_file

COMMAND = "command:remote:Command"
BUCKET = "gcp:storage/bucket:Bucket"
IAM_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
STORAGE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"


def control_planes(program) -> list[str]:
    return sorted(r.inputs["name"] for r in node_vms(program) if "-cp-" in r.inputs["name"])


@pytest.mark.parametrize("stack", STACKS)
def test_the_bucket_is_private_versioned_and_kept_retention_days(stack):
    program = cached_run(stack)
    [bucket] = program.of_type(BUCKET)
    inputs = bucket.inputs
    assert inputs["name"].startswith(f"kata-mesh-{stack}-backups-")
    # In the stack's region, beside the control planes.
    assert inputs["location"] == stack_file(stack)["gcp:region"]
    assert inputs["uniformBucketLevelAccess"] is True
    assert inputs["publicAccessPrevention"] == "enforced"
    assert inputs["versioning"] == {"enabled": True}
    ages = [rule["condition"] for rule in inputs["lifecycleRules"] if rule["action"] == {"type": "Delete"}]
    # Pulumi.yaml's default, 14 days, for live objects and for replaced versions alike.
    assert {"age": 14, "withState": "LIVE"} in ages
    assert {"daysSinceNoncurrentTime": 14, "withState": "ARCHIVED"} in ages
    # Only dev lets `pulumi destroy` take the backups with it.
    assert inputs["forceDestroy"] is (stack == "dev")
    # Elsewhere `pulumi destroy` leaves the bucket, backups and all, in the project.
    assert bucket.retain_on_delete is (stack != "dev")
    assert program.output("backupBucket") == inputs["name"]


@pytest.mark.parametrize("stack", STACKS)
def test_only_the_nodes_account_may_add_and_read_backups_and_only_control_planes_carry_the_scope(stack):
    program = cached_run(stack)
    account = program.one("gcp:serviceaccount/account:Account", "nodes-sa")
    email = program.states[account.urn]["email"]
    members = program.of_type(IAM_MEMBER)
    assert sorted(m.inputs["role"] for m in members) == [
        "roles/storage.objectCreator",
        "roles/storage.objectViewer",
    ]
    assert {m.inputs["member"] for m in members} == {f"serviceAccount:{email}"}
    [bucket] = program.of_type(BUCKET)
    assert {m.inputs["bucket"] for m in members} == {bucket.inputs["name"]}
    for vm in node_vms(program):
        scopes = vm.inputs["serviceAccount"]["scopes"]
        assert (STORAGE_SCOPE in scopes) == ("-cp-" in vm.inputs["name"]), vm.inputs["name"]
        assert "https://www.googleapis.com/auth/cloud-platform" not in scopes


@pytest.mark.parametrize("stack", STACKS)
def test_a_new_first_control_plane_restores_before_init_and_only_it(stack):
    program = cached_run(stack)
    names = control_planes(program)
    cp0 = names[0]
    restores = [r for r in program.of_type(COMMAND) if r.name.endswith("-restore")]
    assert [r.name for r in restores] == [f"{cp0}-restore"]
    [restore] = restores
    init = program.one(COMMAND, "cluster-init")
    assert restore.urn in init.dependencies
    tools = program.one(COMMAND, f"{cp0}-etcd-tools")
    assert tools.urn in restore.dependencies
    # The node's token can list and read the bucket before the step asks.
    assert {m.urn for m in program.of_type(IAM_MEMBER)} <= set(restore.dependencies)
    args = command_args(restore.inputs["create"])
    [bucket] = program.of_type(BUCKET)
    node = program.output("nodes")[cp0]
    assert args["--bucket"] == bucket.inputs["name"]
    assert args["--prefix"] == f"kata-mesh-{stack}/control-plane"
    assert args["--node-name"] == cp0
    # kubeadm's stacked etcd peers on 2380 at the node's own address.
    assert args["--peer-url"] == f"https://{node['internalIp']}:2380"
    assert args["--marker-file"] == command_args(init.inputs["create"])["--restored-marker"]
    # Runs again only on a new VM: its instance id is a trigger.
    vm = program.one("gcp:compute/instance:Instance", cp0)
    assert program.states[vm.urn]["instanceId"] in restore.inputs["triggers"]


@pytest.mark.parametrize("stack", STACKS)
def test_every_control_plane_gets_the_backup_timer_once_it_serves(stack):
    program = cached_run(stack)
    names = control_planes(program)
    [bucket] = program.of_type(BUCKET)
    timers = sorted(r.name for r in program.of_type(COMMAND) if r.name.endswith("-backup-timer"))
    assert timers == [f"{name}-backup-timer" for name in names]
    for name in names:
        timer = program.one(COMMAND, f"{name}-backup-timer")
        served = program.one(COMMAND, "cluster-init" if name == names[0] else f"{name}-join")
        assert served.urn in timer.dependencies
        assert program.one(COMMAND, f"{name}-etcd-tools").urn in timer.dependencies
        args = command_args(timer.inputs["create"])
        service = configparser.ConfigParser(interpolation=None, strict=False)
        service.read_string(base64.b64decode(args["--service-b64"]).decode())
        exec_start = service["Service"]["ExecStart"].split()
        assert exec_start[0] == args["--script-path"]
        given = dict(zip(exec_start[1::2], exec_start[2::2], strict=True))
        assert given["--bucket"] == bucket.inputs["name"]
        assert given["--node-name"] == name
        timer_unit = configparser.ConfigParser(interpolation=None)
        timer_unit.read_string(base64.b64decode(args["--timer-b64"]).decode())
        # Pulumi.yaml's default: every 6 hours, from midnight.
        assert timer_unit["Timer"]["OnCalendar"] == "*-*-* 00/6:00:00"
        script = base64.b64decode(args["--script-b64"]).decode()
        assert script.startswith("#!/usr/bin/env bash")


def test_the_newest_backup_is_the_newest_complete_one_the_bucket_lists():
    # The mock bucket lists backups of 2026-11-26 00:00 and 2026-11-27 06:00, and one of 12:00 whose
    # manifest never arrived (tests/harness.py, SAMPLE_BACKUP_OBJECTS).
    assert cached_run("dev").output("newestBackup") == "kata-mesh-dev/control-plane/20261127T060000Z-cp-1"


def test_backup_settings_are_checked_with_the_others():
    with pytest.raises(SettingsError) as caught:
        run_program(
            "dev",
            preview=True,
            overrides={
                f"{PROJECT}:backupIntervalHours": 169,
                f"{PROJECT}:backupRetentionDays": 0,
                f"{PROJECT}:backupObject": "../etc",
                f"{PROJECT}:workerCount": -1,
            },
        )
    found = {p.key: p.fix for p in caught.value.problems}
    assert set(found) == {"backupIntervalHours", "backupRetentionDays", "backupObject", "workerCount"}
    assert "must be 1 to 168 hours" in found["backupIntervalHours"]


def test_prod_refuses_to_let_destroy_take_its_backups():
    assert not stack_file("prod").get(f"{PROJECT}:backupForceDestroy")
    with pytest.raises(SettingsError) as caught:
        run_program("prod", preview=True, overrides={f"{PROJECT}:backupForceDestroy": True})
    [problem] = caught.value.problems
    assert problem.key == "backupForceDestroy" and "never allowed in prod" in problem.fix
