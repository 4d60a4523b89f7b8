"""Istio's CustomResourceDefinitions, from its base chart, as checks on the objects the program declares.

On create, the API server checks a custom resource in two layers, and so does this module:

1. the served version's `openAPIV3Schema`, here converted to JSON Schema (draft 2020-12) and checked
   with `jsonschema`. Unknown fields are errors (the API server would prune them silently, which is
   worse: the setting would be lost); `apiVersion`, `kind` and `metadata` are checked as Kubernetes
   does for every object, `metadata` against ObjectMeta from the Kubernetes OpenAPI that
   kubernetes-validate ships, plus the name and label syntax apimachinery enforces.
2. its CEL rules (`x-kubernetes-validations`), evaluated with the `common-expression-language`
   runtime wherever the value they sit on is present, `self` being that value. A rule that reads
   `oldSelf` applies to updates only and is reported as such; a rule that calls a function this
   runtime lacks (Kubernetes' own CEL libraries: `isURL`, `url`, ...) is reported as unevaluated,
   never as passed.

Not modelled: defaulting (Istio's CRDs declare no defaults), CEL cost limits, `messageExpression`
(Istio's rules have none), and Kubernetes' mapping of `format: byte`/`date-time` strings to CEL
bytes/timestamps (no Istio rule reads such a field: values reach CEL as their JSON types).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import importlib.resources
import json
import re
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cel
import jsonschema
import yaml
from cel import stdlib as cel_stdlib
from referencing import Registry, Resource

BASE_CHART = "base-1.30.3.tgz"
CRD_MEMBER = "base/files/crd-all.gen.yaml"

# --- finding the CRD --------------------------------------------------------------------------


class CrdLookupError(LookupError):
    """No CRD in the chart serves this apiVersion and kind."""


@dataclass(frozen=True)
class CrdVersion:
    group: str
    kind: str
    version: str
    namespaced: bool
    openapi: Mapping[str, Any]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def read_crds(charts_dir: Path) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition in the base chart's crd-all.gen.yaml, read from the archive."""
    with tarfile.open(charts_dir / BASE_CHART) as archive:
        member = archive.extractfile(CRD_MEMBER)
        if member is None:
            raise CrdLookupError(f"{CRD_MEMBER} in {BASE_CHART} is not a file")
        text = member.read().decode()
    # libyaml's loader when PyYAML has it: the pure-Python one takes seconds on this 850 kB file.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs = yaml.load_all(text, Loader=loader)
    return [doc for doc in docs if doc and doc.get("kind") == "CustomResourceDefinition"]


def find_version(crds: list[dict[str, Any]], api_version: str, kind: str) -> CrdVersion:
    """The CRD version an object of this apiVersion and kind is served by, or CrdLookupError."""
    group, _, version = api_version.rpartition("/")
    matches = [c for c in crds if c["spec"]["group"] == group and c["spec"]["names"]["kind"] == kind]
    if not matches:
        known = sorted(f"{c['spec']['names']['kind']}.{c['spec']['group']}" for c in crds)
        raise CrdLookupError(f"no CRD for kind {kind} in group {group!r}; the chart defines {known}")
    if len(matches) > 1:
        raise CrdLookupError(f"{len(matches)} CRDs define {kind}.{group}")
    spec = matches[0]["spec"]
    versions = {v["name"]: v for v in spec["versions"]}
    if version not in versions:
        raise CrdLookupError(f"{kind}.{group} has no version {version!r}; it has {sorted(versions)}")
    if not versions[version].get("served"):
        raise CrdLookupError(f"{kind}.{group} version {version} is not served")
    schema = versions[version].get("schema", {}).get("openAPIV3Schema")
    if schema is None:
        raise CrdLookupError(f"{kind}.{group} version {version} has no openAPIV3Schema")
    return CrdVersion(group, kind, version, spec["scope"] == "Namespaced", schema)


# --- layer 1: the OpenAPI schema as JSON Schema -----------------------------------------------


class UnsupportedSchema(ValueError):
    """The CRD uses a schema keyword or format this converter does not model (so it would not check it)."""


# Copied as they are: OpenAPI v3.0 and JSON Schema 2020-12 mean the same by them.
_SAME_KEYWORDS = (
    "enum",
    "required",
    "pattern",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minimum",
    "maximum",
    "multipleOf",
    "minProperties",
    "maxProperties",
)
# Read elsewhere (CEL rules) or only documentation.
_NOT_VALIDATION = ("description", "x-kubernetes-validations")
_CONVERTED = (
    "type",
    "nullable",
    "format",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "properties",
    "items",
    "additionalProperties",
    "oneOf",
    "anyOf",
    "allOf",
    "not",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
)
_KNOWN_KEYWORDS = frozenset(_SAME_KEYWORDS + _NOT_VALIDATION + _CONVERTED)
# The OpenAPI formats Istio's CRDs use, each checked below (jsonschema skips formats it has no check for).
CRD_FORMATS = ("int32", "int64", "double", "float", "byte", "date-time")


def to_json_schema(node: Mapping[str, Any], structural: bool = True) -> dict[str, Any]:
    """One OpenAPI v3 schema node (and what is under it) as JSON Schema.

    `structural` is false inside oneOf/anyOf/allOf/not: there a schema only adds value checks to
    the structural one beside it, so it must not forbid the fields that one declares.
    """
    unknown = set(node) - _KNOWN_KEYWORDS
    if unknown:
        raise UnsupportedSchema(f"schema keywords not modelled: {sorted(unknown)}")
    out: dict[str, Any] = {key: node[key] for key in _SAME_KEYWORDS if key in node}
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    elif "type" in node:
        out["type"] = [node["type"], "null"] if node.get("nullable") else node["type"]
    if "format" in node:
        if node["format"] not in CRD_FORMATS:
            raise UnsupportedSchema(f"format {node['format']!r} not modelled")
        out["format"] = node["format"]
    # OpenAPI v3.0's exclusive bounds are flags on minimum/maximum; JSON Schema's are the bounds.
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(flag):
            out[flag] = out.pop(bound)
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v, structural) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = to_json_schema(node["items"], structural)
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping):
        out["additionalProperties"] = to_json_schema(extra, structural)
    elif extra is not None:
        out["additionalProperties"] = extra
    elif structural and node.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
        # The API server prunes fields its schema does not name; a strict client rejects them.
        out["additionalProperties"] = False
    for key in ("oneOf", "anyOf", "allOf"):
        if key in node:
            out[key] = [to_json_schema(s, structural=False) for s in node[key]]
    if "not" in node:
        out["not"] = to_json_schema(node["not"], structural=False)
    list_type = node.get("x-kubernetes-list-type")
    if list_type == "set":
        out["uniqueItems"] = True
    elif list_type == "map":
        out["x-kubernetes-list-map-keys"] = node["x-kubernetes-list-map-keys"]
    elif list_type not in (None, "atomic"):
        raise UnsupportedSchema(f"x-kubernetes-list-type {list_type!r} not modelled")
    return out


def _list_map_keys(validator, keys, instance, schema) -> Iterator[jsonschema.ValidationError]:
    """x-kubernetes-list-type: map: no two items may share the values of the key fields."""
    if not validator.is_type(instance, "array"):
        return
    seen: dict[str, int] = {}
    for index, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = json.dumps([item.get(k) for k in keys], sort_keys=True)
        if key in seen:
            yield jsonschema.ValidationError(
                f"items {seen[key]} and {index} have the same map keys {dict(zip(keys, json.loads(key), strict=True))}"
            )
        seen.setdefault(key, index)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-list-map-keys": _list_map_keys}
)

# apimachinery's name syntax (k8s.io/apimachinery/pkg/util/validation).
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_RFC3339 = r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"


def _is_dns_label(value: str) -> bool:
    return len(value) <= 63 and re.fullmatch(_DNS_LABEL, value) is not None


def _is_dns_subdomain(value: str) -> bool:
    return len(value) <= 253 and re.fullmatch(_DNS_SUBDOMAIN, value) is not None


def _is_qualified_name(value: str) -> bool:
    """A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of <= 63."""
    prefix, slash, name = value.rpartition("/")
    if slash and not _is_dns_subdomain(prefix):
        return False
    return len(name) <= 63 and re.fullmatch(_QUALIFIED_NAME, name) is not None


def _is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and re.fullmatch(_QUALIFIED_NAME, value) is not None)


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        return False
    return True


def _is_rfc3339(value: str) -> bool:
    if re.fullmatch(_RFC3339, value) is None:
        return False
    try:
        datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _integer_in(bits: int):
    return lambda v: (
        not isinstance(v, int) or isinstance(v, bool) or -(2 ** (bits - 1)) <= v < 2 ** (bits - 1)
    )


FORMATS = jsonschema.FormatChecker(formats=())
for _name, _check in {
    "int32": _integer_in(32),
    "int64": _integer_in(64),
    "double": lambda v: True,
    "float": lambda v: True,
    "byte": lambda v: not isinstance(v, str) or _is_base64(v),
    "date-time": lambda v: not isinstance(v, str) or _is_rfc3339(v),
    "k8s-dns-label": lambda v: not isinstance(v, str) or _is_dns_label(v),
    "k8s-dns-subdomain": lambda v: not isinstance(v, str) or _is_dns_subdomain(v),
    "k8s-qualified-name": lambda v: not isinstance(v, str) or _is_qualified_name(v),
    "k8s-label-value": lambda v: not isinstance(v, str) or _is_label_value(v),
}.items():
    FORMATS.checks(_name)(_check)

KUBERNETES_SCHEMA_VERSION = "1.36.0"
_OBJECT_META = (
    "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
)
# What a client may set in metadata on create; the rest (uid, resourceVersion, ...) is the server's.
CLIENT_METADATA = (
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
)


@functools.cache
def _kubernetes_definitions() -> Registry:
    """Kubernetes' own OpenAPI definitions, as kubernetes-validate ships them (strict variant)."""
    path = f"kubernetes-json-schema/v{KUBERNETES_SCHEMA_VERSION}-local-strict/_definitions.json"
    contents = json.loads(importlib.resources.files("kubernetes_validate").joinpath(path).read_text())
    return Registry().with_resource(contents["$id"], Resource.from_contents(contents))


def metadata_schema(namespaced: bool) -> dict[str, Any]:
    """ObjectMeta, plus what the API server checks of a custom resource's name, namespace and labels."""
    return {
        "allOf": [{"$ref": _OBJECT_META}],
        "type": "object",
        # The program names every object: without a name Pulumi would make one up, and without a
        # namespace the provider's default namespace would be used.
        "required": ["name", "namespace"] if namespaced else ["name"],
        "propertyNames": {"enum": list(CLIENT_METADATA)},
        "properties": {
            "name": {"type": "string", "format": "k8s-dns-subdomain"},
            "namespace": {"type": "string", "format": "k8s-dns-label"},
            "labels": {
                "type": "object",
                "propertyNames": {"format": "k8s-qualified-name"},
                "additionalProperties": {"type": "string", "format": "k8s-label-value"},
            },
            "annotations": {
                "type": "object",
                "propertyNames": {"format": "k8s-qualified-name"},
                "additionalProperties": {"type": "string"},
            },
        },
    }


def object_schema(crd: CrdVersion) -> dict[str, Any]:
    """The whole object's JSON Schema: the CRD's, with the fields every Kubernetes object has."""
    schema = to_json_schema(crd.openapi)
    schema["properties"] = {
        "apiVersion": {"const": crd.api_version},
        "kind": {"const": crd.kind},
        "metadata": metadata_schema(crd.namespaced),
        **schema.get("properties", {}),
    }
    schema["required"] = ["apiVersion", "kind", "metadata", *schema.get("required", [])]
    schema["additionalProperties"] = False
    return schema


def schema_errors(crd: CrdVersion, obj: Any) -> list[jsonschema.ValidationError]:
    """Every way the object breaks the CRD's schema (empty when it passes)."""
    validator = _Validator(object_schema(crd), registry=_kubernetes_definitions(), format_checker=FORMATS)
    return sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))


def describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(object)"
    return f"{path}: {error.message}"


# --- layer 2: the CEL rules -------------------------------------------------------------------

# Extension libraries of the runtime that Kubernetes' CEL environment also has (cel-go's strings
# and sets extensions). The runtime's other ones (lists, math, encoders) are left out.
CEL_EXTENSIONS = ("strings", "sets")

# Every function the checker lets a rule call, each with an expression that holds only if this
# runtime implements it as CEL (cel-spec; cel-go's strings and sets extensions) defines it. A
# function a rule calls that is not here, or whose probe is false, makes the rule unevaluated.
FUNCTION_PROBES = {
    "size": 'size("abc") == 3 && [1, 2].size() == 2 && {"a": 1}.size() == 1',
    "int": 'int("65535") == 65535 && int(2.9) == 2',
    "uint": "uint(3) == 3u",
    "double": 'double("1.5") == 1.5',
    "string": 'string(80) == "80"',
    "duration": "duration('1ms') < duration('1s') && duration('1h30m') == duration('90m') && duration('0s') < duration('1ms')",
    "timestamp": "timestamp('2024-01-01T00:00:00Z') < timestamp('2024-01-02T00:00:00Z')",
    "matches": '"port-80".matches("^[a-z]+-[0-9]+$") && !"x".matches("^y$")',
    "contains": '"a*b".contains("*") && !"ab".contains("*")',
    "startsWith": '"unix:///x".startsWith("unix://") && !"x".startsWith("unix://")',
    "endsWith": '"a/".endsWith("/") && !"a".endsWith("/")',
    "substring": '"unix:///x".substring(7, 8) == "/" && "abc".substring(1) == "bc"',
    "charAt": '"abc".charAt(1) == "b"',
    "indexOf": '"abcb".indexOf("b") == 1',
    "lastIndexOf": '"abcb".lastIndexOf("b") == 3',
    "lowerAscii": '"AbC".lowerAscii() == "abc"',
    "upperAscii": '"AbC".upperAscii() == "ABC"',
    "replace": '"a-b-c".replace("-", ".") == "a.b.c"',
    "split": '"a,b".split(",") == ["a", "b"]',
    "join": '["a", "b"].join(",") == "a,b"',
    "trim": '" a ".trim() == "a"',
    "sets.contains": "sets.contains([1, 2, 3], [3, 1]) && !sets.contains([1], [2])",
    "sets.equivalent": "sets.equivalent([1, 2], [2, 1, 1])",
    "sets.intersects": "sets.intersects([1, 2], [2, 3]) && !sets.intersects([1], [2])",
}


def _context(variables: Mapping[str, Any]) -> cel.Context:
    context = cel.Context(dict(variables))
    cel_stdlib.add_stdlib_to_context(context, list(CEL_EXTENSIONS))
    return context


def probe(expression: str) -> bool:
    try:
        return cel.compile(expression).execute(_context({})) is True
    except Exception:
        return False


@functools.cache
def supported_functions() -> frozenset[str]:
    """The functions whose probe holds in this runtime."""
    return frozenset(name for name, expression in FUNCTION_PROBES.items() if probe(expression))


@dataclass(frozen=True)
class Rule:
    """One x-kubernetes-validations entry, at one schema node."""

    schema_path: str
    rule: str
    message: str


@dataclass(frozen=True)
class RuleAnalysis:
    program: Any
    transition: bool
    missing: tuple[str, ...]


@functools.cache
def analyse(rule: str) -> RuleAnalysis:
    """The compiled rule; whether it reads oldSelf; the functions it calls that the runtime lacks."""
    program = cel.compile(rule)
    references = program.references()
    # Operators (`_&&_`, `@in`, ...) are CEL's grammar; macros (has, all, exists_one) expand to them.
    called = {f for f in references["functions"] if not f.startswith(("_", "@", "!"))}
    return RuleAnalysis(
        program, "oldSelf" in references["variables"], tuple(sorted(called - supported_functions()))
    )


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def rules_in(openapi: Mapping[str, Any], path: str = "") -> list[Rule]:
    """Every CEL rule in a version's schema, with the path of the node it sits on (`[*]` for any
    item of a list or value of a map)."""
    found = [
        Rule(path or "(root)", v["rule"], v.get("message", ""))
        for v in openapi.get("x-kubernetes-validations", [])
    ]
    for key, child in openapi.get("properties", {}).items():
        found += rules_in(child, _child(path, key))
    if "items" in openapi:
        found += rules_in(openapi["items"], f"{path}[*]")
    if isinstance(openapi.get("additionalProperties"), Mapping):
        found += rules_in(openapi["additionalProperties"], f"{path}[*]")
    junctions = [*openapi.get("oneOf", []), *openapi.get("anyOf", []), *openapi.get("allOf", [])]
    if "not" in openapi:
        junctions.append(openapi["not"])
    if any("x-kubernetes-validations" in json.dumps(sub) for sub in junctions):
        raise UnsupportedSchema(f"CEL rules under oneOf/anyOf/allOf/not at {path or '(root)'}")
    return found


PASSED, VIOLATED, ERROR, UNEVALUATED, TRANSITION = "passed", "violated", "error", "unevaluated", "transition"


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    value_path: str
    outcome: str
    detail: str = ""

    def __str__(self) -> str:
        return (
            f"{self.value_path}: {self.outcome}: {self.detail or self.rule.message} (rule: {self.rule.rule})"
        )


def evaluate(rule: Rule, value: Any, value_path: str) -> RuleResult:
    analysis = analyse(rule.rule)
    if analysis.transition:
        return RuleResult(rule, value_path, TRANSITION, "reads oldSelf: applies to updates only")
    if analysis.missing:
        return RuleResult(rule, value_path, UNEVALUATED, f"the runtime lacks {', '.join(analysis.missing)}")
    try:
        result = analysis.program.execute(_context({"self": value}))
    except Exception as error:
        if "Undefined variable or function" in str(error):
            return RuleResult(rule, value_path, UNEVALUATED, str(error))
        # The API server rejects an object on which a rule fails to evaluate.
        return RuleResult(rule, value_path, ERROR, f"{type(error).__name__}: {error}")
    if result is True:
        return RuleResult(rule, value_path, PASSED)
    if result is False:
        return RuleResult(rule, value_path, VIOLATED, rule.message)
    return RuleResult(rule, value_path, ERROR, f"the rule gave {result!r}, not a bool")


def rule_results(crd: CrdVersion, obj: Any) -> list[RuleResult]:
    """Every CEL rule of the CRD that applies to a value present in the object, evaluated on it."""
    results: list[RuleResult] = []

    def visit(schema: Mapping[str, Any], value: Any, value_path: str, schema_path: str) -> None:
        for v in schema.get("x-kubernetes-validations", []):
            rule = Rule(schema_path or "(root)", v["rule"], v.get("message", ""))
            results.append(evaluate(rule, value, value_path or "(root)"))
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        if isinstance(value, dict):
            for key, child in value.items():
                if key in properties:
                    visit(properties[key], child, _child(value_path, key), _child(schema_path, key))
                elif isinstance(extra, Mapping):
                    visit(extra, child, f"{value_path}[{key}]", f"{schema_path}[*]")
        elif isinstance(value, list) and "items" in schema:
            for index, item in enumerate(value):
                visit(schema["items"], item, f"{value_path}[{index}]", f"{schema_path}[*]")

    visit(crd.openapi, obj, "", "")
    return results
