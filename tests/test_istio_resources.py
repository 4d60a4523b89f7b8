"""Every Istio custom resource the program declares, on every stack, against the CRDs that Istio's
base chart installs (shared/charts/base-1.30.3.tgz, base/files/crd-all.gen.yaml): the served
version's OpenAPI schema, strictly, and its CEL rules (see crd_schema.py for what is modelled).

Expected messages and values below are copied from the CRD text or from jsonschema's wording,
never from the program's constants."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import crd_schema
import jsonschema
import pytest
from crd_schema import ERROR, PASSED, TRANSITION, UNEVALUATED, VIOLATED, CrdLookupError, CrdVersion
from harness import (
    PROJECT,
    STACKS,
    ProgramRun,
    as_manifest,
    cached_run,
    require_charts,
    run_program,
    stack_config,
)

GATEWAY_ON = {f"{PROJECT}:ingressGateway": True}
DECLARED_VERSIONS = {
    ("security.istio.io/v1", "PeerAuthentication"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
    ("networking.istio.io/v1", "Gateway"),
    ("networking.istio.io/v1", "VirtualService"),
}
DECLARED_KINDS = {kind for _, kind in DECLARED_VERSIONS}
# Kubernetes' URL library (k8s.io/apiserver/pkg/cel/library/urls.go): not in the CEL runtime.
KUBERNETES_URL_FUNCTIONS = {"isURL", "url", "getScheme"}


@functools.cache
def crds() -> list[dict[str, Any]]:
    return crd_schema.read_crds(require_charts())


def crd_for(obj: dict[str, Any]) -> CrdVersion:
    return crd_schema.find_version(crds(), obj["apiVersion"], obj["kind"])


@functools.cache
def gateway_run(stack: str) -> ProgramRun:
    return run_program(stack, False, overrides=GATEWAY_ON)


def runs(stack: str) -> dict[str, ProgramRun]:
    """The stack as configured and, unless its file already turns it on, with the ingress gateway."""
    found = {"as configured": cached_run(stack)}
    if stack_config(stack)[f"{PROJECT}:ingressGateway"] != "true":
        found["with ingressGateway"] = gateway_run(stack)
    return found


def is_istio(type_: str) -> bool:
    """`kubernetes:<group>/<version>:<Kind>` with an Istio API group."""
    return type_.startswith("kubernetes:") and type_.split(":")[1].split("/")[0].endswith(".istio.io")


def istio_objects(stack: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(run, resource name, the object as sent) for every Istio custom resource of the stack's runs."""
    found = []
    for label, program in runs(stack).items():
        for r in program.registrations:
            if r.custom and is_istio(r.type):
                obj = as_manifest(r.inputs)
                assert r.type == f"kubernetes:{obj['apiVersion']}:{obj['kind']}", r.type
                found.append((label, r.name, obj))
    return found


def declared(kind: str) -> dict[str, Any]:
    """A fresh copy of the dev stack's object of this kind in the app's namespace, httpbin (the
    gateway's from the gateway run)."""
    found = [o for _, _, o in istio_objects("dev") if o["kind"] == kind]
    return copy.deepcopy(next(o for o in found if o["metadata"]["namespace"] == "httpbin"))


def test_the_mesh_wide_and_the_app_policies_are_the_ones_checked():
    names = {
        (o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for _, _, o in istio_objects("dev")
    }
    assert {
        ("PeerAuthentication", "istio-system", "default"),
        ("PeerAuthentication", "httpbin", "default"),
        ("AuthorizationPolicy", "httpbin", "httpbin-mesh-callers"),
        ("AuthorizationPolicy", "httpbin-runc", "httpbin-runc-mesh-callers"),
    } <= names
    assert declared("AuthorizationPolicy")["metadata"]["name"] == "httpbin-mesh-callers"


@pytest.mark.parametrize("stack", STACKS)
def test_every_istio_resource_passes_the_schema_of_its_served_crd_version(stack):
    objects = istio_objects(stack)
    assert {o["kind"] for _, _, o in objects} == DECLARED_KINDS
    failures = []
    for label, name, obj in objects:
        crd = crd_for(obj)
        assert crd.api_version == obj["apiVersion"]
        failures += [f"{label}: {name}: {crd_schema.describe(e)}" for e in crd_schema.schema_errors(crd, obj)]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("stack", STACKS)
def test_every_cel_rule_on_the_istio_resources_holds_and_was_evaluated(stack):
    outcomes: dict[str, list[str]] = {}
    evaluated = set()
    for label, name, obj in istio_objects(stack):
        for result in crd_schema.rule_results(crd_for(obj), obj):
            outcomes.setdefault(result.outcome, []).append(f"{label}: {name}: {result}")
            if result.outcome == PASSED:
                evaluated.add((obj["kind"], result.value_path, result.rule.message))
    assert not outcomes.get(VIOLATED) and not outcomes.get(ERROR), "\n".join(
        outcomes.get(VIOLATED, []) + outcomes.get(ERROR, [])
    )
    # Honest coverage: no rule on a value our resources set went unevaluated (nor is a transition
    # rule, which would not apply on create), and the one on PeerAuthentication's spec ran.
    assert not outcomes.get(UNEVALUATED) and not outcomes.get(TRANSITION), "\n".join(
        outcomes.get(UNEVALUATED, []) + outcomes.get(TRANSITION, [])
    )
    assert ("PeerAuthentication", "spec", "portLevelMtls requires selector") in evaluated
    assert ("AuthorizationPolicy", "spec", "only one of targetRefs or selector can be set") in evaluated
    assert (
        "AuthorizationPolicy",
        "spec.rules[0].from[0].source",
        "Cannot set serviceAccounts with namespaces or principals",
    ) in evaluated
    assert (
        "AuthorizationPolicy",
        "spec.selector.matchLabels[app]",
        "wildcard not allowed in label value match",
    ) in evaluated


def test_every_cel_rule_of_the_crd_versions_we_declare_is_one_the_runtime_evaluates():
    versions = {(o["apiVersion"], o["kind"]) for stack in STACKS for _, _, o in istio_objects(stack)}
    assert versions == DECLARED_VERSIONS
    rules = [
        (kind, rule)
        for api_version, kind in versions
        for rule in crd_schema.rules_in(crd_schema.find_version(crds(), api_version, kind).openapi)
    ]
    assert {kind for kind, _ in rules} == DECLARED_KINDS
    not_evaluable = [
        f"{kind} {rule.schema_path}: {rule.rule}"
        for kind, rule in rules
        if crd_schema.analyse(rule.rule).missing or crd_schema.analyse(rule.rule).transition
    ]
    assert not not_evaluable, "\n".join(not_evaluable)


def test_the_chart_rules_the_runtime_cannot_evaluate_are_kubernetes_url_checks_on_kinds_we_do_not_use():
    missing: dict[str, set[str]] = {}
    for crd in crds():
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            for rule in crd_schema.rules_in(version["schema"]["openAPIV3Schema"]):
                analysis = crd_schema.analyse(rule.rule)
                assert not analysis.transition, rule
                if analysis.missing:
                    missing.setdefault(kind, set()).update(analysis.missing)
    assert set().union(*missing.values()) <= KUBERNETES_URL_FUNCTIONS
    assert not set(missing) & DECLARED_KINDS


def test_every_function_the_checker_lets_a_rule_call_passes_its_probe():
    assert crd_schema.supported_functions() == set(crd_schema.FUNCTION_PROBES)
    assert not crd_schema.probe("duration('1ms') > duration('1s')")
    assert crd_schema.analyse('isURL(self) && url(self).getScheme() == "https"').missing == (
        "getScheme",
        "isURL",
        "url",
    )
    assert crd_schema.analyse("self.x == oldSelf.x").transition


def test_every_crd_version_in_the_chart_converts_with_nothing_left_unmodelled():
    """A keyword, format or list type the converter does not model would raise: none is skipped."""
    converted = {}
    for crd in crds():
        spec = crd["spec"]
        for version in spec["versions"]:
            api_version = f"{spec['group']}/{version['name']}"
            found = crd_schema.find_version(crds(), api_version, spec["names"]["kind"])
            converted[api_version, found.kind] = crd_schema.object_schema(found)
            crd_schema.rules_in(found.openapi)
    # The metaschema check is slow: only for the versions the program declares.
    for api_version, kind in DECLARED_VERSIONS:
        jsonschema.Draft202012Validator.check_schema(converted[api_version, kind])


def test_the_crd_is_chosen_by_group_kind_and_served_version():
    assert crd_schema.find_version(crds(), "security.istio.io/v1", "PeerAuthentication").namespaced
    assert (
        crd_schema.find_version(crds(), "security.istio.io/v1beta1", "PeerAuthentication").version
        == "v1beta1"
    )
    with pytest.raises(
        CrdLookupError, match=r"no CRD for kind PeerAuthentication in group 'networking\.istio\.io'"
    ):
        crd_schema.find_version(crds(), "networking.istio.io/v1", "PeerAuthentication")
    with pytest.raises(CrdLookupError, match=r"Gateway\.networking\.istio\.io has no version 'v2'"):
        crd_schema.find_version(crds(), "networking.istio.io/v2", "Gateway")
    unserved = copy.deepcopy(crds())
    for crd in unserved:
        if crd["spec"]["names"]["kind"] == "VirtualService":
            for version in crd["spec"]["versions"]:
                version["served"] = version["name"] != "v1"
    with pytest.raises(
        CrdLookupError, match=r"VirtualService\.networking\.istio\.io version v1 is not served"
    ):
        crd_schema.find_version(unserved, "networking.istio.io/v1", "VirtualService")


def set_path(obj: Any, path: str, value: Any) -> None:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    for part in parents:
        obj = obj[part]
    obj[last] = value


def drop(obj: Any, path: str) -> None:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    for part in parents:
        obj = obj[part]
    del obj[last]


# (kind, change, the one place jsonschema reports it, how its message starts); the allowed
# values, bounds and field names are the CRD's (metadata's: ObjectMeta and apimachinery's).
SCHEMA_MUTATIONS: list[tuple[str, Callable[[dict], None], str, str]] = [
    (
        "PeerAuthentication",
        lambda o: set_path(o, "spec.mtls.mod", "STRICT"),
        "spec.mtls",
        "Additional properties are not allowed ('mod' was unexpected)",
    ),
    (
        "PeerAuthentication",
        lambda o: set_path(o, "spec.mtls.mode", "STRIKT"),
        "spec.mtls.mode",
        "'STRIKT' is not one of ['UNSET', 'DISABLE', 'PERMISSIVE', 'STRICT']",
    ),
    (
        "PeerAuthentication",
        lambda o: set_path(o, "spec.selector", {"matchLabels": {"app": "h" * 64}}),
        "spec.selector.matchLabels.app",
        f"'{'h' * 64}' is too long",
    ),
    (
        "Gateway",
        lambda o: set_path(o, "spec.servers.0.port.number", "eighty"),
        "spec.servers.0.port.number",
        "'eighty' is not of type 'integer'",
    ),
    (
        "Gateway",
        lambda o: set_path(o, "spec.servers.0.port.number", 4294967296),
        "spec.servers.0.port.number",
        "4294967296 is greater than the maximum of 4294967295",
    ),
    (
        "Gateway",
        lambda o: set_path(o, "spec.servers.0.port.number", -1),
        "spec.servers.0.port.number",
        "-1 is less than the minimum of 0",
    ),
    (
        "Gateway",
        lambda o: drop(o, "spec.servers.0.hosts"),
        "spec.servers.0",
        "'hosts' is a required property",
    ),
    (
        "Gateway",
        lambda o: set_path(o, "spec.selector.istio", 1),
        "spec.selector.istio",
        "1 is not of type 'string'",
    ),
    (
        "Gateway",
        lambda o: set_path(o, "spec.servers.0.tls", {"credentialNames": ["a", "b", "c"]}),
        "spec.servers.0.tls.credentialNames",
        "['a', 'b', 'c'] is too long",
    ),
    (
        "VirtualService",
        lambda o: set_path(o, "spec.http.0.route.0.weight", 2**31),
        "spec.http.0.route.0.weight",
        "2147483648 is not a 'int32'",
    ),
    (
        "VirtualService",
        lambda o: set_path(o, "spec.http.0.match", [{"uri": {"exact": "/get", "prefix": "/"}}]),
        "spec.http.0.match.0.uri",
        "{'exact': '/get', 'prefix': '/'} is valid under each of",
    ),
    (
        "VirtualService",
        lambda o: set_path(o, "spec.http.0.route.0.destination.subset", None),
        "spec.http.0.route.0.destination.subset",
        "None is not of type 'string'",
    ),
    (
        "VirtualService",
        lambda o: set_path(o, "metadata.name", "HTTPBin"),
        "metadata.name",
        "'HTTPBin' is not a 'k8s-dns-subdomain'",
    ),
    (
        "VirtualService",
        lambda o: set_path(o, "metadata.labels", {"app": "httpbin", "version": 1}),
        "metadata.labels.version",
        "1 is not of type 'string'",
    ),
    (
        "VirtualService",
        lambda o: set_path(o, "metadata.uid", "0b9c"),
        "metadata",
        "'uid' is not one of ['name', 'generateName', 'namespace', 'labels', 'annotations', 'finalizers', 'ownerReferences']",
    ),
    (
        "VirtualService",
        lambda o: drop(o, "metadata.namespace"),
        "metadata",
        "'namespace' is a required property",
    ),
    (
        "PeerAuthentication",
        lambda o: set_path(o, "apiVersion", "security.istio.io/v1beta1"),
        "apiVersion",
        "'security.istio.io/v1' was expected",
    ),
    (
        "AuthorizationPolicy",
        lambda o: set_path(o, "spec.action", "ALLOWED"),
        "spec.action",
        "'ALLOWED' is not one of ['ALLOW', 'DENY', 'AUDIT', 'CUSTOM']",
    ),
    (
        "AuthorizationPolicy",
        lambda o: set_path(o, "spec.rules.0.from.0.source.principal", ["cluster.local/ns/*"]),
        "spec.rules.0.from.0.source",
        "Additional properties are not allowed ('principal' was unexpected)",
    ),
    (
        "AuthorizationPolicy",
        lambda o: set_path(o, "spec.rules.0.from.0.source.principals", "cluster.local/ns/*"),
        "spec.rules.0.from.0.source.principals",
        "'cluster.local/ns/*' is not of type 'array'",
    ),
]


@pytest.mark.parametrize(
    ("kind", "mutate", "path", "message"),
    SCHEMA_MUTATIONS,
    ids=[f"{kind}-{path}-{i}" for i, (kind, _, path, _) in enumerate(SCHEMA_MUTATIONS)],
)
def test_the_schema_check_rejects_a_broken_resource(kind, mutate, path, message):
    obj = declared(kind)
    crd = crd_for(obj)
    assert crd_schema.schema_errors(crd, obj) == []
    mutate(obj)
    errors = crd_schema.schema_errors(crd, obj)
    assert {".".join(map(str, e.absolute_path)) for e in errors} == {path}, errors
    assert any(e.message.startswith(message) for e in errors), [e.message for e in errors]


def test_the_schema_check_takes_an_int_or_string_as_either_and_nothing_else():
    schema = crd_schema.to_json_schema(
        {
            "type": "object",
            "properties": {
                "port": {
                    "anyOf": [{"type": "integer"}, {"type": "string"}],
                    "x-kubernetes-int-or-string": True,
                }
            },
        }
    )
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"port": 80})
    assert validator.is_valid({"port": "http"})
    assert not validator.is_valid({"port": 80.5})
    assert not validator.is_valid({"port": True})
    assert not validator.is_valid({"port": 80, "other": 1})


# (kind, change, where the rule sits on the object, the rule's message in the CRD). Each change
# passes the schema: only the CEL rule catches it.
CEL_MUTATIONS: list[tuple[str, Callable[[dict], None], str, str]] = [
    (
        "PeerAuthentication",
        lambda o: set_path(o, "spec.portLevelMtls", {"8080": {"mode": "PERMISSIVE"}}),
        "spec",
        "portLevelMtls requires selector",
    ),
    (
        "PeerAuthentication",
        lambda o: o["spec"].update(
            selector={"matchLabels": {"app": "httpbin"}}, portLevelMtls={"0": {"mode": "PERMISSIVE"}}
        ),
        "spec.portLevelMtls",
        "port must be between 1-65535",
    ),
    (
        "PeerAuthentication",
        lambda o: set_path(o, "spec.selector", {"matchLabels": {"app": "httpbin-*"}}),
        "spec.selector.matchLabels[app]",
        "wildcard not allowed in label value match",
    ),
    (
        "VirtualService",
        lambda o: set_path(o, "spec.http.0.timeout", "0s"),
        "spec.http[0].timeout",
        "must be a valid duration greater than 1ms",
    ),
    (
        "Gateway",
        lambda o: set_path(
            o, "spec.servers.0.tls", {"mode": "SIMPLE", "credentialName": "a", "credentialNames": ["b"]}
        ),
        "spec.servers[0].tls",
        "only one of credentialName or credentialNames can be set",
    ),
    (
        "AuthorizationPolicy",
        lambda o: set_path(o, "spec.rules.0.from.0.source.serviceAccounts", ["httpbin/httpbin"]),
        "spec.rules[0].from[0].source",
        "Cannot set serviceAccounts with namespaces or principals",
    ),
    (
        "AuthorizationPolicy",
        lambda o: set_path(o, "spec.targetRefs", [{"group": "", "kind": "Service", "name": "httpbin"}]),
        "spec",
        "only one of targetRefs or selector can be set",
    ),
]


@pytest.mark.parametrize(
    ("kind", "mutate", "path", "message"),
    CEL_MUTATIONS,
    ids=[f"{kind}-{path}" for kind, _, path, _ in CEL_MUTATIONS],
)
def test_the_cel_check_rejects_a_resource_that_breaks_a_crd_rule(kind, mutate, path, message):
    obj = declared(kind)
    crd = crd_for(obj)
    mutate(obj)
    assert crd_schema.schema_errors(crd, obj) == []
    failed = [
        (r.value_path, r.outcome, r.rule.message)
        for r in crd_schema.rule_results(crd, obj)
        if r.outcome != PASSED
    ]
    assert failed == [(path, VIOLATED, message)]


def test_a_rule_that_cannot_be_evaluated_on_a_value_fails_the_check():
    """The API server rejects an object on which a rule errors; so does the check."""
    obj = declared("VirtualService")
    set_path(obj, "spec.http.0.timeout", "soon")
    [result] = crd_schema.rule_results(crd_for(obj), obj)
    assert (result.value_path, result.outcome) == ("spec.http[0].timeout", ERROR)


def test_port_level_mtls_with_a_selector_passes_every_rule():
    obj = declared("PeerAuthentication")
    obj["spec"].update(
        selector={"matchLabels": {"app": "httpbin"}}, portLevelMtls={"8080": {"mode": "PERMISSIVE"}}
    )
    results = crd_schema.rule_results(crd_for(obj), obj)
    assert crd_schema.schema_errors(crd_for(obj), obj) == []
    assert {r.outcome for r in results} == {PASSED}
    assert len(results) == 5
