"""Kata enforced by admission: the ValidatingAdmissionPolicy and its binding as the program declares
them (read from the mock runs, never rebuilt from the program's constants), their CEL evaluated
for real on pods, the objects' strict schema for Kubernetes 1.36, and Pod Security admission's
labels on every namespace the program makes (with the rendered pods of the namespaces that
enforce `restricted` checked against that level).

The evaluator follows the API server's order for one policy and binding: the policy's
matchConstraints (resource and operation), the binding's namespaceSelector, the matchConditions,
then the variables (each seeing the ones before) and every validation; a validation that is false
denies with its messageExpression's text (its message if that fails), and one that cannot be
evaluated denies too (failurePolicy Fail). The CEL runtime is common-expression-language with the
strings and sets extensions (Kubernetes' CEL has them); every function the policy calls must be one
this runtime implements as CEL defines it (tests/crd_schema.py probes them), so nothing is skipped.

Expected messages below are written out, not imported from components/admission.py."""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cel
import crd_schema
import kubernetes_validate
import pytest
from cel import stdlib as cel_stdlib
from harness import (
    STACKS,
    ProgramRun,
    as_manifest,
    cached_run,
    require_charts,
    require_helm,
)

from offline import charts

POLICY = "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy"
BINDING = "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicyBinding"
NAMESPACE = "kubernetes:core/v1:Namespace"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
RUNTIME_CLASS = "kubernetes:node.k8s.io/v1:RuntimeClass"
KUBERNETES_SCHEMA_VERSION = "1.36.0"
SANDBOX = {"kata-mesh.io/sandbox": "true"}

WHERE = "in namespaces labelled kata-mesh.io/sandbox=true"
RUNTIME = (
    f"pods {WHERE} run in a Kata VM only: set spec.runtimeClassName: kata-runtime (for a Deployment, "
    "Job or other workload, in its pod template), or use a namespace without that label"
)
PRIVILEGED = (
    f"privileged containers are refused {WHERE}: remove securityContext.privileged (or set it to false)"
)
HOST_NAMESPACES = (
    f"pods sharing the node's network, process or IPC namespace are refused {WHERE}: leave out "
    "hostNetwork, hostPID and hostIPC (or set them to false)"
)
HOST_PATH = (
    f"hostPath volumes are refused {WHERE}: use an emptyDir, configMap, secret, projected or "
    "persistentVolumeClaim volume instead"
)
CAPABILITIES = (
    f"{WHERE} only the init container istio-init may add capabilities, and only NET_ADMIN and "
    "NET_RAW: remove the others from securityContext.capabilities.add"
)


# --- The declared objects --------------------------------------------------------------------------


def declared(program: ProgramRun, type_: str) -> dict[str, Any]:
    [registration] = program.of_type(type_)
    return as_manifest(registration.inputs)


def policy_of(stack: str = "dev") -> dict[str, Any]:
    return declared(cached_run(stack), POLICY)


def binding_of(stack: str = "dev") -> dict[str, Any]:
    return declared(cached_run(stack), BINDING)


# --- The evaluator ---------------------------------------------------------------------------------


def _context(variables: dict[str, Any]) -> cel.Context:
    context = cel.Context(variables)
    cel_stdlib.add_stdlib_to_context(context, list(crd_schema.CEL_EXTENSIONS))
    return context


def evaluate(expression: str, activation: dict[str, Any]) -> Any:
    return cel.compile(expression).execute(_context(activation))


@dataclass
class Decision:
    """What the API server does with the request under this policy and binding."""

    matched: bool
    denials: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.denials


@dataclass(frozen=True)
class Request:
    pod: dict[str, Any]
    namespace_labels: dict[str, str]
    operation: str = "CREATE"
    old_pod: dict[str, Any] | None = None
    subresource: str = ""


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    expressions = selector.get("matchExpressions", [])
    assert not expressions, "the evaluator models matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _matches_rules(policy: dict[str, Any], request: Request) -> bool:
    resource = "pods" + (f"/{request.subresource}" if request.subresource else "")
    return any(
        "" in rule["apiGroups"]
        and "v1" in rule["apiVersions"]
        and request.operation in rule["operations"]
        and resource in rule["resources"]
        for rule in policy["spec"]["matchConstraints"]["resourceRules"]
    )


def admit(policy: dict[str, Any], binding: dict[str, Any], request: Request) -> Decision:
    spec = policy["spec"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    selector = binding["spec"].get("matchResources", {}).get("namespaceSelector", {})
    if not (_matches_rules(policy, request) and _selects(selector, request.namespace_labels)):
        return Decision(matched=False)
    namespace = {
        "metadata": {"name": request.pod["metadata"]["namespace"], "labels": request.namespace_labels}
    }
    activation: dict[str, Any] = {
        "object": request.pod,
        "oldObject": request.old_pod,
        "request": {"operation": request.operation, "subResource": request.subresource},
        "namespaceObject": namespace,
    }
    try:
        for condition in spec.get("matchConditions", []):
            if evaluate(condition["expression"], activation) is not True:
                return Decision(matched=False)
        variables: dict[str, Any] = {}
        for variable in spec.get("variables", []):
            variables[variable["name"]] = evaluate(
                variable["expression"], {**activation, "variables": variables}
            )
        activation["variables"] = variables
    except Exception as error:  # failurePolicy Fail: an error refuses the pod
        assert spec["failurePolicy"] == "Fail"
        return Decision(matched=True, denials=[f"error: {error}"])
    decision = Decision(matched=True)
    for validation in spec["validations"]:
        try:
            passed = evaluate(validation["expression"], activation)
        except Exception as error:
            decision.denials.append(f"error: {error}")
            continue
        assert isinstance(passed, bool), validation["expression"]
        if passed:
            continue
        text = validation.get("message", "")
        if "messageExpression" in validation:
            try:
                said = evaluate(validation["messageExpression"], activation)
                if isinstance(said, str) and said and "\n" not in said:
                    text = said
            except Exception:
                pass
        decision.denials.append(text)
    return decision


# --- Pods ------------------------------------------------------------------------------------------

# What Istio 1.30's injector adds with the program's istiod values (CNI off, so istio-init;
# Kubernetes 1.29+, so istio-proxy as a native sidecar), as istiod's files/injection-template.yaml
# renders it with the chart's defaults (global.proxy.privileged false).
ISTIO_INIT = {
    "name": "istio-init",
    "image": "docker.io/istio/proxyv2:1.30.4",
    "args": ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT"],
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        "readOnlyRootFilesystem": False,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "runAsUser": 0,
    },
}
ISTIO_PROXY = {
    "name": "istio-proxy",
    "image": "docker.io/istio/proxyv2:1.30.4",
    "restartPolicy": "Always",
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 1337,
        "runAsGroup": 1337,
    },
}
ISTIO_VOLUMES = [
    {"name": "workload-socket", "emptyDir": {}},
    {"name": "credential-socket", "emptyDir": {}},
    {"name": "workload-certs", "emptyDir": {}},
    {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
    {"name": "istio-data", "emptyDir": {}},
    {
        "name": "istio-podinfo",
        "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
    },
    {
        "name": "istio-token",
        "projected": {"sources": [{"serviceAccountToken": {"path": "istio-token", "audience": "istio-ca"}}]},
    },
    {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
    {"name": "istio-ca-crl", "configMap": {"name": "istio-ca-crl", "optional": True}},
]


def injected(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod after Istio's sidecar injection (the policy sees pods after the mutating webhooks)."""
    pod = copy.deepcopy(pod)
    spec = pod["spec"]
    spec["initContainers"] = [
        copy.deepcopy(ISTIO_INIT),
        copy.deepcopy(ISTIO_PROXY),
        *spec.get("initContainers", []),
    ]
    spec["volumes"] = [*spec.get("volumes", []), *copy.deepcopy(ISTIO_VOLUMES)]
    return pod


def pod_of(deployment: dict[str, Any]) -> dict[str, Any]:
    """The pod a Deployment's ReplicaSet creates, as the injector leaves it."""
    template = copy.deepcopy(deployment["spec"]["template"])
    metadata = {**template.get("metadata", {}), "name": f"{deployment['metadata']['name']}-7d4b9c6f5-abcde"}
    metadata["namespace"] = deployment["metadata"]["namespace"]
    return injected({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})


@functools.cache
def namespace_labels(stack: str) -> dict[str, dict[str, str]]:
    return {
        r.inputs["metadata"]["name"]: dict(r.inputs["metadata"].get("labels", {}))
        for r in cached_run(stack).of_type(NAMESPACE)
    }


def kata_pod() -> dict[str, Any]:
    """httpbin as the dev stack declares it, after injection."""
    return pod_of(as_manifest(cached_run("dev").one(DEPLOYMENT, "httpbin-deployment").inputs))


def app_labels() -> dict[str, str]:
    return namespace_labels("dev")["httpbin"]


def request(pod: dict[str, Any], **kwargs: Any) -> Request:
    return Request(pod, app_labels(), **kwargs)


def decide(req: Request, policy: dict[str, Any] | None = None) -> Decision:
    return admit(policy or policy_of(), binding_of(), req)


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    lists = (spec["containers"], spec.get("initContainers", []), spec.get("ephemeralContainers", []))
    return next(c for containers in lists for c in containers if c["name"] == name)


def with_(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    pod = kata_pod()
    change(pod)
    return pod


def set_capabilities(name: str, add: list[str]) -> Callable[[dict[str, Any]], None]:
    def change(pod: dict[str, Any]) -> None:
        container(pod, name).setdefault("securityContext", {})["capabilities"] = {"add": add}

    return change


def debug_container(security_context: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def change(pod: dict[str, Any]) -> None:
        pod["spec"]["ephemeralContainers"] = [
            {"name": "debugger", "image": "busybox", "securityContext": security_context}
        ]

    return change


# (case, the pod, the messages it is refused with: empty when admitted)
CASES: list[tuple[str, Callable[[], dict[str, Any]], list[str]]] = [
    ("kata-with-istio-init", kata_pod, []),
    (
        "runc-class",
        lambda: with_(lambda p: p["spec"].update(runtimeClassName="runc")),
        [f'spec.runtimeClassName is "runc"; {RUNTIME}'],
    ),
    (
        "no-runtime-class",
        lambda: with_(lambda p: p["spec"].pop("runtimeClassName")),
        [f"spec.runtimeClassName is not set; {RUNTIME}"],
    ),
    (
        "privileged-app",
        lambda: with_(lambda p: container(p, "httpbin").update(securityContext={"privileged": True})),
        [f"privileged: httpbin; {PRIVILEGED}"],
    ),
    (
        "privileged-istio-init",
        lambda: with_(lambda p: container(p, "istio-init")["securityContext"].update(privileged=True)),
        [f"privileged: istio-init; {PRIVILEGED}"],
    ),
    (
        "not-privileged-said-outright",
        lambda: with_(lambda p: container(p, "httpbin").update(securityContext={"privileged": False})),
        [],
    ),
    (
        "host-network",
        lambda: with_(lambda p: p["spec"].update(hostNetwork=True)),
        [f"the pod sets hostNetwork; {HOST_NAMESPACES}"],
    ),
    (
        "host-pid-and-ipc",
        lambda: with_(lambda p: p["spec"].update(hostPID=True, hostIPC=True)),
        [f"the pod sets hostPID, hostIPC; {HOST_NAMESPACES}"],
    ),
    ("host-network-false", lambda: with_(lambda p: p["spec"].update(hostNetwork=False)), []),
    (
        "host-path",
        lambda: with_(
            lambda p: p["spec"]["volumes"].append({"name": "node-root", "hostPath": {"path": "/"}})
        ),
        [f"hostPath volumes: node-root; {HOST_PATH}"],
    ),
    (
        "net-admin-on-the-app",
        lambda: with_(set_capabilities("httpbin", ["NET_ADMIN"])),
        [f"httpbin adds NET_ADMIN; {CAPABILITIES}"],
    ),
    (
        "net-raw-on-istio-proxy",
        lambda: with_(set_capabilities("istio-proxy", ["NET_RAW"])),
        [f"istio-proxy adds NET_RAW; {CAPABILITIES}"],
    ),
    (
        "sys-admin-on-istio-init",
        lambda: with_(set_capabilities("istio-init", ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"])),
        [f"istio-init adds SYS_ADMIN; {CAPABILITIES}"],
    ),
    (
        "istio-init-as-an-app-container",
        lambda: with_(
            lambda p: p["spec"]["containers"].append(
                {
                    "name": "istio-init",
                    "image": "x",
                    "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
                }
            )
        ),
        [f"istio-init adds NET_ADMIN; {CAPABILITIES}"],
    ),
    (
        "net-admin-on-another-init-container",
        lambda: with_(
            lambda p: p["spec"]["initContainers"].append(
                {"name": "setup", "image": "x", "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}
            )
        ),
        [f"setup adds NET_ADMIN; {CAPABILITIES}"],
    ),
    ("empty-capabilities", lambda: with_(set_capabilities("httpbin", [])), []),
    (
        "ephemeral-container-privileged",
        lambda: with_(debug_container({"privileged": True})),
        [f"privileged: debugger; {PRIVILEGED}"],
    ),
    (
        "ephemeral-container-adding-sys-ptrace",
        lambda: with_(debug_container({"capabilities": {"add": ["SYS_PTRACE"]}})),
        [f"debugger adds SYS_PTRACE; {CAPABILITIES}"],
    ),
    (
        "everything-at-once",
        lambda: with_(
            lambda p: (
                p["spec"].update(runtimeClassName="runc", hostNetwork=True),
                container(p, "httpbin").update(
                    securityContext={"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}
                ),
                p["spec"]["volumes"].append({"name": "docker", "hostPath": {"path": "/var/run"}}),
            )
        ),
        [
            f'spec.runtimeClassName is "runc"; {RUNTIME}',
            f"privileged: httpbin; {PRIVILEGED}",
            f"the pod sets hostNetwork; {HOST_NAMESPACES}",
            f"hostPath volumes: docker; {HOST_PATH}",
            f"httpbin adds SYS_ADMIN; {CAPABILITIES}",
        ],
    ),
]


def outcomes(policy: dict[str, Any]) -> dict[str, list[str]]:
    return {name: decide(request(make()), policy).denials for name, make, _ in CASES}


@pytest.mark.parametrize(("name", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_policy_admits_kata_pods_with_istio_init_and_refuses_the_rest_saying_why(name, make, expected):
    decision = decide(request(make()))
    assert decision.matched
    assert decision.denials == expected


def test_a_pod_of_the_kata_app_is_what_the_mock_run_declares_plus_injection():
    pod = kata_pod()
    assert pod["metadata"]["namespace"] == "httpbin"
    assert pod["spec"]["runtimeClassName"] == "kata-runtime"
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["istio-init", "istio-proxy"]


def test_the_injection_the_evaluator_assumes_is_what_istiods_template_renders():
    """istio-init adds exactly NET_ADMIN and NET_RAW when CNI is off and is privileged only if
    global.proxy.privileged is; istio-proxy adds none without TPROXY or capNetBindService."""
    import tarfile

    import yaml

    with tarfile.open(require_charts() / "istiod-1.30.3.tgz") as archive:
        template = archive.extractfile("istiod/files/injection-template.yaml")
        values = archive.extractfile("istiod/values.yaml")
        assert template is not None and values is not None
        text, defaults = template.read().decode(), yaml.safe_load(values.read())
    init = text[text.index("- name: istio-init") : text.index("- name: istio-proxy")]
    assert re.search(r"add:\n\s+- NET_ADMIN\n\s+- NET_RAW\n", init)
    assert "privileged: {{ .Values.global.proxy.privileged }}" in init
    proxy = defaults["_internal_defaults_do_not_set"]["global"]["proxy"]
    assert proxy["privileged"] is False
    assert proxy.get("capNetBindService") in (None, False)
    assert "$capNetBindService := (eq (annotation .ObjectMeta `sidecar.istio.io/capNetBindService`" in text


@pytest.mark.parametrize("stack", STACKS)
def test_every_pod_the_program_runs_in_a_sandbox_namespace_is_admitted(stack):
    """The httpbin app and, where on, every Bookinfo workload: the policy refuses none of them."""
    program = cached_run(stack)
    labels = namespace_labels(stack)
    checked = []
    for registration in program.of_type(DEPLOYMENT):
        deployment = as_manifest(registration.inputs)
        namespace = deployment["metadata"]["namespace"]
        pod = pod_of(deployment)
        decision = admit(policy_of(stack), binding_of(stack), Request(pod, labels[namespace]))
        assert decision.allowed, (registration.name, decision.denials)
        if decision.matched:
            checked.append(registration.name)
    assert "httpbin-deployment" in checked
    assert "httpbin-runc-deployment" not in checked
    if stack == "staging":
        assert len([n for n in checked if n.startswith("bookinfo-")]) == 6


def test_the_runc_twin_would_be_refused_in_the_app_namespace_and_is_admitted_in_its_own():
    twin = pod_of(as_manifest(cached_run("dev").one(DEPLOYMENT, "httpbin-runc-deployment").inputs))
    assert twin["metadata"]["namespace"] == "httpbin-runc"
    assert not decide(Request(twin, namespace_labels("dev")["httpbin-runc"])).matched
    assert decide(Request(twin, app_labels())).denials == [f"spec.runtimeClassName is not set; {RUNTIME}"]


def test_the_proofs_mesh_client_as_the_facts_script_makes_it_is_admitted():
    """`kubectl run mesh-client --overrides '{"spec": {"runtimeClassName": ...}}'`, injected; and
    without the override it would be refused."""
    client = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "mesh-client", "namespace": "httpbin", "labels": {"app": "mesh-client"}},
        "spec": {
            "containers": [{"name": "mesh-client", "image": "docker.io/curlimages/curl:8.11.1"}],
            "restartPolicy": "Never",
        },
    }
    runc = injected(client)
    assert decide(request(runc)).denials == [f"spec.runtimeClassName is not set; {RUNTIME}"]
    client["spec"]["runtimeClassName"] = "kata-runtime"
    assert decide(request(injected(client))).allowed


def test_only_namespaces_labelled_sandbox_are_bound_and_the_label_is_the_switch():
    pod = with_(lambda p: p["spec"].pop("runtimeClassName"))
    for labels in ({}, {"kata-mesh.io/sandbox": "false"}, {"istio-injection": "enabled"}):
        assert not decide(Request(pod, labels)).matched
    assert decide(Request(pod, {"kata-mesh.io/sandbox": "true"})).denials
    assert binding_of()["spec"]["matchResources"] == {"namespaceSelector": {"matchLabels": SANDBOX}}


@pytest.mark.parametrize("stack", STACKS)
def test_the_binding_selects_exactly_the_sandbox_namespaces_the_program_makes(stack):
    selector = binding_of(stack)["spec"]["matchResources"]["namespaceSelector"]
    selected = sorted(name for name, labels in namespace_labels(stack).items() if _selects(selector, labels))
    app = "httpbin"
    assert selected == sorted([app] + (["bookinfo"] if stack == "staging" else []))


def test_adding_a_privileged_ephemeral_container_is_refused_through_its_subresource():
    old = kata_pod()
    new = with_(debug_container({"privileged": True}))
    decision = decide(request(new, operation="UPDATE", old_pod=old, subresource="ephemeralcontainers"))
    assert decision.denials == [f"privileged: debugger; {PRIVILEGED}"]
    harmless = with_(debug_container({}))
    assert decide(
        request(harmless, operation="UPDATE", old_pod=old, subresource="ephemeralcontainers")
    ).allowed


def test_an_update_that_leaves_the_spec_alone_is_not_judged_and_one_that_changes_it_is():
    """A runc pod that was there before its namespace got the label can still be relabelled (Pod
    Security admission does the same); changing its spec is judged on the whole pod."""
    old = with_(lambda p: p["spec"].pop("runtimeClassName"))
    relabelled = copy.deepcopy(old)
    relabelled["metadata"]["labels"]["team"] = "a"
    assert not decide(request(relabelled, operation="UPDATE", old_pod=old)).matched
    changed = copy.deepcopy(old)
    container(changed, "httpbin")["image"] = "docker.io/mccutchen/go-httpbin:v2.15.0"
    assert decide(request(changed, operation="UPDATE", old_pod=old)).denials == [
        f"spec.runtimeClassName is not set; {RUNTIME}"
    ]


def test_deleting_or_reading_pods_and_other_kinds_are_not_matched():
    pod = with_(lambda p: p["spec"].pop("runtimeClassName"))
    assert not decide(request(pod, operation="DELETE")).matched
    assert not decide(request(pod, operation="CONNECT", subresource="exec")).matched
    assert not decide(request(pod, operation="UPDATE", old_pod=kata_pod(), subresource="status")).matched


def test_a_message_expression_that_fails_falls_back_to_the_message():
    policy = policy_of()
    broken = copy.deepcopy(policy)
    broken["spec"]["validations"][0]["messageExpression"] = "object.spec.noSuchField + 'x'"
    pod = with_(lambda p: p["spec"].update(runtimeClassName="runc"))
    assert decide(request(pod), broken).denials == [RUNTIME]


def test_an_expression_that_cannot_be_evaluated_refuses_the_pod():
    broken = copy.deepcopy(policy_of())
    broken["spec"]["variables"][0]["expression"] = "object.spec.containers.noSuchField"
    decision = decide(request(kata_pod()), broken)
    assert decision.denials and decision.denials[0].startswith("error: ")


def test_every_expression_of_the_policy_compiles_and_calls_only_functions_the_runtime_has():
    spec = policy_of()["spec"]
    expressions = [
        *(c["expression"] for c in spec["matchConditions"]),
        *(v["expression"] for v in spec["variables"]),
        *(v["expression"] for v in spec["validations"]),
        *(v["messageExpression"] for v in spec["validations"]),
    ]
    for expression in expressions:
        analysis = crd_schema.analyse(expression)
        assert analysis.missing == (), (expression, analysis.missing)
    # Every validation has a message that says what to do, and a reason.
    for validation in spec["validations"]:
        assert ": " in validation["message"] and "\n" not in validation["message"]
        assert validation["reason"] == "Forbidden"


# --- A bug in an expression is caught ---------------------------------------------------------------


def _replace_in_variable(name: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(policy: dict[str, Any]) -> None:
        variable = next(v for v in policy["spec"]["variables"] if v["name"] == name)
        assert old in variable["expression"], (name, old)
        variable["expression"] = variable["expression"].replace(old, new)

    return mutate


def _replace_in_validation(index: int, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(policy: dict[str, Any]) -> None:
        validation = policy["spec"]["validations"][index]
        assert old in validation["expression"]
        validation["expression"] = validation["expression"].replace(old, new)

    return mutate


# Plausible slips, each of which some case above must notice.
MUTANTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "any runtime class": _replace_in_validation(0, "== ", "!= "),
    "no check of init containers' privilege": _replace_in_variable(
        "privileged", "variables.initContainers.filter", "[].filter"
    ),
    "no check of ephemeral containers' privilege": _replace_in_variable(
        "privileged", "variables.ephemeralContainers.filter", "[].filter"
    ),
    "istio-init may add anything": _replace_in_variable(
        "refusedCapabilities", 'c.name == "istio-init" && cap in', 'c.name == "istio-init" || cap in'
    ),
    "any init container may add NET_ADMIN": _replace_in_variable(
        "refusedCapabilities", 'c.name == "istio-init" && ', ""
    ),
    "hostPID forgotten": _replace_in_variable(
        "hostNamespaces", 'object.spec.hostPID ? ["hostPID"]', 'false ? ["hostPID"]'
    ),
    "hostPath not looked for": _replace_in_variable("hostPathVolumes", "has(v.hostPath)", "has(v.hostpath)"),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_a_bug_planted_in_an_expression_makes_a_case_fail(mutant):
    policy = copy.deepcopy(policy_of())
    MUTANTS[mutant](policy)
    expected = {name: messages for name, _, messages in CASES}
    assert outcomes(policy) != expected


# --- The objects as declared ------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_declares_the_policy_and_its_binding_and_they_pass_the_strict_schema(stack):
    policy, binding = policy_of(stack), binding_of(stack)
    assert policy["metadata"] == {"name": "kata-mesh-sandbox"}
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert policy["spec"]["matchConstraints"]["resourceRules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["pods", "pods/ephemeralcontainers"],
            "scope": "Namespaced",
        }
    ]
    assert binding["spec"]["policyName"] == "kata-mesh-sandbox"
    assert binding["spec"]["validationActions"] == ["Deny"]
    for manifest in (policy, binding):
        kubernetes_validate.validate(manifest, KUBERNETES_SCHEMA_VERSION, strict=True)
    # The same documents pass policy_of's order of operations for every stack's pods.
    assert policy == policy_of("dev") and binding == binding_of("dev")


def test_the_strict_schema_check_catches_a_wrong_field_in_the_policy():
    policy = policy_of()
    policy["spec"]["validations"][0]["messageExpresion"] = "'x'"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, KUBERNETES_SCHEMA_VERSION, strict=True)
    binding = binding_of()
    binding["spec"]["validationActions"] = "Deny"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(binding, KUBERNETES_SCHEMA_VERSION, strict=True)


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
@pytest.mark.parametrize("stack", STACKS)
def test_the_binding_follows_its_policy_and_kata_workloads_follow_the_binding(stack, preview):
    """A binding whose policy is missing refuses every sandbox pod (failurePolicy Fail); and the
    app's pods are first admitted under the policy: the RuntimeClass they wait for comes after it."""
    program = cached_run(stack, preview)
    policy = program.one(POLICY, "kata-runtime-admission-policy")
    binding = program.one(BINDING, "kata-runtime-admission-binding")
    runtime_class = program.one(RUNTIME_CLASS, "kata-runtime")
    assert policy.urn in binding.dependencies
    assert binding.urn in runtime_class.dependencies
    # API objects: made once the API answers and the pod network is there, before every node is Ready.
    assert program.one("kubernetes:helm.sh/v3:Release", "cluster-flannel").urn in policy.dependencies
    assert runtime_class.urn in program.one(DEPLOYMENT, "httpbin-deployment").dependencies
    assert policy.provider == binding.provider == runtime_class.provider


# --- Pod Security admission ------------------------------------------------------------------------

PSA = "pod-security.kubernetes.io"


def psa_levels(labels: dict[str, str]) -> dict[str, str]:
    return {mode: labels.get(f"{PSA}/{mode}", "") for mode in ("enforce", "warn", "audit")}


MESHED = {"enforce": "privileged", "warn": "baseline", "audit": "restricted"}
RESTRICTED = {"enforce": "restricted", "warn": "restricted", "audit": "restricted"}


@pytest.mark.parametrize("stack", STACKS)
def test_every_namespace_the_program_makes_carries_pod_security_labels(stack):
    """Flannel's namespace (components/cluster.py) is checked as it is; the others at the levels
    the mesh allows: istio-init needs NET_ADMIN and NET_RAW, which baseline forbids."""
    labels = namespace_labels(stack)
    expected = {
        "istio-system": RESTRICTED,
        "httpbin": MESHED,
        **({"httpbin-runc": MESHED} if stack == "dev" else {}),
        **({"bookinfo": MESHED} if stack == "staging" else {}),
        **({"istio-ingress": RESTRICTED} if stack == "prod" else {}),
    }
    for name, levels in expected.items():
        assert psa_levels(labels[name]) == levels, name
    assert labels["kube-flannel"][f"{PSA}/enforce"] == "privileged"
    assert set(labels) == {*expected, "kube-flannel"}
    for name, namespace in labels.items():
        assert f"{PSA}/enforce" in namespace, name
        sandbox = namespace.get("kata-mesh.io/sandbox") == "true"
        assert sandbox == (name in ("httpbin", "bookinfo")), name
        meshed = namespace.get("istio-injection") == "enabled"
        assert meshed == (name not in ("istio-system", "kube-flannel")), name


# Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards), the checks
# the pods here can meet: baseline's, then restricted's.
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def pod_security_violations(spec: dict[str, Any], level: str) -> list[str]:
    containers = [*spec.get("initContainers", []), *spec["containers"], *spec.get("ephemeralContainers", [])]
    pod_context = spec.get("securityContext", {})
    found = [f"{key} is true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    found += [f"hostPath volume {v['name']}" for v in spec.get("volumes", []) if "hostPath" in v]
    found += [
        f"unsafe sysctl {s['name']}" for s in pod_context.get("sysctls", []) if s["name"] not in SAFE_SYSCTLS
    ]
    if pod_context.get("seccompProfile", {}).get("type") == "Unconfined":
        found.append("pod seccompProfile Unconfined")
    for c in containers:
        context = c.get("securityContext", {})
        name = c["name"]
        if context.get("privileged"):
            found.append(f"{name} is privileged")
        added = set(context.get("capabilities", {}).get("add", []))
        if added - BASELINE_CAPABILITIES:
            found.append(f"{name} adds {sorted(added - BASELINE_CAPABILITIES)}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{name} uses a hostPort")
        if context.get("seccompProfile", {}).get("type") == "Unconfined":
            found.append(f"{name} seccompProfile Unconfined")
        if level != "restricted":
            continue
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name} allowPrivilegeEscalation is not false")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            found.append(f"{name} runAsNonRoot is not true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"{name} runs as user 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name} has no seccompProfile RuntimeDefault or Localhost")
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            found.append(f"{name} does not drop ALL capabilities")
        if added - {"NET_BIND_SERVICE"}:
            found.append(f"{name} adds more than NET_BIND_SERVICE")
    if level == "restricted":
        found += [
            f"volume {v['name']} of a type restricted forbids"
            for v in spec.get("volumes", [])
            if not set(v) - {"name"} <= RESTRICTED_VOLUMES
        ]
    return found


# What the gateway template (istiod's files/gateway-injection-template.yaml) adds to the
# gateway's pod: its proxy's user, and volumes of these kinds.
GATEWAY_INJECTION_VOLUMES = [v for v in ISTIO_VOLUMES if v["name"] != "istio-ca-crl"]


def rendered_pods(
    stack: str, release_name: str, values: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    release = next(r for r in charts.releases(cached_run(stack)) if r.release_name == release_name)
    if values is not None:
        release = charts.HelmRelease(**{**release.__dict__, "values": values})
    source = charts.locate_chart(release, require_charts(), offline=True, helm=None)
    assert source.archive is not None, source.note
    objects = charts.render(release, source.archive, "1.36.4", require_helm())
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "DaemonSet", "Job")]


@functools.cache
def release_values(stack: str, release_name: str) -> str:
    release = next(r for r in charts.releases(cached_run(stack)) if r.release_name == release_name)
    return json.dumps(release.values)


def test_istiod_meets_restricted_so_istio_system_can_enforce_it():
    [istiod] = rendered_pods("dev", "istiod")
    assert pod_security_violations(istiod, "restricted") == []
    # The seccomp value is what makes it pass.
    values = json.loads(release_values("dev", "istiod"))
    values.pop("seccompProfile")
    [bare] = rendered_pods("dev", "istiod", values)
    assert pod_security_violations(bare, "restricted") == [
        "discovery has no seccompProfile RuntimeDefault or Localhost"
    ]


def test_the_ingress_gateway_meets_restricted_so_istio_ingress_can_enforce_it():
    [gateway] = rendered_pods("prod", "istio-ingressgateway")
    assert gateway["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}
    ]
    injected_gateway = copy.deepcopy(gateway)
    proxy = container({"spec": injected_gateway}, "istio-proxy")
    proxy["securityContext"].update(runAsUser=1337, runAsGroup=1337)
    injected_gateway["volumes"] = [*injected_gateway.get("volumes", []), *GATEWAY_INJECTION_VOLUMES]
    assert pod_security_violations(injected_gateway, "restricted") == []
    values = json.loads(release_values("prod", "istio-ingressgateway"))
    values.pop("securityContext")
    [bare] = rendered_pods("prod", "istio-ingressgateway", values)
    assert pod_security_violations(bare, "restricted") == [
        "istio-proxy has no seccompProfile RuntimeDefault or Localhost"
    ]


def test_sandbox_pods_break_baseline_only_by_istio_inits_capabilities():
    """Why sandbox namespaces cannot enforce baseline, and what the admission policy allows
    instead: with istio-init's two capabilities set aside, the Kata app's pod meets baseline."""
    pod = kata_pod()
    assert pod_security_violations(pod["spec"], "baseline") == ["istio-init adds ['NET_ADMIN', 'NET_RAW']"]
    container(pod, "istio-init")["securityContext"]["capabilities"].pop("add")
    assert pod_security_violations(pod["spec"], "baseline") == []
    template = as_manifest(cached_run("dev").one(DEPLOYMENT, "httpbin-deployment").inputs)["spec"]["template"]
    # warn=baseline looks at the pod template the program applies: nothing to warn about.
    assert pod_security_violations(template["spec"], "baseline") == []
