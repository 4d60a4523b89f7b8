"""The first control plane's new VM with control planes that survive it (issue 13), as every stack
declares it (mock runs): on stacks of 3 or more, a rejoin step on cp-1 runs for each new cp-0 VM,
before the restore; when it prints a join (KataMeshMocks(survivors=True): the survivors serve),
the restore restores nothing and cp-0's init step joins them, through cp-1. dev, with one control
plane, has nothing that could survive and restores or initialises as before.

The scripts' side is tested in tests/test_rejoin_token.py (62-rejoin-token.sh against a real etcd),
tests/test_init_rejoin.py (50-kubeadm-init.sh's join) and tests/test_rejoin_redirect.py (the
redirect, with real nftables)."""

from __future__ import annotations

import base64
import functools

import pytest
import yaml
from harness import (
    MOCK_TOKEN,
    STACKS,
    KataMeshMocks,
    RecordingMonitor,
    assert_connects_to,
    cached_run,
    command_args,
    is_secret,
    run_program,
    unsecret_value,
)

from offline.engine import ProgramRun, Registration
from offline.engine import stack_file_values as stack_file

COMMAND = "command:remote:Command"
INSTANCE = "gcp:compute/instance:Instance"
RANDOM_BYTES = "random:index/randomBytes:RandomBytes"
HA_STACKS = [s for s in STACKS if int(stack_file(s).get("kata-mesh:controlPlaneCount", 1)) >= 3]


@functools.cache
def with_survivors(stack: str) -> ProgramRun:
    return run_program(stack, preview=False, monitor=RecordingMonitor(KataMeshMocks(False, survivors=True)))


def stdin_args(registration: Registration) -> dict[str, str]:
    """The secret arguments a step carries on the first line of its stdin."""
    first_line = str(unsecret_value(registration.inputs["stdin"])).split("\n", 1)[0]
    assert first_line.startswith('set -- "$@" '), first_line
    return command_args(first_line)


def instance_id(program: ProgramRun, name: str) -> str:
    return program.states[program.one(INSTANCE, name).urn]["instanceId"]


def test_the_stacks_with_room_for_survivors_are_the_ha_ones():
    # Pulumi.staging.yaml and Pulumi.prod.yaml run three control planes; dev one.
    assert sorted(HA_STACKS) == ["prod", "staging"]


@pytest.mark.parametrize("stack", HA_STACKS)
def test_cp1_is_asked_for_a_join_once_per_new_cp0_vm_before_the_restore(stack):
    program = cached_run(stack)
    cp0, cp1 = f"kata-mesh-{stack}-cp-0", f"kata-mesh-{stack}-cp-1"
    token = program.one(COMMAND, f"{cp0}-rejoin-token")
    assert_connects_to(program, unsecret_value(token.inputs["connection"]), cp1)
    args = command_args(token.inputs["create"])
    assert args["--node-name"] == cp0
    assert args["--ttl"] == "1h"
    # Only a new cp-0 VM runs it: not its script, not cp-1's VM.
    assert token.inputs["triggers"] == [instance_id(program, cp0)]
    # The join it prints holds a token: secret in state and out of the logs.
    assert "stdout" in token.additional_secret_outputs
    assert token.inputs["logging"] == "stderr"
    # Its certificate key comes on stdin, its own 32 random bytes.
    key = program.one(RANDOM_BYTES, f"{cp0}-rejoin-certificate-key")
    assert key.inputs["length"] == 32
    assert stdin_args(token)["--certificate-key"] == program.states[key.urn]["hex"]
    assert is_secret(token.inputs["stdin"])
    # After cp-1 is provisioned, before cp-0's restore (which comes before init).
    provisioned = [r for r in program.of_type(COMMAND) if r.name.startswith(f"{cp1}-provision-")]
    assert {r.urn for r in provisioned} & set(token.dependencies)
    restore = program.one(COMMAND, f"{cp0}-restore")
    assert token.urn in restore.dependencies
    assert restore.urn in program.one(COMMAND, "cluster-init").dependencies


@pytest.mark.parametrize("stack", HA_STACKS)
def test_when_nothing_survives_cp0_restores_or_initialises(stack):
    program = cached_run(stack)
    restore = program.one(COMMAND, f"kata-mesh-{stack}-cp-0-restore")
    assert command_args(restore.inputs["create"])["--rejoining"] == "false"
    secret = stdin_args(program.one(COMMAND, "cluster-init"))
    assert "--join-config-b64" not in secret and "--rejoin-via" not in secret


# Two more runs of the program (the plain suite's time budget): with the system tests.
@pytest.mark.system
@pytest.mark.parametrize("stack", HA_STACKS)
def test_when_the_others_survive_cp0_joins_them_through_cp1(stack):
    program = with_survivors(stack)
    cp0, cp1 = f"kata-mesh-{stack}-cp-0", f"kata-mesh-{stack}-cp-1"
    nodes = program.output("nodes")
    restore = program.one(COMMAND, f"{cp0}-restore")
    # The restore leaves the node alone.
    assert command_args(restore.inputs["create"])["--rejoining"] == "true"
    init = program.one(COMMAND, "cluster-init")
    secret = stdin_args(init)
    assert secret["--rejoin-via"] == nodes[cp1]["internalIp"]
    config = list(yaml.safe_load_all(base64.b64decode(secret["--join-config-b64"]).decode()))
    assert [doc["kind"] for doc in config] == ["JoinConfiguration"]
    [join] = config
    # kubeadm's JoinConfiguration for a control plane: the survivors' token, cp-0's own address
    # for its API server, the key the certificates were uploaded with on cp-1.
    assert join["discovery"]["bootstrapToken"]["token"] == MOCK_TOKEN
    assert join["nodeRegistration"]["name"] == cp0
    assert join["controlPlane"]["localAPIEndpoint"] == {
        "advertiseAddress": nodes[cp0]["internalIp"],
        "bindPort": 6443,
    }
    key = program.one(RANDOM_BYTES, f"{cp0}-rejoin-certificate-key")
    assert join["controlPlane"]["certificateKey"] == program.states[key.urn]["hex"]
    # Never on the command line, which pulumi-command prints when a step fails.
    assert MOCK_TOKEN not in init.inputs["create"]
    assert MOCK_TOKEN not in restore.inputs["create"]


def test_with_one_control_plane_there_is_nothing_to_rejoin():
    program = cached_run("dev")
    assert not [r for r in program.of_type(COMMAND) if r.name.endswith("-rejoin-token")]
    assert not [r for r in program.of_type(RANDOM_BYTES) if "rejoin" in r.name]
    restore = program.one(COMMAND, "kata-mesh-dev-cp-0-restore")
    assert command_args(restore.inputs["create"])["--rejoining"] == "false"
