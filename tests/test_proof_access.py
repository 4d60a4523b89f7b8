"""The proof runs as its own ServiceAccount with only what it needs (components/proof_access.py),
not as cluster-admin: its RBAC rules judged against every kubectl call the proof's scripts make,
the scripts' handling of the token (admin.conf only mints it; a private kubeconfig, removed at the
end; the token on no command line and in no output), and the declared objects against the
Kubernetes 1.36 schemas.

How a kubectl call becomes what RBAC checks (rbac_model below, the API server's request info:
verb from the HTTP method, list or watch for a GET without a name, a list or watch with a
metadata.name field selector named after it): `rollout status` gets the Deployment, then lists and
watches it by name; `wait` gets the pod, then lists and watches it by name; `delete --wait` deletes,
then gets, lists and watches by name; `exec` gets the pod, then opens pods/exec (a WebSocket: get, and
from Kubernetes 1.35 create too; SPDY: create); `describe pod` gets the pod and lists events. The
system tests below hold that model to what the real kubectl sends: every script runs with the real
kubectl against a stand-in API server that authenticates the minted token and authorizes every
request with the declared rules as RBAC would.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import re
import secrets
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlparse

import kubernetes_validate
import pulumi
import pulumi_kubernetes as k8s
import pytest
from harness import (
    PROJECT,
    SAMPLES,
    RecordingMonitor,
    Registration,
    as_manifest,
    cached_run,
    command_args,
    require_tool,
)
from harness import KataMeshMocks as Mocks
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await
from test_proof_hardening import find_kubectl
from test_verification import (
    FACTS_ARGS,
    PROOF_KUBECONFIG_GUARD,
    PROOF_TOKEN,
    WITH_TWIN,
    fake_kubectl,
    fake_kubectl_failing,
    fake_tools,
    run_script,
)

from components.proof import OUTSIDE_NAMESPACE, ha_facts_step
from components.proof_access import (
    PROOF_SERVICE_ACCOUNT,
    PROOF_SERVICE_ACCOUNT_NAMESPACE,
    ProofAccess,
    ProofAccessArgs,
    ProofRules,
    proof_rules,
)

KUBERNETES_SCHEMA_VERSION = "1.36.0"
ADMIN_CONF = "/etc/kubernetes/admin.conf"
HA_SAMPLES = SAMPLES.parent / "ha"
CP3 = [f"kata-mesh-dev-cp-{i}" for i in range(3)]
COMMAND = "command:remote:Command"
ACCESS_TYPE = "kata-mesh:proof:ProofAccess"


@pytest.fixture(scope="module", autouse=True)
def jq() -> None:
    require_tool("jq")


# --- RBAC, as the API server authorizes -----------------------------------------------------------


class Request(NamedTuple):
    """What RBAC checks: verb, API group, resource[/subresource], namespace ("" for a
    cluster-scoped one) and the object's name (None: no name, as for a create or a plain list)."""

    verb: str
    group: str
    resource: str
    namespace: str
    name: str | None

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else " (cluster)"
        return (
            f"{self.verb} {self.group or 'core'}/{self.resource}{f' {self.name}' if self.name else ''}{where}"
        )


def matches(rule: dict[str, list[str]], request: Request) -> bool:
    """RBAC's rule matching (rbac/v1 helpers: VerbMatches, APIGroupMatches, ResourceMatches,
    ResourceNameMatches), wildcards (`*`, `*/subresource`) included so that a widened rule is judged
    as RBAC would judge it."""
    sub = request.resource.partition("/")[2]
    resources = rule.get("resources", [])
    return (
        ("*" in rule["verbs"] or request.verb in rule["verbs"])
        and ("*" in rule.get("apiGroups", []) or request.group in rule.get("apiGroups", []))
        and ("*" in resources or request.resource in resources or (bool(sub) and f"*/{sub}" in resources))
        and (not rule.get("resourceNames") or request.name in rule["resourceNames"])
    )


def allowed(rules: ProofRules, request: Request) -> bool:
    """A Role binds in its namespace, the ClusterRole (a ClusterRoleBinding) everywhere."""
    scoped = rules.namespaced.get(request.namespace, []) if request.namespace else []
    return any(matches(rule, request) for rule in [*scoped, *rules.cluster])


# --- What each kubectl call of the scripts asks -------------------------------------------------


def rbac_model(argv: list[str]) -> list[Request]:
    """The requests one kubectl call makes (see the module's docstring). A call this does not
    know fails the test: a new kubectl call in a script needs its permissions thought through."""
    args = list(argv)
    namespace = "default"
    if args[:1] == ["-n"]:
        namespace, args = args[1], args[2:]
    command = args[0]
    if command == "rollout" and args[1] == "status":
        kind, name = args[2].split("/")
        assert kind == "deployment", argv
        return [Request(v, "apps", "deployments", namespace, name) for v in ("get", "list", "watch")]
    if command == "get" and args[1] == "nodes":
        return [Request("list", "", "nodes", "", None)]
    if command == "get" and args[1] in ("pod", "pods"):
        name = args[2] if len(args) > 2 and not args[2].startswith("-") else None
        return [Request("get" if name else "list", "", "pods", namespace, name)]
    if command == "run":
        return [Request("create", "", "pods", namespace, None)]
    if command == "wait":
        kind, name = next(a for a in args[1:] if not a.startswith("-")).split("/")
        assert kind == "pod", argv
        return [Request(v, "", "pods", namespace, name) for v in ("get", "list", "watch")]
    if command == "delete" and args[1] == "pod":
        name = args[2]
        return [Request(v, "", "pods", namespace, name) for v in ("delete", "get", "list", "watch")]
    if command == "exec":
        name = args[1]
        return [
            Request("get", "", "pods", namespace, name),
            Request("get", "", "pods/exec", namespace, name),
            Request("create", "", "pods/exec", namespace, name),
        ]
    if command == "describe" and args[1] == "pod":
        return [
            Request("get", "", "pods", namespace, args[2]),
            Request("list", "", "events", namespace, None),
        ]
    raise AssertionError(f"no RBAC model for kubectl {' '.join(argv)}")


def apps_of(argument: str) -> dict[str, str]:
    """--apps (<namespace>/<deployment> ...) as each app with its namespace."""
    return {app: namespace for namespace, app in (entry.split("/") for entry in argument.split())}


# --- The scripts, with kubectl stand-ins that record how they were called --------------------------

# Put before a stand-in's body: each call (KUBECONFIG, the modes of that file and of its folder,
# the arguments) to $ACCESS_LOG, fields apart by \x1e, arguments by \x1f, records by \x1d.
ACCESS_LOGGER = """config=${KUBECONFIG:-}
modes=$(stat -c %a -- "$config" "${config%/*}" 2>/dev/null)
{ printf '%s\\x1e' "$config" "${modes//$'\\n'/ }"; printf '%s\\x1f' "$@"; printf '\\x1d\\n'; } >>"$ACCESS_LOG"
"""


def logged_calls(log: Path) -> list[dict[str, Any]]:
    calls = []
    for record in log.read_text().split("\x1d\n")[:-1] if log.exists() else []:
        config, modes, argv = record.split("\x1e")
        mode, dir_mode = ([*modes.split(), "", ""])[:2]
        calls.append(
            {"kubeconfig": config, "mode": mode, "dirMode": dir_mode, "argv": argv.split("\x1f")[:-1]}
        )
    return calls


@dataclass
class Run:
    """One script run: its result and every kubectl call, in order."""

    returncode: int
    stdout: str
    stderr: str
    calls: list[dict[str, Any]]
    args: dict[str, str]
    # Every jq command line the run had.
    jq_calls: str = ""

    def admin(self) -> list[list[str]]:
        return [c["argv"] for c in self.calls if c["argv"][:2] == ["--kubeconfig", ADMIN_CONF]]

    def as_proof(self) -> list[dict[str, Any]]:
        """The calls after the token was minted (all but admin.conf's)."""
        return [c for c in self.calls if c["argv"][:2] != ["--kubeconfig", ADMIN_CONF]]

    def requests(self) -> list[Request]:
        return [r for c in self.as_proof() for r in rbac_model(c["argv"])]

    def rules(self) -> ProofRules:
        """The rules for this run's own arguments (as the program gives both from one source)."""
        if "apps" in self.args:
            apps = apps_of(self.args["apps"])
            return proof_rules(apps, self.args["namespace"], self.args["outside-namespace"])
        return proof_rules({"httpbin": "httpbin"}, "httpbin", OUTSIDE_NAMESPACE)


def run_with(folder: Path, script: str, kubectl: str, args: tuple[tuple[str, str], ...], **tools: str) -> Run:
    """The script with these stand-ins; jq is the real one, its arguments logged to $JQ_LOG."""
    folder.mkdir(parents=True, exist_ok=True)
    jq = require_tool("jq")
    logged_jq = f'printf "%s\\n" "$*" >>"$JQ_LOG"\nexec {jq} "$@"'
    env = fake_tools(folder, {"kubectl": ACCESS_LOGGER + kubectl, "jq": logged_jq, **tools})
    env |= {name: str(folder / f"{name.lower()}") for name in ("KUBECTL_LOG", "ACCESS_LOG", "JQ_LOG")}
    env["STATE"] = str(folder)
    result = run_script(script, args, env)
    calls = logged_calls(folder / "access_log")
    jq_calls = (folder / "jq_log").read_text() if (folder / "jq_log").exists() else ""
    return Run(result.returncode, result.stdout, result.stderr, calls, dict(args), jq_calls)


# 94-ha-facts.sh's kubectl on a control plane, with the proof's kubeconfig; crictl finds no etcd
# (recorded as etcd's error: only kubectl is looked at here).
KUBECTL_NODES = PROOF_KUBECONFIG_GUARD + (
    'case "$*" in\n'
    '  "get nodes -l node-role.kubernetes.io/control-plane -o json")\n'
    '    [[ -f $STATE/forbidden ]] && { echo \'Error from server (Forbidden): nodes is forbidden: User "system:serviceaccount:kube-system:kata-mesh-proof" cannot list resource "nodes" in API group "" at the cluster scope\' >&2; exit 1; }\n'
    f'    cat "{HA_SAMPLES}/kubectl-get-control-plane-nodes-3.json" ;;\n'
    '  *) echo "kubectl stand-in: unexpected call: kubectl $*" >&2; exit 1 ;;\n'
    "esac\n"
)
NO_ETCD = {"crictl": "exit 0", "sleep": "exit 0"}

PLAINTEXT_NOT_READY = (
    '*"delete pod plaintext-client"* | *"run plaintext-client"* | *"wait --for=condition=Ready pod/plaintext-client"*) ;;',
    '*"delete pod plaintext-client"* | *"run plaintext-client"*) ;;\n'
    '  *"wait --for=condition=Ready pod/plaintext-client"*) exit 1 ;;\n'
    '  *"describe pod plaintext-client"*) echo "Warning  Failed  ErrImagePull" ;;',
)


def ha_args(attempts: int = 1) -> tuple[tuple[str, str], ...]:
    step = ha_facts_step(CP3)
    return (*step.args[:-1], ("attempts", str(attempts)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """Every path of the two scripts that calls kubectl differently, run once for the module."""
    base = tmp_path_factory.mktemp("runs")
    facts = "96-mesh-facts.sh"
    return {
        "facts": run_with(base / "facts", facts, fake_kubectl("curl-get-mtls.txt"), WITH_TWIN),
        "rollout-failed": run_with(base / "rollout", facts, fake_kubectl_failing("rollout"), WITH_TWIN),
        "client-not-ready": run_with(base / "client", facts, fake_kubectl_failing("client"), WITH_TWIN),
        "plaintext-not-ready": run_with(
            base / "plaintext",
            facts,
            fake_kubectl("curl-get-mtls.txt").replace(*PLAINTEXT_NOT_READY),
            WITH_TWIN,
        ),
        "facts-without-twin": run_with(base / "single", facts, fake_kubectl("curl-get-mtls.txt"), FACTS_ARGS),
        "ha": run_with(base / "ha", "94-ha-facts.sh", KUBECTL_NODES, ha_args(), **NO_ETCD),
    }


EXPECTED_RESULT = {
    "facts": (0, None),
    "rollout-failed": (1, "deployment httpbin (namespace httpbin) did not roll out within 5s"),
    "client-not-ready": (1, "the mesh client pod is not Ready: Warning  Failed  ErrImagePull"),
    "plaintext-not-ready": (1, "the plaintext client pod (default/plaintext-client) is not Ready"),
    "facts-without-twin": (0, None),
    "ha": (0, None),
}


def test_each_path_of_the_scripts_ran_as_the_tests_mean_it_to(runs):
    for name, (code, message) in EXPECTED_RESULT.items():
        run = runs[name]
        assert run.returncode == code, (name, run.stderr)
        assert message is None or f"ERROR: {message}" in run.stderr, (name, run.stderr)
        assert "kubectl stand-in:" not in run.stderr, (name, run.stderr)
    assert any(c["argv"][:3] == ["-n", "default", "describe"] for c in runs["plaintext-not-ready"].calls)
    assert any(c["argv"][2:4] == ["get", "pods"] for c in runs["rollout-failed"].calls)


def test_every_kubectl_call_after_the_token_is_allowed_by_the_declared_rules(runs):
    for name, run in runs.items():
        refused = [str(r) for r in run.requests() if not allowed(run.rules(), r)]
        assert refused == [], f"{name}: the proof's ServiceAccount may not {refused}"


def grants_of(rules: ProofRules) -> list[tuple[str, int, str, str]]:
    """Each (namespace, rule index, resource, verb) the rules grant."""
    return [
        (namespace, index, resource, verb)
        for namespace, namespace_rules in [*rules.namespaced.items(), ("", rules.cluster)]
        for index, rule in enumerate(namespace_rules)
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]


def without(rules: ProofRules, namespace: str, index: int, resource: str, verb: str) -> ProofRules:
    """The rules with one verb on one resource taken away."""
    changed = copy.deepcopy(rules)
    target = changed.namespaced[namespace] if namespace else changed.cluster
    rule = target[index]
    target.pop(index)
    for kept_resource in rule["resources"]:
        verbs = [v for v in rule["verbs"] if (kept_resource, v) != (resource, verb)]
        if verbs:
            target.append({**rule, "resources": [kept_resource], "verbs": verbs})
    return changed


def test_every_verb_the_rules_grant_is_needed_by_some_call(runs):
    """Least privilege, and a bug planted in the rules is caught: take any one verb away and some
    call of the scripts is refused."""
    rules = runs["facts"].rules()
    named = ("facts", "rollout-failed", "client-not-ready", "plaintext-not-ready", "ha")
    assert all(runs[name].rules() == rules for name in named[:-1])
    requests = [r for name in named for r in runs[name].requests()]
    assert all(allowed(rules, r) for r in requests)
    for grant in grants_of(rules):
        smaller = without(rules, *grant)
        assert not all(allowed(smaller, r) for r in requests), f"{grant} is granted but never needed"


def test_the_rules_are_held_to_the_proofs_own_objects():
    """Beyond what the calls need: nothing on Secrets, no wildcard, no writes but the clients'
    pods; in the outside namespace only the plaintext client; the app's pods never deleted."""
    rules = proof_rules({"httpbin": "httpbin", "httpbin-runc": "httpbin-runc"}, "httpbin", "default")
    every = [rule for r in rules.namespaced.values() for rule in r] + rules.cluster
    for rule in every:
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert not any("*" in value for value in rule.get(key, [])), rule
        assert "secrets" not in rule["resources"] and "serviceaccounts/token" not in rule["resources"]
        assert set(rule["verbs"]) <= {"get", "list", "watch", "create", "delete"}, rule
    assert sorted(rules.namespaced) == ["default", "httpbin", "httpbin-runc"]
    assert rules.cluster == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]
    refused = [
        Request("get", "", "secrets", "httpbin", None),
        Request("list", "", "secrets", "default", None),
        Request("get", "", "nodes", "", "kata-mesh-dev-cp-0"),
        Request("get", "", "pods", "default", "someone-elses-pod"),
        Request("list", "", "pods", "default", None),
        Request("create", "", "pods/exec", "default", "someone-elses-pod"),
        Request("delete", "", "pods", "default", "someone-elses-pod"),
        Request("delete", "", "pods", "httpbin", "httpbin-6b8f7c9d4-x2x7k"),
        Request("create", "", "pods", "httpbin-runc", None),
        Request("delete", "", "pods", "httpbin-runc", "httpbin-runc-5d9c8b7f6-q9w8e"),
        Request("get", "apps", "deployments", "httpbin", "another-app"),
        Request("update", "apps", "deployments", "httpbin", "httpbin"),
        Request("create", "", "pods", "kube-system", None),
        Request("get", "", "pods", "kube-system", "etcd-kata-mesh-dev-cp-0"),
        Request("create", "", "serviceaccounts/token", "kube-system", PROOF_SERVICE_ACCOUNT),
    ]
    assert [str(r) for r in refused if allowed(rules, r)] == []


def test_admin_conf_only_mints_the_token_and_every_later_call_uses_the_private_kubeconfig(runs):
    mint = ["-n", PROOF_SERVICE_ACCOUNT_NAMESPACE, "create", "token", PROOF_SERVICE_ACCOUNT]
    for name, run in runs.items():
        admin = run.admin()
        # The cluster's entry read, then the token: for the run, and again for the cleanup of the
        # pods it made.
        deletes = sum("--grace-period=1" in c["argv"] for c in run.calls)
        pods_made = deletes > 0
        assert pods_made == (name not in ("ha", "rollout-failed")), name
        assert len(admin) == (4 if pods_made else 2), (name, admin)
        for view, token in zip(admin[::2], admin[1::2], strict=True):
            assert view[2:6] == ["config", "view", "--minify", "--raw"], view
            assert token[2:7] == mint and re.fullmatch(r"--duration=[0-9]+s", token[7]), token
        assert run.calls[0]["argv"] == admin[0] and run.calls[1]["argv"] == admin[1]
        if pods_made:
            # The cleanup's token comes right before the deletes, which end the run.
            cleanup = run.calls[-deletes - 2 :]
            assert [c["argv"] for c in cleanup[:2]] == admin[2:]
            assert all("--grace-period=1" in c["argv"] for c in cleanup[2:])
        proof = run.as_proof()
        assert proof, name
        kubeconfigs = {c["kubeconfig"] for c in proof}
        for call in proof:
            assert call["kubeconfig"] != ADMIN_CONF and "--kubeconfig" not in call["argv"], call
            # Readable by its owner alone (root on a node), in a folder only its owner may enter.
            assert (call["mode"], call["dirMode"]) == ("600", "700"), call
        assert len({Path(k).parent for k in kubeconfigs}) == 1
        for kubeconfig in kubeconfigs:
            assert not Path(kubeconfig).exists() and not Path(kubeconfig).parent.exists(), name


def test_the_token_is_on_no_command_line_and_in_no_output(runs):
    for name, run in runs.items():
        for call in run.calls:
            assert PROOF_TOKEN not in json.dumps(call["argv"]), (name, call)
        assert PROOF_TOKEN not in run.stdout + run.stderr, name
        # Nor on jq's command line: the kubeconfig's token comes on its stdin.
        assert "create token" not in run.jq_calls and "kata-mesh-proof" in run.jq_calls, name
        assert PROOF_TOKEN not in run.jq_calls, name


def durations(run: Run) -> list[str]:
    return [argv[-1] for argv in run.admin() if "token" in argv]


def test_the_tokens_lifetimes_cover_the_bounded_waits(runs):
    """Run: each rollout and the two clients' readiness (--timeout-seconds each) and ten minutes
    more; cleanup: each pod's delete and ten minutes more; the HA facts: a minute per attempt and
    ten minutes more."""
    assert durations(runs["facts"]) == [f"--duration={(2 + 2) * 5 + 600}s", f"--duration={2 * 5 + 600}s"]
    assert durations(runs["client-not-ready"]) == [f"--duration={(2 + 2) * 5 + 600}s", "--duration=605s"]
    assert durations(runs["facts-without-twin"])[0] == f"--duration={(1 + 2) * 5 + 600}s"
    assert durations(runs["ha"]) == [f"--duration={1 * 60 + 600}s"]


def test_the_ha_facts_script_records_a_refusal_to_list_nodes(tmp_path):
    (tmp_path / "forbidden").touch()
    run = run_with(tmp_path, "94-ha-facts.sh", KUBECTL_NODES, ha_args(), **NO_ETCD)
    assert run.returncode == 0, run.stderr
    error = json.loads(run.stdout)["nodes"]["error"]
    assert error.startswith("kubectl get nodes: Error from server (Forbidden): nodes is forbidden: ")


def test_a_token_that_cannot_be_minted_fails_the_facts_step_before_any_pod_is_made(tmp_path):
    kubectl = fake_kubectl("curl-get-mtls.txt").replace(
        "{ echo " + PROOF_TOKEN + "; exit 0; }",
        "{ echo 'error: failed to create token: serviceaccounts \"kata-mesh-proof\" not found' >&2; exit 1; }",
    )
    run = run_with(tmp_path / "run", "96-mesh-facts.sh", kubectl, FACTS_ARGS)
    assert run.returncode == 1
    assert (
        "ERROR: could not mint a token for ServiceAccount kube-system/kata-mesh-proof (is it declared? "
        "components/proof_access.py)" in run.stderr
    )
    assert run.as_proof() == [] and run.stdout == ""


# --- The declared objects ------------------------------------------------------------------------

TWIN_APPS = {"httpbin": "httpbin", "httpbin-runc": "httpbin-runc"}
ROLE = "kubernetes:rbac.authorization.k8s.io/v1:Role"
ROLE_BINDING = "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding"
CLUSTER_ROLE = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole"
CLUSTER_ROLE_BINDING = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding"
SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"


@dataclass
class Declared:
    registrations: list[Registration]
    after: str = ""
    provider: str = ""

    def of(self, type_: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == type_]


def declare_access(apps: dict[str, str], stack: str = "dev") -> Declared:
    """ProofAccess alone under the Pulumi SDK's mock engine (as `pulumi up` would register it), after
    a stand-in for the app, with a Kubernetes provider of its own."""
    monitor = RecordingMonitor(Mocks(preview=False))
    pulumi.runtime.settings.ROOT.set(object())  # type: ignore[arg-type]
    pulumi.runtime.set_mocks(monitor.mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.settings.ROOT.set(None)
    settings: Any = pulumi.runtime.settings.SETTINGS
    settings.rpc_manager.clear()
    settings.outputs.clear()

    def program() -> None:
        provider = k8s.Provider("cluster", kubeconfig="apiVersion: v1\nkind: Config\n")
        app = k8s.core.v1.Namespace(
            "app", metadata={"name": "httpbin"}, opts=pulumi.ResourceOptions(provider=provider)
        )
        ProofAccess(
            "proof-access",
            ProofAccessArgs(
                provider=provider,
                apps=apps,
                client_namespace="httpbin",
                outside_namespace=OUTSIDE_NAMESPACE,
                after=[app],
            ),
        )

    _sync_await(run_in_stack(program))
    declared = Declared(list(monitor.registrations))
    declared.after = next(r.urn for r in declared.registrations if r.name == "app")
    return declared


@pytest.fixture(scope="module")
def declared() -> Declared:
    return declare_access(TWIN_APPS)


def test_the_declared_objects_pass_the_strict_schema(declared):
    manifests = [
        as_manifest(r.inputs)
        for r in declared.registrations
        if r.type in (ROLE, ROLE_BINDING, CLUSTER_ROLE, CLUSTER_ROLE_BINDING, SERVICE_ACCOUNT)
    ]
    assert len(manifests) == 3 + 3 + 1 + 1 + 1
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_SCHEMA_VERSION, strict=True)


def test_the_strict_schema_check_catches_a_wrong_field_in_a_role(declared):
    [role, *_] = declared.of(ROLE)
    manifest = as_manifest(role.inputs)
    manifest["rules"][0]["resourceName"] = ["x"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES_SCHEMA_VERSION, strict=True)


def test_the_roles_are_proof_rules_and_bound_to_the_service_account_only(declared):
    rules = proof_rules(TWIN_APPS, "httpbin", OUTSIDE_NAMESPACE)
    subject = [{"kind": "ServiceAccount", "name": "kata-mesh-proof", "namespace": "kube-system"}]
    [account] = declared.of(SERVICE_ACCOUNT)
    assert account.inputs["metadata"] == {"name": "kata-mesh-proof", "namespace": "kube-system"}
    assert account.inputs["automountServiceAccountToken"] is False
    roles = {r.inputs["metadata"]["namespace"]: r for r in declared.of(ROLE)}
    assert {ns: as_manifest(r.inputs)["rules"] for ns, r in roles.items()} == rules.namespaced
    for binding in declared.of(ROLE_BINDING):
        namespace = binding.inputs["metadata"]["namespace"]
        assert (
            binding.inputs["metadata"]["name"]
            == roles[namespace].inputs["metadata"]["name"]
            == "kata-mesh-proof"
        )
        assert binding.inputs["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "kata-mesh-proof",
        }
        assert binding.inputs["subjects"] == subject
        assert roles[namespace].urn in binding.dependencies
    [cluster_role] = declared.of(CLUSTER_ROLE)
    [cluster_binding] = declared.of(CLUSTER_ROLE_BINDING)
    assert as_manifest(cluster_role.inputs)["rules"] == rules.cluster
    assert cluster_binding.inputs["roleRef"]["kind"] == "ClusterRole"
    assert cluster_binding.inputs["roleRef"]["name"] == cluster_role.inputs["metadata"]["name"]
    assert cluster_binding.inputs["subjects"] == subject


def test_every_object_is_a_child_of_the_component_made_with_the_clusters_provider_after_the_app(declared):
    [component] = [r for r in declared.registrations if r.type == ACCESS_TYPE]
    children = [r for r in declared.registrations if r.parent == component.urn]
    assert len(children) == 9 and all(r.custom for r in children)
    provider = next(r for r in declared.registrations if r.type == "pulumi:providers:kubernetes")
    for child in children:
        assert child.provider.startswith(provider.urn), child.name
        assert declared.after in child.dependencies, child.name


def test_without_a_twin_no_role_goes_to_its_namespace():
    rules = proof_rules({"httpbin": "httpbin"}, "httpbin", OUTSIDE_NAMESPACE)
    assert sorted(rules.namespaced) == ["default", "httpbin"]
    declared = declare_access({"httpbin": "httpbin"})
    assert sorted(r.inputs["metadata"]["namespace"] for r in declared.of(ROLE)) == ["default", "httpbin"]


def test_the_proofs_steps_name_the_service_account_proof_access_declares():
    program = cached_run("dev")
    facts = command_args(program.one(COMMAND, "proof-mesh-facts").inputs["create"])
    [account] = [
        r.inputs["metadata"]
        for r in program.of_type("kubernetes:core/v1:ServiceAccount")
        if "proof" in r.name
    ]
    declared = (account["name"], account["namespace"])
    assert (facts["--proof-service-account"], facts["--proof-service-account-namespace"]) == declared
    ha = command_args(cached_run("prod").one(COMMAND, "proof-ha-facts").inputs["create"])
    assert (ha["--proof-service-account"], ha["--proof-service-account-namespace"]) == declared
    # The namespaces the step touches are the ones the rules cover (dev has the runc twin).
    apps = apps_of(facts["--apps"])
    rules = proof_rules(apps, facts["--namespace"], facts["--outside-namespace"])
    assert sorted(rules.namespaced) == sorted(
        {*apps.values(), facts["--namespace"], facts["--outside-namespace"]}
    )


def test_the_stack_wires_proof_access_before_the_proof():
    """__main__.py declares ProofAccess: the proof's steps wait for its bindings, and its Roles
    cover exactly the namespaces the facts step touches."""
    program = cached_run("dev")
    assert [r.name for r in program.of_type(ACCESS_TYPE)] == ["proof-access"]
    facts = program.one(COMMAND, "proof-mesh-facts")
    bindings = [r for r in program.registrations if r.type in (ROLE_BINDING, CLUSTER_ROLE_BINDING)]
    proof_bindings = [b for b in bindings if b.inputs["metadata"]["name"] == "kata-mesh-proof"]
    assert proof_bindings and all(b.urn in facts.dependencies for b in proof_bindings)
    given = command_args(facts.inputs["create"])
    apps = apps_of(given["--apps"])
    expected = proof_rules(apps, given["--namespace"], given["--outside-namespace"])
    roles = {
        r.inputs["metadata"]["namespace"]: as_manifest(r.inputs)["rules"]
        for r in program.of_type(ROLE)
        if r.inputs["metadata"]["name"] == "kata-mesh-proof"
    }
    assert roles == expected.namespaced


# --- The real kubectl against a stand-in API server that enforces the rules ----------------------

ADMIN_TOKEN = "stand-in-admin-token"
PROOF_USER = f"system:serviceaccount:{PROOF_SERVICE_ACCOUNT_NAMESPACE}:{PROOF_SERVICE_ACCOUNT}"
# What the stand-in serves: the core group and apps (discovery, as the legacy endpoints answer).
CORE_RESOURCES = [
    ("pods", "Pod", True, ["create", "delete", "get", "list", "watch"]),
    ("pods/exec", "PodExecOptions", True, ["create", "get"]),
    ("events", "Event", True, ["list"]),
    ("nodes", "Node", False, ["get", "list", "watch"]),
    ("serviceaccounts", "ServiceAccount", True, ["get"]),
    ("serviceaccounts/token", "TokenRequest", True, ["create"]),
]


def request_info(method: str, path: str, query: dict[str, list[str]]) -> Request | None:
    """The API server's request info (k8s.io/apiserver endpoints/request/requestinfo.go) for the
    paths kubectl uses; None for a non-resource path (discovery)."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) > 2:
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    verb = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource += "/" + rest[2]
    if name is None and verb == "get":
        verb = "watch" if query.get("watch", ["false"])[0].lower() not in ("false", "0") else "list"
        selected = re.fullmatch(r"metadata\.name==?([^,]+)", query.get("fieldSelector", [""])[0])
        name = selected.group(1) if selected else None
    elif name is None and verb == "delete":
        verb = "deletecollection"
    return Request(verb, group, resource, namespace, name)


def selected(item: dict[str, Any], query: dict[str, list[str]]) -> bool:
    """A list's field selector (metadata.name) and label selector (key=value, key, !key)."""
    fields = query.get("fieldSelector", [""])[0]
    if fields.startswith("metadata.name=") and item["metadata"]["name"] != fields.split("=")[-1]:
        return False
    labels = item["metadata"].get("labels", {})
    for term in filter(None, query.get("labelSelector", [""])[0].split(",")):
        key, _, value = term.partition("=")
        value = value.lstrip("=")
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif ("=" in term and labels.get(key) != value) or key not in labels:
            return False
    return True


def protobuf_fields(data: bytes) -> dict[int, list[Any]]:
    """A protobuf message's fields (varints and length-delimited ones: all a TokenRequest has)."""
    found: dict[int, list[Any]] = {}
    at = 0

    def varint() -> int:
        nonlocal at
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while at < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            found.setdefault(number, []).append(varint())
        elif wire == 2:
            length = varint()
            found.setdefault(number, []).append(data[at : at + length])
            at += length
        else:
            raise AssertionError(f"wire type {wire} in a TokenRequest")
    return found


def token_request_seconds(body: bytes, content_type: str) -> int:
    """spec.expirationSeconds of a TokenRequest as kubectl sends it: JSON, or Kubernetes' protobuf
    (the "k8s\\0" envelope, runtime.Unknown's raw (2), TokenRequest's spec (2), its
    expirationSeconds (4))."""
    if "protobuf" not in content_type:
        return json.loads(body)["spec"]["expirationSeconds"]
    assert body.startswith(b"k8s\x00"), body[:8]
    raw = protobuf_fields(body[4:])[2][0]
    spec = protobuf_fields(raw)[2][0]
    return protobuf_fields(spec)[4][0]


@dataclass
class Seen:
    """One request as the stand-in judged it (request None: a non-resource path)."""

    identity: str
    method: str
    path: str
    request: Request | None
    allowed: bool


@dataclass
class StandInCluster:
    """An HTTPS API server on 127.0.0.1 that authenticates admin.conf's token and the tokens it
    mints for the proof's ServiceAccount, authorizes the latter with `rules` as RBAC does (a
    WebSocket exec needs get and create on pods/exec, as from Kubernetes 1.35), and serves pods,
    the apps' Deployments, Nodes and events as a cluster with the recorded app would. pods/exec
    is authorized, then answered 400: the scripts' exec output comes from the recordings."""

    rules: ProofRules
    not_ready: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    token_seconds: list[int] = field(default_factory=list)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    url: str = ""

    def __post_init__(self) -> None:
        for pod in json.loads((SAMPLES / "kubectl-get-pods.json").read_text())["items"]:
            self.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod | {
                "apiVersion": "v1",
                "kind": "Pod",
            }
        self.deployments = {(ns, app): deployment(ns, app) for app, ns in TWIN_APPS.items()}
        self.nodes = json.loads((HA_SAMPLES / "kubectl-get-control-plane-nodes-3.json").read_text())["items"]
        self.lock = threading.Lock()

    def denied(self) -> list[str]:
        return [f"{s.identity}: {s.request}" for s in self.seen if not s.allowed]

    def of(self, identity: str) -> list[Request]:
        return [s.request for s in self.seen if s.identity == identity and s.request is not None]


def deployment(namespace: str, app: str) -> dict[str, Any]:
    """A Deployment whose rollout is complete (what `rollout status` reads)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": app,
            "namespace": namespace,
            "generation": 1,
            "resourceVersion": "7",
            "uid": f"uid-{app}",
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"containers": [{"name": "httpbin", "image": "httpbin"}]},
            },
        },
        "status": {
            "observedGeneration": 1,
            "replicas": 1,
            "updatedReplicas": 1,
            "readyReplicas": 1,
            "availableReplicas": 1,
            "conditions": [
                {"type": "Available", "status": "True"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        },
    }


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def forbidden(request: Request) -> dict[str, Any]:
    """The authorizer's refusal as the API server words it (responsewriters.forbiddenMessage)."""
    resource, _, sub = request.resource.partition("/")
    what = f'{resource} "{request.name}"' if request.name else resource
    scope = f'in the namespace "{request.namespace}"' if request.namespace else "at the cluster scope"
    subresource = f' with subresource "{sub}"' if sub else ""
    message = (
        f'{what} is forbidden: User "{PROOF_USER}" cannot {request.verb} resource "{resource}"{subresource} '
        f'in API group "{request.group}" {scope}'
    )
    return status(403, "Forbidden", message)


def make_handler(cluster: StandInCluster) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code: int, doc: dict[str, Any] | None) -> None:
            body = json.dumps(doc).encode() if doc is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def _handle(self, method: str) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            content_type = self.headers.get("Content-Type", "")
            body = json.loads(raw) if raw and "json" in content_type else raw
            auth = self.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
            identity = "admin" if token == ADMIN_TOKEN else "proof" if token in cluster.tokens else ""
            request = request_info(method, url.path, query)
            if not identity:
                cluster.seen.append(Seen("anonymous", method, url.path, request, False))
                return self._send(401, status(401, "Unauthorized", "Unauthorized"))
            needs = [request] if request else []
            if request and request.resource == "pods/exec" and request.verb == "get":
                # The WebSocket upgrade: from Kubernetes 1.35 it needs create too.
                needs.append(request._replace(verb="create"))
            judged = [(need, identity == "admin" or allowed(cluster.rules, need)) for need in needs]
            cluster.seen.extend(Seen(identity, method, url.path, need, ok) for need, ok in judged)
            if not needs:
                cluster.seen.append(Seen(identity, method, url.path, None, True))
                return self._discovery(url.path)
            refused = [need for need, ok in judged if not ok]
            if refused:
                return self._send(403, forbidden(refused[0]))
            assert request is not None
            with cluster.lock:
                self._serve(request, query, body)

        def _discovery(self, path: str) -> None:
            if path == "/api":
                return self._send(
                    200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
                )
            if path == "/apis":
                version = {"groupVersion": "apps/v1", "version": "v1"}
                groups = [{"name": "apps", "versions": [version], "preferredVersion": version}]
                return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
            if path in ("/api/v1", "/apis/apps/v1"):
                listed = (
                    CORE_RESOURCES
                    if path == "/api/v1"
                    else [("deployments", "Deployment", True, ["get", "list", "watch"])]
                )
                resources = [
                    {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs}
                    for name, kind, namespaced, verbs in listed
                ]
                group_version = path.removeprefix("/api/").removeprefix("/apis/")
                return self._send(
                    200, {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}
                )
            return self._send(
                404, status(404, "NotFound", "the server could not find the requested resource")
            )

        def _list(self, kind: str, items: list[dict[str, Any]], query: dict[str, list[str]]) -> None:
            if query.get("watch", ["false"])[0].lower() not in ("false", "0"):
                # A watch that sees nothing and ends (kubectl has what it waits for by then).
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.flush()
                time.sleep(0.3)
                return None
            found = [item for item in items if selected(item, query)]
            api_version = "apps/v1" if kind == "DeploymentList" else "v1"
            return self._send(
                200,
                {
                    "apiVersion": api_version,
                    "kind": kind,
                    "metadata": {"resourceVersion": "42"},
                    "items": found,
                },
            )

        def _serve(self, request: Request, query: dict[str, list[str]], body: Any) -> None:
            ns, name, verb = request.namespace, request.name, request.verb
            if request.resource == "serviceaccounts/token" and verb == "create":
                if (ns, name) != (PROOF_SERVICE_ACCOUNT_NAMESPACE, PROOF_SERVICE_ACCOUNT):
                    return self._send(404, status(404, "NotFound", f'serviceaccounts "{name}" not found'))
                minted = secrets.token_urlsafe(32)
                cluster.tokens.append(minted)
                seconds = token_request_seconds(
                    body if isinstance(body, bytes) else json.dumps(body).encode(),
                    self.headers.get("Content-Type", ""),
                )
                cluster.token_seconds.append(seconds)
                answer = {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"audiences": [], "expirationSeconds": seconds},
                    "status": {"token": minted, "expirationTimestamp": "2030-01-01T00:00:00Z"},
                }
                return self._send(201, answer)
            if request.resource == "deployments":
                if verb == "get":
                    found = cluster.deployments.get((ns, name or ""))
                    return (
                        self._send(200, found)
                        if found
                        else self._send(404, status(404, "NotFound", "not found"))
                    )
                items = [d for (d_ns, _), d in cluster.deployments.items() if d_ns == ns]
                return self._list("DeploymentList", items, query)
            if request.resource == "nodes":
                return self._list("NodeList", cluster.nodes, query)
            if request.resource == "events":
                return self._list("EventList", [], query)
            if request.resource == "pods/exec":
                return self._send(400, status(400, "BadRequest", "the stand-in API server runs no exec"))
            if request.resource != "pods":
                return self._send(404, status(404, "NotFound", f"the stand-in serves no {request.resource}"))
            key = (ns, name or "")
            if verb in ("list", "watch"):
                return self._list(
                    "PodList", [p for (p_ns, _), p in cluster.pods.items() if p_ns == ns], query
                )
            if verb == "get" or verb == "delete":
                if key not in cluster.pods:
                    return self._send(404, status(404, "NotFound", f'pods "{name}" not found'))
                return self._send(200, cluster.pods.pop(key) if verb == "delete" else cluster.pods[key])
            assert verb == "create", request
            pod = {**body, "apiVersion": "v1", "kind": "Pod"}
            pod_name = pod["metadata"]["name"]
            pod["metadata"] |= {"namespace": ns, "uid": f"uid-{pod_name}", "resourceVersion": "9"}
            pod["metadata"]["creationTimestamp"] = "2026-12-01T00:00:00Z"
            if pod["metadata"].get("labels", {}).get("sidecar.istio.io/inject") == "true":
                pod["spec"]["initContainers"] = [
                    {"name": "istio-proxy", "image": "istio/proxyv2", "restartPolicy": "Always"}
                ]
            ready = "False" if pod_name in cluster.not_ready else "True"
            pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}]}
            if "dryRun" not in query:
                if (ns, pod_name) in cluster.pods:
                    return self._send(409, status(409, "AlreadyExists", f'pods "{pod_name}" already exists'))
                cluster.pods[(ns, pod_name)] = pod
            return self._send(201, pod)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A CA and, signed by it, a serving certificate for 127.0.0.1 (made by openssl)."""
    require_tool("openssl")
    folder = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    new_key = ("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    openssl(
        *new_key, "-x509", "-days", "2", "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=kubernetes"
    )
    key, csr, cert, ext = (folder / f"apiserver.{e}" for e in ("key", "csr", "crt", "ext"))
    openssl(*new_key, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=kube-apiserver")
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-out", str(cert), "-extfile", str(ext))  # fmt: skip
    return Pki(ca, cert, key)


@pytest.fixture
def serve(pki: Pki) -> Iterator[Any]:
    """Starts stand-in clusters for the test (stopped after it)."""
    started: list[http.server.ThreadingHTTPServer] = []

    def start(cluster: StandInCluster) -> StandInCluster:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(cluster))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.cert, pki.key)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(httpd)
        cluster.url = f"https://127.0.0.1:{httpd.server_address[1]}"
        return cluster

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def real_kubectl_against(cluster: StandInCluster, pki: Pki, folder: Path, replay: str = "") -> str:
    """The kubectl stand-in that hands every call to the real kubectl: admin.conf's ones with the
    stand-in's admin kubeconfig, the rest as the script gives them. An exec's request goes to the
    API server too (authorized there); what it prints is then the recording's (`replay`)."""
    folder.mkdir(parents=True, exist_ok=True)
    admin = folder / "admin.conf"
    ca_data = base64.b64encode(pki.ca.read_bytes()).decode()
    admin.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "admin",
                "clusters": [
                    {
                        "name": "kubernetes",
                        "cluster": {"server": cluster.url, "certificate-authority-data": ca_data},
                    }
                ],
                "contexts": [{"name": "admin", "context": {"cluster": "kubernetes", "user": "admin"}}],
                "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
            }
        )
    )
    real = find_kubectl()
    return (
        f"export KUBECACHEDIR={folder / 'kube-cache'}\n"
        f'if [[ "${{1:-}} ${{2:-}}" == "--kubeconfig {ADMIN_CONF}" ]]; then exec {real} --kubeconfig {admin} "${{@:3}}"; fi\n'
        f'if [[ " $* " != *" exec "* ]]; then exec {real} "$@"; fi\n'
        f'{real} "$@" >/dev/null 2>&1\n' + replay
    )


def facts_with_real_kubectl(cluster: StandInCluster, pki: Pki, folder: Path, args=WITH_TWIN) -> Run:
    replay = fake_kubectl("curl-get-mtls.txt").replace(PROOF_KUBECONFIG_GUARD, "")
    kubectl = real_kubectl_against(cluster, pki, folder, replay)
    return run_with(folder, "96-mesh-facts.sh", kubectl, args)


TWIN_RULES = proof_rules(TWIN_APPS, "httpbin", OUTSIDE_NAMESPACE)


@pytest.mark.system
def test_the_real_kubectl_does_everything_the_facts_step_does_with_only_the_declared_rules(
    tmp_path, pki, serve
):
    cluster = serve(StandInCluster(TWIN_RULES))
    run = facts_with_real_kubectl(cluster, pki, tmp_path)
    assert run.returncode == 0, run.stderr
    assert cluster.denied() == []
    proof = cluster.of("proof")
    assert proof, "the proof's token was never used"
    # admin.conf's token minted the proof's (for the run, then for the cleanup), and did nothing else.
    mint = Request(
        "create", "", "serviceaccounts/token", PROOF_SERVICE_ACCOUNT_NAMESPACE, PROOF_SERVICE_ACCOUNT
    )
    assert cluster.of("admin") == [mint, mint]
    assert cluster.token_seconds == [(2 + 2) * 5 + 600, 2 * 5 + 600]
    assert not [s for s in cluster.seen if s.identity == "anonymous"]
    # What the real kubectl asked is what the fast tests' model says it asks.
    modelled = set(run.requests())
    assert set(proof) <= modelled, set(proof) - modelled
    # Its pods are gone; the app's are there.
    assert sorted(cluster.pods) == [
        ("httpbin", "httpbin-6b8f7c9d4-x2x7k"),
        ("httpbin-runc", "httpbin-runc-5d9c8b7f6-q9w8e"),
    ]
    facts = json.loads(run.stdout)
    assert [n["metadata"]["name"] for n in facts["nodes"]["items"]] == CP3
    assert facts["hardening"]["plaintext"]["sidecar"] is False
    for secret in cluster.tokens:
        assert secret not in run.stdout + run.stderr + run.jq_calls
        assert all(secret not in " ".join(c["argv"]) for c in run.calls)


@pytest.mark.system
def test_the_real_kubectl_describes_a_client_that_is_not_ready_and_the_cleanup_still_deletes_it(
    tmp_path, pki, serve
):
    cluster = serve(StandInCluster(TWIN_RULES, not_ready={"plaintext-client"}))
    run = facts_with_real_kubectl(
        cluster, pki, tmp_path, tuple((k, "1" if k == "timeout-seconds" else v) for k, v in WITH_TWIN)
    )
    assert run.returncode == 1
    assert "ERROR: the plaintext client pod (default/plaintext-client) is not Ready: " in run.stderr
    assert "Events:" in run.stderr and "forbidden" not in run.stderr, run.stderr
    assert cluster.denied() == []
    assert Request("list", "", "events", "default", None) in cluster.of("proof")
    assert sorted(cluster.pods) == [
        ("httpbin", "httpbin-6b8f7c9d4-x2x7k"),
        ("httpbin-runc", "httpbin-runc-5d9c8b7f6-q9w8e"),
    ]


@pytest.mark.system
def test_a_rule_taken_away_is_refused_by_the_stand_in_and_fails_the_step(tmp_path, pki, serve):
    """The planted bug: no ClusterRole rule, so `kubectl get nodes` is refused."""
    cluster = serve(StandInCluster(ProofRules(TWIN_RULES.namespaced, [])))
    run = facts_with_real_kubectl(cluster, pki, tmp_path)
    assert run.returncode != 0
    assert cluster.denied() == ["proof: list core/nodes (cluster)"]
    assert f'nodes is forbidden: User "{PROOF_USER}" cannot list resource "nodes"' in run.stderr
    # The pods are deleted all the same.
    assert ("default", "plaintext-client") not in cluster.pods and (
        "httpbin",
        "mesh-client",
    ) not in cluster.pods


@pytest.mark.system
def test_the_real_kubectl_lists_the_control_plane_nodes_as_the_proof(tmp_path, pki, serve):
    cluster = serve(StandInCluster(TWIN_RULES))
    kubectl = real_kubectl_against(cluster, pki, tmp_path)
    run = run_with(tmp_path, "94-ha-facts.sh", kubectl, ha_args(), **NO_ETCD)
    assert run.returncode == 0, run.stderr
    assert cluster.denied() == []
    assert cluster.of("proof") == [Request("list", "", "nodes", "", None)]
    assert len(cluster.of("admin")) == 1
    assert [n["name"] for n in json.loads(run.stdout)["nodes"]["items"]] == CP3
