"""After an Istio upgrade the meshed apps restart onto the new sidecar: the restart step in every
stack under the mock engine (no create, an update that names exactly the apps' namespaces, after the
Istio releases and the apps, before the proof; its inputs change with istioVersion and the
namespaces, not with anything else), and scripts/node/98-restart-meshed-workloads.sh run in the
node sandbox exactly as the program sends it (installed on cp-0, then run from there)."""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import PROJECT, ROOT, STACKS, assert_connects_to, cached_run, node_vms, run_program
from node_sandbox import Sandbox, require_sandbox, step_error

from components.node_provisioning import NodeStep

COMMAND = "command:remote:Command"
RELEASE = "kubernetes:helm.sh/v3:Release"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
RESTART = "mesh-rollout-restart"
SCRIPT = "mesh-rollout-script"
INSTALLED = "/usr/local/lib/kata-mesh/restart-meshed-workloads.sh"
INSTALL = f"sudo -n install -D -m 0644 /dev/fd/0 {INSTALLED}"
# What the program sends on stdin for a step: lib.sh, then the script.
SCRIPT_TEXT = "\n".join(
    (ROOT / "scripts" / "node" / name).read_text() for name in ("lib.sh", "98-restart-meshed-workloads.sh")
)


def restart_args(update: str) -> tuple[list[str], dict[str, str]]:
    """The update's command line: the runner (sudo, bash, the installed script), its --name values."""
    words = shlex.split(update)
    runner, rest = words[:4], words[4:]
    return runner, dict(zip(rest[::2], rest[1::2], strict=True))


def secret_value(value: Any) -> Any:
    return value["value"] if isinstance(value, dict) and "value" in value else value


# --- Under the mock engine ---------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_has_the_restart_with_no_create_and_an_update_for_exactly_the_app_namespaces(stack):
    program = cached_run(stack)
    restart = program.one(COMMAND, RESTART)
    # Nothing runs when it is created (a first deploy); nothing but its command line and connection
    # can make it run: no script text, no triggers (a trigger's change would be a replacement).
    assert "create" not in restart.inputs and "delete" not in restart.inputs
    assert "stdin" not in restart.inputs and "triggers" not in restart.inputs
    runner, given = restart_args(restart.inputs["update"])
    assert runner == ["sudo", "-n", "bash", INSTALLED]
    twin = stack == "dev"
    assert given == {
        "--namespaces": "httpbin httpbin-runc" if twin else "httpbin",
        "--istio-version": "1.30.4",
        "--timeout-seconds": "600",
    }
    cp0 = next(r.inputs["name"] for r in node_vms(program) if r.inputs["name"].endswith("-cp-0"))
    assert_connects_to(program, secret_value(restart.inputs["connection"]), cp0)
    # Both steps are the component's, of its own type.
    [component] = [r for r in program.registrations if r.type == "kata-mesh:mesh_rollout:MeshRollout"]
    script = program.one(COMMAND, SCRIPT)
    assert restart.parent == script.parent == component.urn
    assert_connects_to(program, secret_value(script.inputs["connection"]), cp0)


@pytest.mark.parametrize("stack", STACKS)
def test_the_restart_comes_after_the_istio_releases_and_the_apps_and_before_the_proof(stack):
    program = cached_run(stack)
    restart = program.one(COMMAND, RESTART)
    releases = [program.one(RELEASE, "mesh-base"), program.one(RELEASE, "mesh-istiod")]
    if stack == "prod":
        releases.append(program.one(RELEASE, "mesh-gateway"))
    apps = ["httpbin-deployment"] + (["httpbin-runc-deployment"] if stack == "dev" else [])
    for before in [*releases, *(program.one(DEPLOYMENT, name) for name in apps)]:
        assert before.urn in restart.dependencies, before.name
    # Its script is installed first; the proof's first step waits for the restart.
    assert program.one(COMMAND, SCRIPT).urn in restart.dependencies
    assert restart.urn in program.one(COMMAND, "proof-mesh-facts").dependencies


def test_the_script_is_installed_on_cp0_as_a_step_is_sent_and_written_again_when_it_changes():
    program = cached_run("dev")
    script = program.one(COMMAND, SCRIPT)
    assert script.inputs["create"] == script.inputs["update"] == INSTALL
    assert script.inputs["stdin"] == SCRIPT_TEXT
    cp0 = next(r for r in node_vms(program) if r.inputs["name"] == "kata-mesh-dev-cp-0")
    instance_id = program.states[cp0.urn]["instanceId"]
    assert script.inputs["triggers"] == [hashlib.sha256(SCRIPT_TEXT.encode()).hexdigest(), instance_id]


def restart_inputs(program) -> dict[str, Any]:
    return program.one(COMMAND, RESTART).inputs


# Four more runs of dev: with the system tests, to keep the plain run short.
@pytest.mark.system
def test_the_restart_runs_when_the_istio_version_or_the_namespaces_change_and_not_otherwise():
    base = cached_run("dev")
    same = run_program("dev", preview=False)
    upgraded = run_program("dev", preview=False, overrides={f"{PROJECT}:istioVersion": "1.30.5"})
    image = run_program(
        "dev", preview=False, overrides={f"{PROJECT}:httpbinImage": "docker.io/mccutchen/go-httpbin:v2.15.0"}
    )
    no_twin = run_program("dev", preview=False, overrides={f"{PROJECT}:runcTwin": False})
    assert restart_inputs(same) == restart_inputs(base)
    # Something unrelated (the app's image: the app itself rolls out) leaves it as it is.
    assert restart_inputs(image) == restart_inputs(base)
    # A new Istio version changes its update's command line, and nothing else: an update.
    changed = restart_inputs(upgraded)
    assert {k: v for k, v in changed.items() if k != "update"} == {
        k: v for k, v in restart_inputs(base).items() if k != "update"
    }
    assert restart_args(changed["update"])[1]["--istio-version"] == "1.30.5"
    assert restart_args(restart_inputs(no_twin)["update"])[1]["--namespaces"] == "httpbin"
    # The installed script is not written again for an upgrade: nothing of it changed.
    assert upgraded.one(COMMAND, SCRIPT).inputs == base.one(COMMAND, SCRIPT).inputs
    # The proof runs again after an upgrade (its sidecars against the new istiod).
    facts = "proof-mesh-facts"
    assert upgraded.one(COMMAND, facts).inputs["triggers"] != base.one(COMMAND, facts).inputs["triggers"]
    assert "istio 1.30.5" in upgraded.one(COMMAND, facts).inputs["triggers"]
    assert same.one(COMMAND, facts).inputs["triggers"] == base.one(COMMAND, facts).inputs["triggers"]


# --- 98-restart-meshed-workloads.sh in the node sandbox --------------------------------------------

# kubectl as the restart uses it, with admin.conf: each namespace's Deployments from state
# (deployments-NAMESPACE, as `-o jsonpath={.items[*].metadata.name}` prints them: space-separated),
# a restart and a status as kubectl words them; a Deployment named in state/rollout-fails-NAME does
# not finish within the timeout. The kubeconfig of every call is kept in state/kubeconfigs.
KUBECTL = r"""echo "${KUBECONFIG:-none}" >>"$state/kubeconfigs"
ns=$2
case "${*:3}" in
  "get deployments -o jsonpath={.items[*].metadata.name}") cat "$state/deployments-$ns" 2>/dev/null; exit 0 ;;
  "rollout restart deployment/"*) echo "deployment.apps/${5#deployment/} restarted"; exit 0 ;;
  "rollout status deployment/"*)
    name=${5#deployment/}
    if [[ -f $state/rollout-fails-$name ]]; then
      echo "Waiting for deployment \"$name\" rollout to finish: 1 old replicas are pending termination..."
      echo "error: timed out waiting for the condition" >&2; exit 1
    fi
    echo "deployment \"$name\" successfully rolled out"; exit 0 ;;
  "get pods -o wide")
    echo "NAME                            READY   STATUS     RESTARTS   AGE   IP           NODE"
    echo "$ns-7f9c6d5b8-k2m4q   1/2     Init:0/2   0          10m   10.244.1.9   kata-mesh-dev-worker-0"
    exit 0 ;;
esac
echo "kubectl stand-in: unexpected call: kubectl $*" >&2
exit 1
"""


@dataclass(frozen=True)
class Sent(NodeStep):
    """A command as the program sends it (the sandbox runs its command line, stdin as given)."""

    line: str = ""

    @property
    def command_line(self) -> str:
        return self.line


@pytest.fixture
def cp0(tmp_path: Path) -> Sandbox:
    require_sandbox()
    node = Sandbox(tmp_path / "cp-0")
    node.behaviour["kubectl"] = KUBECTL
    node.set_state("deployments-httpbin", "httpbin")
    node.set_state("deployments-httpbin-runc", "httpbin-runc")
    return node


def sent(name: str) -> dict[str, Any]:
    return cached_run("dev").one(COMMAND, name).inputs


def install(node: Sandbox) -> None:
    script = sent(SCRIPT)
    result = node.run(Sent("install", "install", (), line=script["create"]), stdin=script["stdin"])
    assert result.returncode == 0, result.stderr
    written = node.path(INSTALLED)
    assert written.read_text() == SCRIPT_TEXT
    assert written.stat().st_mode & 0o777 == 0o644


def restart(node: Sandbox, update: str | None = None):
    return node.run(Sent("restart", "restart", (), line=update or sent(RESTART)["update"]), stdin="")


DEV_SEQUENCE = [
    "kubectl -n httpbin get deployments -o jsonpath={.items[*].metadata.name}",
    "kubectl -n httpbin rollout restart deployment/httpbin",
    "kubectl -n httpbin-runc get deployments -o jsonpath={.items[*].metadata.name}",
    "kubectl -n httpbin-runc rollout restart deployment/httpbin-runc",
    "kubectl -n httpbin rollout status deployment/httpbin --timeout=600s",
    "kubectl -n httpbin-runc rollout status deployment/httpbin-runc --timeout=600s",
]


def test_the_restart_restarts_every_deployment_of_the_app_namespaces_then_waits_for_each(cp0):
    install(cp0)
    result = restart(cp0)
    assert result.returncode == 0, result.stderr
    assert cp0.calls() == DEV_SEQUENCE
    # As cluster admin: a restart patches the Deployments, which the proof's account may not.
    assert set((cp0.state / "kubeconfigs").read_text().split()) == {"/etc/kubernetes/admin.conf"}
    assert (
        "restarted 2 Deployment(s) for Istio 1.30.4: httpbin/httpbin httpbin-runc/httpbin-runc"
        in result.stderr
    )
    assert result.stdout == ""


def test_a_second_run_restarts_again_an_action_not_a_state(cp0):
    """The step keeps no state: every run restarts every Deployment again. The program runs it only
    when its inputs change (the Istio version, the namespaces), never to converge."""
    install(cp0)
    first = restart(cp0)
    second = restart(cp0)
    assert first.returncode == second.returncode == 0, second.stderr
    assert first.calls == second.calls == DEV_SEQUENCE
    # It wrote nothing on the node but the installed script.
    assert set(cp0.files()) == {INSTALLED}


def test_a_rollout_that_does_not_finish_fails_the_step_naming_the_deployment(cp0):
    cp0.set_state("deployments-httpbin", "httpbin sleep")
    cp0.set_state("rollout-fails-sleep")
    install(cp0)
    result = restart(cp0)
    assert result.returncode == 1
    # Every Deployment was restarted before any wait; the waits stop at the one that failed.
    assert result.calls[-2:] == [
        "kubectl -n httpbin rollout status deployment/sleep --timeout=600s",
        "kubectl -n httpbin get pods -o wide",
    ]
    assert "kubectl -n httpbin rollout restart deployment/sleep" in result.calls
    assert "kubectl -n httpbin-runc rollout restart deployment/httpbin-runc" in result.calls
    # The message goes on over the pods kubectl listed, one a line.
    error = result.stderr.split("[kata-mesh] ERROR: ", 1)[1].rstrip("\n")
    assert error.startswith(
        "deployment/sleep (namespace httpbin) did not finish restarting onto Istio 1.30.4's sidecar "
        "within 600s: NAME "
    )
    assert "httpbin-7f9c6d5b8-k2m4q   1/2     Init:0/2" in error
    assert error.endswith(
        "See kubectl -n httpbin describe deployment/sleep; once fixed, run pulumi up again "
        "(or kubectl -n httpbin rollout restart deployment/sleep)"
    )


def test_a_namespace_without_a_deployment_is_said_and_skipped(cp0):
    (cp0.state / "deployments-httpbin-runc").unlink()
    install(cp0)
    result = restart(cp0)
    assert result.returncode == 0, result.stderr
    assert result.calls == [
        "kubectl -n httpbin get deployments -o jsonpath={.items[*].metadata.name}",
        "kubectl -n httpbin rollout restart deployment/httpbin",
        "kubectl -n httpbin-runc get deployments -o jsonpath={.items[*].metadata.name}",
        "kubectl -n httpbin rollout status deployment/httpbin --timeout=600s",
    ]
    assert "namespace httpbin-runc has no Deployment: nothing to restart there" in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("600", "0"), "--timeout-seconds must be a whole number of seconds, not: 0"),
        (
            ("'httpbin httpbin-runc'", "'httpbin Bad_Name'"),
            "--namespaces takes namespace names, got: Bad_Name",
        ),
        (("--istio-version 1.30.4 ", ""), "missing required argument(s): --istio-version"),
    ],
)
def test_the_script_refuses_arguments_it_cannot_act_on_before_any_call(cp0, change, message):
    install(cp0)
    update = sent(RESTART)["update"]
    assert change[0] in update
    result = restart(cp0, update.replace(*change))
    assert result.returncode == 1
    assert step_error(result) == message
    assert result.calls == []
