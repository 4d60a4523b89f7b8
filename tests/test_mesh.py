"""Istio, the RuntimeClass and httpbin under the mock engine, and a strict schema check of every
Kubernetes object the program declares."""

from __future__ import annotations

import kubernetes_validate
import pytest
from harness import OPERATOR_CONFIG, PROJECT, STACKS, ProgramRun, as_manifest, cached_run, stack_config

from offline.plan import Graph

RELEASE = "kubernetes:helm.sh/v3:Release"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
ISTIO_REPO = {"repo": "https://istio-release.storage.googleapis.com/charts"}
# Kinds the Kubernetes OpenAPI does not describe: Helm releases and Istio's custom resources.
NOT_IN_KUBERNETES_SCHEMA = (
    "kubernetes:helm.sh/",
    "kubernetes:security.istio.io/",
    "kubernetes:networking.istio.io/",
)
KUBERNETES_SCHEMA_VERSION = "1.36.0"


run = cached_run


def kubernetes_objects(program: ProgramRun):
    return [
        r
        for r in program.registrations
        if r.custom and r.type.startswith("kubernetes:") and not r.type.startswith(NOT_IN_KUBERNETES_SCHEMA)
    ]


@pytest.mark.parametrize("stack", STACKS)
def test_every_declared_kubernetes_object_passes_the_strict_schema(stack):
    objects = kubernetes_objects(run(stack))
    assert {o.inputs["kind"] for o in objects} >= {
        "Namespace",
        "RuntimeClass",
        "ServiceAccount",
        "Service",
        "Deployment",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for declared in objects:
        manifest = as_manifest(declared.inputs)
        kubernetes_validate.validate(manifest, KUBERNETES_SCHEMA_VERSION, strict=True)


def test_the_strict_schema_check_catches_a_wrong_field():
    deployment = as_manifest(run("dev").one(DEPLOYMENT, "httpbin-deployment").inputs)
    deployment["spec"]["template"]["spec"]["runtimeClass"] = "kata-runtime"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_SCHEMA_VERSION, strict=True)


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
@pytest.mark.parametrize("stack", STACKS)
def test_istio_base_then_istiod_then_the_app_and_the_runtime_class_before_it(stack, preview):
    program = run(stack, preview)
    base, istiod = program.one(RELEASE, "mesh-base"), program.one(RELEASE, "mesh-istiod")
    assert base.urn in istiod.dependencies
    # Istio starts once the API answers and the pod network is installed, not after every node is
    # Ready (istiod's release waits for its own pod); the proof still comes after every node.
    namespace = program.one("kubernetes:core/v1:Namespace", "mesh-istio-system")
    assert namespace.dependencies == [program.one(RELEASE, "cluster-flannel").urn]
    graph = Graph(program)
    nodes_ready = program.one("command:remote:Command", "cluster-nodes-ready").urn
    assert nodes_ready not in graph.ancestors(istiod.urn)
    assert nodes_ready in graph.ancestors(program.one("command:remote:Command", "proof-mesh-facts").urn)
    runtime_class = program.one("kubernetes:node.k8s.io/v1:RuntimeClass", "kata-runtime")
    deployment = program.one(DEPLOYMENT, "httpbin-deployment")
    assert istiod.urn in deployment.dependencies
    assert runtime_class.urn in deployment.dependencies
    for release, chart in ((base, "base"), (istiod, "istiod")):
        assert release.inputs["chart"] == chart
        assert release.inputs["version"] == "1.30.4"
        assert release.inputs["repositoryOpts"] == ISTIO_REPO
        assert release.inputs["namespace"] == "istio-system" or preview
    assert istiod.inputs["values"]["cni"]["enabled"] is False
    assert not [r for r in program.of_type(RELEASE) if r.inputs["chart"] == "cni"]
    # Pod Security's restricted level (istio-system enforces it) wants a seccomp profile.
    assert istiod.inputs["values"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert istiod.inputs["values"]["meshConfig"]["trustDomain"] == "cluster.local"


PSA = "pod-security.kubernetes.io"
SANDBOX_NAMESPACE_LABELS = {
    "istio-injection": "enabled",
    "kata-mesh.io/sandbox": "true",
    f"{PSA}/enforce": "privileged",
    f"{PSA}/warn": "baseline",
    f"{PSA}/audit": "restricted",
}
RESTRICTED_LABELS = {f"{PSA}/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
PEER_AUTHENTICATION = "kubernetes:security.istio.io/v1:PeerAuthentication"
AUTHORIZATION_POLICY = "kubernetes:security.istio.io/v1:AuthorizationPolicy"
IN_MESH = "cluster.local/ns/*"
GATEWAY_IDENTITY = "cluster.local/ns/istio-ingress/sa/istio-ingressgateway"


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
@pytest.mark.parametrize("stack", STACKS)
def test_mutual_tls_is_strict_mesh_wide_once_istiod_is_up(stack, preview):
    program = run(stack, preview)
    mesh_wide = program.one(PEER_AUTHENTICATION, "mesh-mtls-strict")
    assert mesh_wide.inputs["metadata"] == {"name": "default", "namespace": "istio-system"}
    # No selector: the root namespace's policy is the whole mesh's default.
    assert mesh_wide.inputs["spec"] == {"mtls": {"mode": "STRICT"}}
    assert program.one(RELEASE, "mesh-istiod").urn in mesh_wide.dependencies
    namespace = program.one("kubernetes:core/v1:Namespace", "mesh-istio-system").inputs["metadata"]
    assert namespace == {"name": "istio-system", "labels": RESTRICTED_LABELS}


def test_the_runtime_class_runs_kata_with_overhead_on_kata_nodes():
    runtime_class = run("dev").one("kubernetes:node.k8s.io/v1:RuntimeClass", "kata-runtime").inputs
    assert runtime_class["metadata"]["name"] == "kata-runtime"
    assert runtime_class["handler"] == "kata"
    assert runtime_class["overhead"] == {"podFixed": {"cpu": "250m", "memory": "320Mi"}}
    assert runtime_class["scheduling"] == {"nodeSelector": {"katacontainers.io/kata-runtime": "true"}}


@pytest.mark.parametrize("stack", STACKS)
def test_httpbin_is_the_seeds_app_in_an_injected_namespace_with_strict_mtls(stack):
    program = run(stack)
    namespace = program.one("kubernetes:core/v1:Namespace", "httpbin-namespace").inputs["metadata"]
    assert namespace == {"name": "httpbin", "labels": SANDBOX_NAMESPACE_LABELS}
    account = program.one("kubernetes:core/v1:ServiceAccount", "httpbin-service-account").inputs["metadata"]
    assert account == {"name": "httpbin", "namespace": "httpbin"}
    service = program.one(SERVICE, "httpbin-service").inputs
    assert service["metadata"]["labels"] == {"app": "httpbin", "service": "httpbin"}
    assert service["spec"] == {
        "ports": [{"name": "http", "port": 8000, "targetPort": 80}],
        "selector": {"app": "httpbin"},
    }
    deployment = program.one(DEPLOYMENT, "httpbin-deployment").inputs
    labels = {"app": "httpbin", "version": "v1"}
    assert deployment["spec"]["selector"] == {"matchLabels": labels}
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == labels
    assert pod["spec"]["runtimeClassName"] == "kata-runtime"
    assert pod["spec"]["serviceAccountName"] == "httpbin"
    [container] = pod["spec"]["containers"]
    assert container["image"] == "docker.io/kennethreitz/httpbin"
    assert container["ports"] == [{"containerPort": 80}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/status/200", "port": 80}
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    peer = program.one(PEER_AUTHENTICATION, "httpbin-mtls-strict").inputs
    assert peer["metadata"]["namespace"] == "httpbin"
    assert peer["spec"] == {"mtls": {"mode": "STRICT"}}


@pytest.mark.parametrize("stack", STACKS)
def test_only_mesh_identities_and_the_gateway_when_on_may_call_httpbin(stack):
    program = run(stack)
    gateway = stack_config(stack)[f"{PROJECT}:ingressGateway"] == "true"
    policy = program.one(AUTHORIZATION_POLICY, "httpbin-authorization")
    assert policy.inputs["metadata"] == {"name": "httpbin-mesh-callers", "namespace": "httpbin"}
    assert policy.inputs["spec"] == {
        "selector": {"matchLabels": {"app": "httpbin"}},
        "action": "ALLOW",
        "rules": [
            {"from": [{"source": {"principals": [IN_MESH] + ([GATEWAY_IDENTITY] if gateway else [])}}]}
        ],
    }
    assert program.one(RELEASE, "mesh-istiod").urn in policy.dependencies


def test_the_gateways_identity_is_its_charts_service_account_in_its_namespace():
    program = run("prod")
    gateway = program.one(RELEASE, "mesh-gateway").inputs
    assert gateway["namespace"] == "istio-ingress" and gateway["name"] == "istio-ingressgateway"
    # The chart names its ServiceAccount after the release unless told otherwise.
    assert "serviceAccount" not in gateway["values"]
    assert f"cluster.local/ns/{gateway['namespace']}/sa/{gateway['name']}" == GATEWAY_IDENTITY


def test_a_principal_pattern_is_a_prefix_suffix_or_presence_match_never_a_wildcard_inside():
    """Istio takes '*' only at one end (or alone): 'cluster.local/ns/*/sa/*' would match nothing."""
    for stack in STACKS:
        for policy in run(stack).of_type(AUTHORIZATION_POLICY):
            for rule in policy.inputs["spec"]["rules"]:
                for source in rule["from"]:
                    for principal in source["source"]["principals"]:
                        assert "*" not in principal.strip("*"), principal


def test_dev_runs_a_runc_twin_in_its_own_meshed_namespace_that_is_no_sandbox_and_the_others_do_not():
    program = run("dev")
    namespace = program.one("kubernetes:core/v1:Namespace", "httpbin-runc-namespace").inputs["metadata"]
    assert namespace == {
        "name": "httpbin-runc",
        "labels": {k: v for k, v in SANDBOX_NAMESPACE_LABELS.items() if k != "kata-mesh.io/sandbox"},
    }
    twin = program.one(DEPLOYMENT, "httpbin-runc-deployment").inputs
    assert twin["metadata"]["namespace"] == "httpbin-runc"
    pod = twin["spec"]["template"]
    assert "runtimeClassName" not in pod["spec"]
    assert pod["spec"]["serviceAccountName"] == "httpbin-runc"
    assert pod["metadata"]["labels"] == {"app": "httpbin-runc", "version": "v1"}
    account = program.one("kubernetes:core/v1:ServiceAccount", "httpbin-runc-service-account").inputs
    assert account["metadata"] == {"name": "httpbin-runc", "namespace": "httpbin-runc"}
    service = program.one(SERVICE, "httpbin-runc-service").inputs
    assert service["metadata"]["namespace"] == "httpbin-runc"
    assert service["spec"]["selector"] == {"app": "httpbin-runc"}
    policy = program.one(AUTHORIZATION_POLICY, "httpbin-runc-authorization").inputs
    assert policy["metadata"] == {"name": "httpbin-runc-mesh-callers", "namespace": "httpbin-runc"}
    assert policy["spec"]["selector"] == {"matchLabels": {"app": "httpbin-runc"}}
    assert policy["spec"]["rules"] == [{"from": [{"source": {"principals": [IN_MESH]}}]}]
    for stack in ("staging", "prod"):
        assert [r.name for r in run(stack).of_type(DEPLOYMENT) if r.name.startswith("httpbin")] == [
            "httpbin-deployment"
        ]
        assert not [r for r in run(stack).of_type("kubernetes:core/v1:Namespace") if "runc" in r.name]


def test_staging_runs_bookinfo_every_workload_in_kata_in_an_injected_namespace():
    program = run("staging")
    namespace = program.one("kubernetes:core/v1:Namespace", "bookinfo-namespace").inputs["metadata"]
    assert namespace == {"name": "bookinfo", "labels": SANDBOX_NAMESPACE_LABELS}
    deployments = {
        r.inputs["metadata"]["name"]: r for r in program.of_type(DEPLOYMENT) if r.name.startswith("bookinfo-")
    }
    assert sorted(deployments) == [
        "details-v1",
        "productpage-v1",
        "ratings-v1",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
    ]
    runtime_class = program.one("kubernetes:node.k8s.io/v1:RuntimeClass", "kata-runtime")
    for deployment in deployments.values():
        assert deployment.inputs["metadata"]["namespace"] == "bookinfo"
        assert deployment.inputs["spec"]["template"]["spec"]["runtimeClassName"] == "kata-runtime"
        assert runtime_class.urn in deployment.dependencies
        assert program.one(RELEASE, "mesh-istiod").urn in deployment.dependencies
    services = sorted(
        r.inputs["metadata"]["name"] for r in program.of_type(SERVICE) if r.name.startswith("bookinfo-")
    )
    assert services == ["details", "productpage", "ratings", "reviews"]
    assert not [r for r in run("dev").registrations if r.name.startswith("bookinfo-")]


def test_prod_exposes_httpbin_through_a_nodeport_gateway_only_to_allowed_cidrs():
    program = run("prod")
    gateway = program.one(RELEASE, "mesh-gateway")
    assert gateway.inputs["chart"] == "gateway"
    assert gateway.inputs["repositoryOpts"] == ISTIO_REPO
    assert program.one(RELEASE, "mesh-istiod").urn in gateway.dependencies
    assert gateway.inputs["values"]["securityContext"] == {
        "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    namespace = program.one("kubernetes:core/v1:Namespace", "mesh-istio-ingress").inputs["metadata"]
    assert namespace == {
        "name": "istio-ingress",
        "labels": {"istio-injection": "enabled", **RESTRICTED_LABELS},
    }
    service = gateway.inputs["values"]["service"]
    assert service["type"] == "NodePort"
    assert {"name": "http2", "port": 80, "protocol": "TCP", "targetPort": 80, "nodePort": 30080} in service[
        "ports"
    ]
    route = program.one("kubernetes:networking.istio.io/v1:VirtualService", "httpbin-virtual-service").inputs
    assert route["spec"]["http"] == [
        {"route": [{"destination": {"host": "httpbin", "port": {"number": 8000}}}]}
    ]
    # prod's nodes are private: the gateway's own load balancer carries the NodePort.
    [address] = [
        r
        for r in program.of_type("gcp:compute/address:Address")
        if r.inputs["name"] == "kata-mesh-prod-gateway"
    ]
    assert program.output("httpbinUrl") == f"http://{program.states[address.urn]['address']}:30080/get"
    firewall = program.one("gcp:compute/firewall:Firewall", "network-allow-gateway").inputs
    # The gateway's own sources (gatewayAllowedCidrs), not the API's.
    assert firewall["sourceRanges"] == OPERATOR_CONFIG[f"{PROJECT}:gatewayAllowedCidrs"]
    assert firewall["sourceRanges"] != OPERATOR_CONFIG[f"{PROJECT}:apiAllowedCidrs"]


def test_without_a_gateway_the_output_is_a_port_forward_command():
    assert (
        run("dev")
        .output("httpbinUrl")
        .startswith("kubectl --kubeconfig kubeconfig -n httpbin port-forward svc/httpbin 8000:8000")
    )
    assert not [r for r in run("dev").of_type(RELEASE) if r.inputs["chart"] == "gateway"]
