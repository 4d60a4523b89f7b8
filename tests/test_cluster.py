"""Cluster bootstrap under the mock engine: init, pod network, joins, kubeconfig and provider."""

from __future__ import annotations

import base64
import functools

import pytest
import yaml
from harness import (
    MOCK_TOKEN,
    PROJECT,
    SECRET_SIG,
    STACKS,
    ProgramRun,
    Registration,
    assert_connects_to,
    cached_run,
    command_args,
    node_vms,
    plain_strings,
    run_program,
)

from components import versions
from components.kubeadm_config import INIT_TOKEN_DESCRIPTION, render_audit_policy

COMMAND = "command:remote:Command"
INSTANCE = "gcp:compute/instance:Instance"
RELEASE = "kubernetes:helm.sh/v3:Release"
PROVIDER = "pulumi:providers:kubernetes"


run = cached_run


def command(program: ProgramRun, name: str) -> Registration:
    return program.one(COMMAND, name)


args_of = command_args


def config_documents(registration: Registration) -> dict[str, dict]:
    """The kubeadm config a step carries: on its command line, or (when secret) on stdin's first line."""
    args = args_of(registration.inputs["create"])
    if "--config-b64" not in args:
        args = args_of_stdin(registration)
    rendered = base64.b64decode(args["--config-b64"]).decode()
    return {doc["kind"]: doc for doc in yaml.safe_load_all(rendered)}


def args_of_stdin(registration: Registration) -> dict[str, str]:
    first_line = registration.inputs["stdin"]["value"].split("\n", 1)[0]
    assert first_line.startswith('set -- "$@" ')
    return command_args(first_line)


def workers(program: ProgramRun) -> list[str]:
    return sorted(r.inputs["name"] for r in node_vms(program) if "-worker-" in r.inputs["name"])


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_declares_init_pod_network_joins_and_secret_kubeconfig(stack, preview):
    program = run(stack, preview)
    cp = f"kata-mesh-{stack}-cp-0"
    init = command(program, "cluster-init")
    assert command(program, f"{cp}-provision-metadata-block").urn in init.dependencies
    # Secret (it carries the certificate key): known only once the key is, after preview.
    assert init.raw_inputs["stdin"][SECRET_SIG]
    if not preview:
        assert 'kubeadm init "${init_flags[@]}"' in init.inputs["stdin"]["value"]
        # kubeadm's preflight is skipped only for restored etcd data, which the marker names.
        assert (
            command_args(init.inputs["create"])["--restored-marker"] == "/etc/kubernetes/.kata-mesh-restored"
        )
    for worker in workers(program):
        join = command(program, f"{worker}-join")
        token = command(program, f"{worker}-join-token")
        assert token.urn in join.dependencies
        assert init.urn in token.dependencies
        assert command(program, f"{worker}-provision-metadata-block").urn in join.dependencies
        if not preview:
            # A new control plane (a new cluster) makes every worker get a token and join again.
            assert "cluster-init-id" in token.inputs["triggers"]
            assert "cluster-init-id" in join.inputs["triggers"]["value"]  # secret: it hashes the token
    program.one(RELEASE, "cluster-flannel")
    assert program.is_secret_output("kubeconfig")


@pytest.mark.parametrize("stack", STACKS)
def test_workers_join_in_parallel_each_with_its_own_token(stack):
    program = run(stack)
    names = workers(program)
    for worker in names:
        mine = {command(program, f"{worker}-join").urn, command(program, f"{worker}-join-token").urn}
        for other in names:
            if other == worker:
                continue
            for registration in (command(program, f"{other}-join"), command(program, f"{other}-join-token")):
                assert not mine & set(registration.dependencies), f"{other} waits for {worker}"
        token = command(program, f"{worker}-join-token")
        assert args_of(token.inputs["create"]) == {
            "--node-name": worker,
            "--ttl": "1h",
            "--control-plane": "false",
        }
        assert "kubeadm token create" in token.inputs["stdin"]
        assert "stdout" in token.additional_secret_outputs
        assert token.inputs["logging"] == "stderr"


def test_join_commands_and_the_kubeconfig_stay_secret():
    program = run("staging")
    for worker in workers(program):
        join = command(program, f"{worker}-join")
        # The token travels on stdin, as a secret, never on the command line that errors print.
        assert join.inputs["create"] == (
            f"sudo -n bash -s -- --node-name {worker} --token-step {worker}-join-token"
        )
        assert join.raw_inputs["stdin"][SECRET_SIG]
        assert MOCK_TOKEN not in "".join(plain_strings(join.raw_inputs))
        assert MOCK_TOKEN in base64.b64decode(args_of_stdin(join)["--config-b64"]).decode()
    admin = command(program, "cluster-admin-conf")
    assert admin.inputs["create"] == "sudo -n cat /etc/kubernetes/admin.conf"
    assert "stdout" in admin.additional_secret_outputs
    assert admin.inputs["logging"] == "none"
    for registration in program.registrations:
        assert not any("client-key-data" in s for s in plain_strings(registration.raw_inputs)), (
            registration.urn
        )
    kubeconfig = yaml.safe_load(program.output("kubeconfig"))
    assert kubeconfig["clusters"][0]["cluster"]["server"] == program.output("apiEndpoint")


def test_the_provider_is_built_from_the_kubeconfig_and_deploys_flannel():
    program = run("dev")
    [provider] = program.of_type(PROVIDER)
    assert provider.raw_inputs["kubeconfig"][SECRET_SIG]
    assert provider.inputs["kubeconfig"]["value"] == program.output("kubeconfig")
    flannel = program.one(RELEASE, "cluster-flannel")
    provider_ref = f"{provider.urn}::{program.states[provider.urn].get('id', provider.name + '-id')}"
    assert flannel.provider.split("::")[:-1] == provider_ref.split("::")[:-1]
    assert flannel.inputs["chart"] == "flannel"
    assert flannel.inputs["version"] == versions.FLANNEL_CHART_VERSION
    assert flannel.inputs["repositoryOpts"] == {"repo": "https://flannel-io.github.io/flannel/"}
    assert flannel.inputs["namespace"] == "kube-flannel"
    assert flannel.inputs["values"] == {"podCidr": "10.244.0.0/16", "flannel": {"backend": "vxlan"}}
    namespace = program.one("kubernetes:core/v1:Namespace", "cluster-kube-flannel")
    assert namespace.inputs["metadata"]["labels"] == {
        "pod-security.kubernetes.io/enforce": "privileged",
        "pod-security.kubernetes.io/warn": "baseline",
        "pod-security.kubernetes.io/audit": "restricted",
    }
    assert namespace.urn in flannel.dependencies


@pytest.mark.parametrize("stack", STACKS)
def test_everything_after_waits_until_every_node_is_ready(stack):
    program = run(stack)
    ready = command(program, "cluster-nodes-ready")
    assert program.one(RELEASE, "cluster-flannel").urn in ready.dependencies
    for worker in workers(program):
        assert command(program, f"{worker}-join").urn in ready.dependencies
    control_planes = sorted(r.inputs["name"] for r in node_vms(program) if "-cp-" in r.inputs["name"])
    expected = " ".join([*control_planes, *workers(program)])
    assert args_of(ready.inputs["create"])["--node-names"] == expected


@pytest.mark.parametrize("stack", STACKS)
def test_workers_carry_the_kata_label_and_the_control_plane_stays_tainted(stack):
    program = run(stack)
    init = config_documents(command(program, "cluster-init"))["InitConfiguration"]["nodeRegistration"]
    assert "taints" not in init
    assert all(arg["name"] != "node-labels" for arg in init["kubeletExtraArgs"])
    for worker in workers(program):
        join = config_documents(command(program, f"{worker}-join"))["JoinConfiguration"]
        assert join["nodeRegistration"]["name"] == worker
        labels = [
            a["value"] for a in join["nodeRegistration"]["kubeletExtraArgs"] if a["name"] == "node-labels"
        ]
        assert labels == ["katacontainers.io/kata-runtime=true"]
        assert join["discovery"]["bootstrapToken"]["token"] == MOCK_TOKEN


@functools.cache
def without_workers() -> ProgramRun:
    """dev with workerCount 0, one run shared by the tests that read it."""
    return run_program("dev", preview=False, overrides={f"{PROJECT}:workerCount": 0})


def test_the_control_plane_taint_and_label_follow_the_worker_count_on_every_run():
    with_workers = args_of(command(run("dev"), "cluster-init").inputs["create"])
    without = args_of(command(without_workers(), "cluster-init").inputs["create"])
    assert (with_workers["--takes-workloads"], without["--takes-workloads"]) == ("false", "true")
    assert with_workers["--kata-label"] == "katacontainers.io/kata-runtime=true"
    assert with_workers["--node-name"] == "kata-mesh-dev-cp-0"


def test_with_no_workers_the_control_plane_takes_kata_workloads():
    program = without_workers()
    init = config_documents(command(program, "cluster-init"))["InitConfiguration"]["nodeRegistration"]
    assert init["taints"] == []
    assert {"name": "node-labels", "value": "katacontainers.io/kata-runtime=true"} in init["kubeletExtraArgs"]
    assert [r.name for r in program.of_type(COMMAND) if r.name.endswith("-join")] == []


@pytest.mark.parametrize("stack", STACKS)
def test_removing_a_worker_drains_it_first_best_effort(stack):
    program = run(stack)
    for worker in workers(program):
        removal = command(program, f"{worker}-drain-on-removal")
        # No create command: no SSH session until the worker is removed.
        assert "create" not in removal.inputs
        assert args_of(removal.inputs["delete"]) == {"--node-name": worker, "--timeout-seconds": "120"}
        assert "kubectl drain" in removal.inputs["stdin"]
        assert command(program, f"{worker}-join").urn in removal.dependencies
        assert_connects_to(program, removal.inputs["connection"]["value"], f"kata-mesh-{stack}-cp-0")


@pytest.mark.parametrize("stack", STACKS)
def test_init_hardens_the_api_server_and_carries_its_files(stack):
    """Secrets encrypted with the stack's own random key, an audit policy, profiling off; the
    key only on stdin (secret), the policy on the command line like the kubeadm config."""
    program = run(stack)
    init = command(program, "cluster-init")
    args = args_of(init.inputs["create"])
    assert base64.b64decode(args["--audit-policy-b64"]).decode() == render_audit_policy()
    assert args["--init-token-description"] == INIT_TOKEN_DESCRIPTION
    assert "--encryption-config-b64" not in args and "--certificate-key" not in args
    secret = args_of_stdin(init)
    assert set(secret) == {"--certificate-key", "--encryption-config-b64"}
    [encryption] = list(yaml.safe_load_all(base64.b64decode(secret["--encryption-config-b64"])))
    key = program.states[program.one("random:index/randomBytes:RandomBytes", "cluster-encryption-key").urn][
        "base64"
    ]
    assert encryption["resources"] == [
        {
            "resources": ["secrets"],
            "providers": [{"secretbox": {"keys": [{"name": "key1", "secret": key}]}}, {"identity": {}}],
        }
    ]
    assert init.raw_inputs["stdin"][SECRET_SIG]
    assert key not in "".join(plain_strings(init.raw_inputs))
    documents = config_documents(init)
    cluster = documents["ClusterConfiguration"]
    for component in ("apiServer", "controllerManager", "scheduler"):
        assert {"name": "profiling", "value": "false"} in cluster[component]["extraArgs"], component
    assert {
        "name": "encryption-provider-config",
        "value": "/etc/kubernetes/encryption/config.yaml",
    } in cluster["apiServer"]["extraArgs"]
    assert documents["InitConfiguration"]["bootstrapTokens"] == [
        {"description": INIT_TOKEN_DESCRIPTION, "ttl": "1h0m0s"}
    ]
    # Workers get neither file.
    for worker in workers(program):
        join = command(program, f"{worker}-join")
        assert set(args_of_stdin(join)) == {"--config-b64"}
        assert "--audit-policy-b64" not in args_of(join.inputs["create"])
