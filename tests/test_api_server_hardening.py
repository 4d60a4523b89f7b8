"""The API server's encryption config and audit policy, as rendered by components/kubeadm_config.py,
checked against their own API types, the API server's validation of them, and what they do.

No JSON schema of EncryptionConfiguration or of the audit Policy is published (kubernetes-validate
covers served APIs only; these are files the API server reads), so the tables below are the Go
types themselves:
- apiserver.config.k8s.io/v1 EncryptionConfiguration: k8s.io/apiserver/pkg/apis/apiserver/v1
  (kubernetes/kubernetes staging/src/k8s.io/apiserver/pkg/apis/config/v1/types.go before it moved
  there, and the generated reference "kube-apiserver Configuration (v1)", which lists the same
  fields), and the rules of staging/src/k8s.io/apiserver/pkg/apis/apiserver/validation/
  validation_encryption.go;
- audit.k8s.io/v1 Policy: staging/src/k8s.io/apiserver/pkg/apis/audit/v1/types.go, and the rules
  of the audit policy validation (levels, stages, non-resource URLs).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib

import pytest
import yaml
from test_kubeadm_config import conforms

from components.kubeadm_config import (
    AUDIT_LOG_FILE,
    AUDIT_POLICY_FILE,
    ENCRYPTION_CONFIG_FILE,
    render_audit_policy,
    render_encryption_config,
    secretbox_key,
)

KEY = base64.b64encode(hashlib.sha256(b"kata-mesh test encryption key").digest()).decode()

ENCRYPTION_V1 = {
    # metav1.TypeMeta, and the resource list.
    "EncryptionConfiguration": {"apiVersion": str, "kind": str, "resources": ["ResourceConfiguration"]},
    "ResourceConfiguration": {"resources": [str], "providers": ["ProviderConfiguration"]},
    "ProviderConfiguration": {
        "aesgcm": "AESConfiguration",
        "aescbc": "AESConfiguration",
        "secretbox": "SecretboxConfiguration",
        "identity": "IdentityConfiguration",
        "kms": "KMSConfiguration",
    },
    "AESConfiguration": {"keys": ["Key"]},
    "SecretboxConfiguration": {"keys": ["Key"]},
    "Key": {"name": str, "secret": str},
    "IdentityConfiguration": {},
    "KMSConfiguration": {"apiVersion": str, "name": str, "cachesize": int, "endpoint": str, "timeout": str},
}
ENCRYPTION_V1_REQUIRED = {
    "EncryptionConfiguration": ("resources",),
    "ResourceConfiguration": ("resources", "providers"),
    "AESConfiguration": ("keys",),
    "SecretboxConfiguration": ("keys",),
    "Key": ("name", "secret"),
}

AUDIT_V1 = {
    "Policy": {
        "apiVersion": str,
        "kind": str,
        "metadata": dict,
        "rules": ["PolicyRule"],
        "omitStages": [str],
        "omitManagedFields": bool,
    },
    "PolicyRule": {
        "level": str,
        "users": [str],
        "userGroups": [str],
        "verbs": [str],
        "resources": ["GroupResources"],
        "namespaces": [str],
        "nonResourceURLs": [str],
        "omitStages": [str],
        "omitManagedFields": bool,
    },
    "GroupResources": {"group": str, "resources": [str], "resourceNames": [str]},
}
AUDIT_V1_REQUIRED = {"Policy": ("rules",), "PolicyRule": ("level",)}
AUDIT_LEVELS = ("None", "Metadata", "Request", "RequestResponse")
AUDIT_STAGES = {"RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"}


def encryption_config(key: str = KEY) -> dict:
    [document] = list(yaml.safe_load_all(render_encryption_config(key)))
    return document


def audit_policy() -> dict:
    [document] = list(yaml.safe_load_all(render_audit_policy()))
    return document


# --- EncryptionConfiguration ------------------------------------------------------------------------


def encryption_problems(config: dict) -> list[str]:
    """What the API server's ValidateEncryptionConfiguration would refuse (KMS aside: none here)."""
    problems = []
    if not config.get("resources"):
        return ["resources: at least one resources is required"]
    for i, resource in enumerate(config["resources"]):
        names = resource.get("resources") or []
        if not names:
            problems.append(f"resources[{i}].resources: at least one is required")
        for name in names:
            if (
                name != name.lower()
                or name == "*"
                or name.startswith("extensions")
                or ".events.k8s.io" in name
            ):
                problems.append(f"resources[{i}].resources: {name!r} cannot be encrypted so")
        if len(set(names)) != len(names):
            problems.append(f"resources[{i}].resources: the same resource cannot be specified multiple times")
        providers = resource.get("providers") or []
        if not providers:
            problems.append(f"resources[{i}].providers: at least one is required")
        for j, provider in enumerate(providers):
            kinds = [
                k for k in ("kms", "aesgcm", "aescbc", "secretbox", "identity") if provider.get(k) is not None
            ]
            if len(kinds) != 1:
                problems.append(
                    f"resources[{i}].providers[{j}]: exactly one provider per element, got {kinds}"
                )
                continue
            sizes = {"aesgcm": (16, 24, 32), "aescbc": (16, 24, 32), "secretbox": (32,)}.get(kinds[0])
            if sizes is None:
                continue
            keys = provider[kinds[0]].get("keys") or []
            if not keys:
                problems.append(
                    f"resources[{i}].providers[{j}].{kinds[0]}.keys: at least one keys is required"
                )
            for key in keys:
                if not key.get("name"):
                    problems.append(f"resources[{i}].providers[{j}]: name is a mandatory field for a key")
                try:
                    secret = base64.b64decode(key.get("secret", ""), validate=True)
                except ValueError:
                    problems.append(f"resources[{i}].providers[{j}]: secrets must be base64 encoded")
                    continue
                if len(secret) not in sizes:
                    problems.append(
                        f"resources[{i}].providers[{j}]: secret is not of the expected length, got {len(secret)}, expected one of {list(sizes)}"
                    )
    return problems


def test_the_encryption_config_has_only_fields_of_its_v1_types():
    config = encryption_config()
    assert (
        config["apiVersion"] == "apiserver.config.k8s.io/v1" and config["kind"] == "EncryptionConfiguration"
    )
    assert conforms(config, "EncryptionConfiguration", "E", ENCRYPTION_V1, ENCRYPTION_V1_REQUIRED) == []
    assert encryption_problems(config) == []


def test_secrets_are_written_with_secretbox_and_read_as_they_are_when_written_before():
    [resource] = encryption_config()["resources"]
    assert resource["resources"] == ["secrets"]
    # The first provider encrypts every write; identity last lets the API server read the Secrets
    # stored before encryption was on, and write nothing unencrypted.
    assert resource["providers"] == [
        {"secretbox": {"keys": [{"name": "key1", "secret": KEY}]}},
        {"identity": {}},
    ]
    assert len(base64.b64decode(resource["providers"][0]["secretbox"]["keys"][0]["secret"])) == 32


def test_the_checks_above_catch_what_the_api_server_refuses():
    bad = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {
                "resources": ["Secrets"],
                "providers": [
                    {
                        "secretbox": {
                            "keys": [{"name": "key1", "secret": base64.b64encode(b"short").decode()}]
                        }
                    },
                    {"identity": {}, "aescbc": {"keys": [{"name": "k", "secret": KEY}]}},
                    {"secretbox": {"key": [{"name": "key1", "secret": KEY}]}},
                ],
            }
        ],
    }
    assert conforms(bad, "EncryptionConfiguration", "E", ENCRYPTION_V1, ENCRYPTION_V1_REQUIRED) == [
        "E.resources[0].providers[2].secretbox.keys: required in SecretboxConfiguration",
        "E.resources[0].providers[2].secretbox.key: no such field in SecretboxConfiguration",
    ]
    assert encryption_problems(bad) == [
        "resources[0].resources: 'Secrets' cannot be encrypted so",
        "resources[0].providers[0]: secret is not of the expected length, got 5, expected one of [32]",
        "resources[0].providers[1]: exactly one provider per element, got ['aescbc', 'identity']",
        "resources[0].providers[2].secretbox.keys: at least one keys is required",
    ]


@pytest.mark.parametrize(
    "key", ["", "not base64!", base64.b64encode(b"16 bytes only...").decode(), KEY[:-4], KEY + "AAAA"]
)
def test_a_key_that_is_not_32_bytes_of_base64_is_refused_without_showing_it(key):
    with pytest.raises(ValueError) as caught:
        render_encryption_config(key)
    assert "32 bytes" in str(caught.value) or "base64" in str(caught.value)
    if key:
        assert key not in str(caught.value)


def test_the_program_turns_32_random_bytes_in_hex_into_the_base64_key():
    raw = hashlib.sha256(b"random").digest()
    assert secretbox_key(raw.hex()) == base64.b64encode(raw).decode()
    for bad in ("ab" * 16, "zz" * 32, "ab" * 33):
        with pytest.raises(ValueError) as caught:
            secretbox_key(bad)
        assert bad not in str(caught.value)


# --- audit Policy ---------------------------------------------------------------------------------


def audit_problems(policy: dict) -> list[str]:
    """What the API server's audit policy validation refuses."""
    problems = []
    for stage in policy.get("omitStages", []):
        if stage not in AUDIT_STAGES:
            problems.append(f"omitStages: {stage!r} is no stage")
    for i, rule in enumerate(policy["rules"]):
        if rule.get("level") not in AUDIT_LEVELS:
            problems.append(f"rules[{i}].level: {rule.get('level')!r} is no level")
        urls = rule.get("nonResourceURLs", [])
        if urls and (rule.get("resources") or rule.get("namespaces")):
            problems.append(f"rules[{i}]: rules cannot apply to both regular resources and non-resource URLs")
        for url in urls:
            if not url.startswith("/") or ("*" in url and (url.count("*") > 1 or not url.endswith("*"))):
                problems.append(f"rules[{i}].nonResourceURLs: {url!r}: a path, with * only as its last step")
        for resource in rule.get("resources", []):
            if resource.get("resourceNames") and not resource.get("resources"):
                problems.append(f"rules[{i}].resources: resourceNames needs resources")
    return problems


def test_the_audit_policy_has_only_fields_of_its_v1_types():
    policy = audit_policy()
    assert policy["apiVersion"] == "audit.k8s.io/v1" and policy["kind"] == "Policy"
    assert conforms(policy, "Policy", "P", AUDIT_V1, AUDIT_V1_REQUIRED) == []
    assert audit_problems(policy) == []


def test_the_audit_checks_catch_what_the_api_server_refuses():
    bad = {
        "rules": [
            {"level": "Everything", "nonResourceURLs": ["/healthz*/x"], "resources": [{"group": ""}]},
            {"levels": "None"},
        ],
        "omitStages": ["Received"],
    }
    assert conforms(bad, "Policy", "P", AUDIT_V1, AUDIT_V1_REQUIRED) == [
        "P.rules[1].level: required in PolicyRule",
        "P.rules[1].levels: no such field in PolicyRule",
    ]
    assert audit_problems(bad) == [
        "omitStages: 'Received' is no stage",
        "rules[0].level: 'Everything' is no level",
        "rules[0]: rules cannot apply to both regular resources and non-resource URLs",
        "rules[0].nonResourceURLs: '/healthz*/x': a path, with * only as its last step",
        "rules[1].level: None is no level",
    ]


def audit_level(
    policy: dict,
    user: str = "kubernetes-admin",
    verb: str = "get",
    group: str | None = None,
    resource: str | None = None,
    url: str | None = None,
) -> str:
    """The level of a request: the first rule that matches it (the API server's policy checker;
    no rule matching means None)."""
    for rule in policy["rules"]:
        if rule.get("users") and user not in rule["users"]:
            continue
        if rule.get("verbs") and verb not in rule["verbs"]:
            continue
        if url is not None:
            if rule.get("resources") or rule.get("namespaces"):
                continue
            if rule.get("nonResourceURLs") and not any(
                fnmatch.fnmatchcase(url, u) for u in rule["nonResourceURLs"]
            ):
                continue
        else:
            if rule.get("nonResourceURLs"):
                continue
            if rule.get("resources") and not any(
                g.get("group", "") == group and (not g.get("resources") or resource in g["resources"])
                for g in rule["resources"]
            ):
                continue
        return rule["level"]
    return "None"


@pytest.mark.parametrize(
    ("request_", "level"),
    [
        ({"url": "/readyz", "user": "system:anonymous"}, "None"),
        ({"url": "/readyz/etcd", "user": "system:anonymous"}, "None"),
        ({"url": "/livez", "user": "system:anonymous"}, "None"),
        ({"url": "/healthz", "user": "system:anonymous"}, "None"),
        (
            {
                "user": "system:kube-proxy",
                "verb": "watch",
                "group": "discovery.k8s.io",
                "resource": "endpointslices",
            },
            "None",
        ),
        ({"user": "system:kube-proxy", "verb": "watch", "group": "", "resource": "services"}, "None"),
        # kube-proxy doing anything else is recorded.
        ({"user": "system:kube-proxy", "verb": "list", "group": "", "resource": "services"}, "Metadata"),
        ({"verb": "get", "group": "", "resource": "secrets"}, "Metadata"),
        ({"verb": "create", "group": "", "resource": "secrets"}, "Metadata"),
        ({"verb": "update", "group": "", "resource": "configmaps"}, "Metadata"),
        ({"verb": "create", "group": "authentication.k8s.io", "resource": "tokenreviews"}, "Metadata"),
        ({"verb": "create", "group": "", "resource": "pods"}, "Metadata"),
        ({"verb": "delete", "group": "apps", "resource": "deployments"}, "Metadata"),
        ({"url": "/metrics"}, "Metadata"),
        ({"url": "/version"}, "Metadata"),
    ],
)
def test_each_request_is_audited_at_the_level_it_should_be(request_, level):
    assert audit_level(audit_policy(), **request_) == level


def test_no_rule_logs_a_body_so_no_secret_reaches_the_audit_log():
    policy = audit_policy()
    assert {rule["level"] for rule in policy["rules"]} == {"None", "Metadata"}
    # The rule for secrets, configmaps and token reviews comes before the catch-all, so raising the
    # catch-all later cannot log their bodies.
    levels = [rule["level"] for rule in policy["rules"]]
    sensitive = next(
        i
        for i, rule in enumerate(policy["rules"])
        if any("secrets" in g.get("resources", []) for g in rule.get("resources", []))
    )
    assert levels[sensitive] == "Metadata" and sensitive < len(levels) - 1
    assert policy["rules"][-1] == {"level": "Metadata"}
    assert policy["omitStages"] == ["RequestReceived"]


def test_the_steps_write_the_files_where_the_flags_point():
    """The init and join steps are told where to write by the program, from the same constants
    that ClusterConfiguration's flags and mounts use."""
    from components.cluster import API_SERVER_FILES
    from components.kubeadm_config import AUDIT_LOG_DIR, api_server

    assert dict(API_SERVER_FILES) == {
        "encryption-config-file": ENCRYPTION_CONFIG_FILE,
        "audit-policy-file": AUDIT_POLICY_FILE,
        "audit-log-dir": AUDIT_LOG_DIR,
    }
    flags = {a["name"]: a["value"] for a in api_server()["extraArgs"]}
    assert flags["encryption-provider-config"] == ENCRYPTION_CONFIG_FILE
    assert flags["audit-policy-file"] == AUDIT_POLICY_FILE
    assert flags["audit-log-path"] == AUDIT_LOG_FILE and AUDIT_LOG_FILE.startswith(AUDIT_LOG_DIR + "/")
