"""The kata-runtime RuntimeClass (and the admission policy that makes it mandatory in sandbox
namespaces) and the seed's httpbin app, meshed, in a Kata VM (and, in its own namespace, under runc)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.admission import (
    KATA_RUNTIME_CLASS,
    MESHED_POD_SECURITY,
    SandboxAdmission,
    sandbox_namespace_labels,
)
from components.kubeadm_config import KATA_NODE_LABEL
from components.mesh import GATEWAY_NAME, GATEWAY_NAMESPACE, TRUST_DOMAIN
from components.node_config import KATA_HANDLER
from components.settings import RUNC_TWIN_NAMESPACE_SUFFIX

RUNTIME_CLASS = KATA_RUNTIME_CLASS
# kata-deploy's newest QEMU overhead: the VMM runs inside the pod cgroup, and 160Mi let it be
# OOM-killed (REFERENCE section 4).
KATA_POD_OVERHEAD = {"cpu": "250m", "memory": "320Mi"}
HTTPBIN_PORT = 8000
HTTPBIN_CONTAINER_PORT = 80
HTTPBIN_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "500m", "memory": "256Mi"},
}
HTTPBIN = "httpbin"
RUNC_TWIN = "httpbin-runc"
# The well-known node label that names each node: a topology domain per node.
HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"
# Who may call httpbin: any workload with a mesh identity (SPIFFE ID
# spiffe://<trust domain>/ns/<namespace>/sa/<service account>, which Istio's AuthorizationPolicy
# sees as the principal without "spiffe://"). Istio matches a principal exactly, by prefix
# ("abc*"), by suffix ("*abc") or for presence ("*"): a "*" between parts would be taken literally.
IN_MESH_PRINCIPALS = f"{TRUST_DOMAIN}/ns/*"
# The ingress gateway's identity: its chart names its ServiceAccount after the release.
GATEWAY_PRINCIPAL = f"{TRUST_DOMAIN}/ns/{GATEWAY_NAMESPACE}/sa/{GATEWAY_NAME}"


def runc_namespace(namespace: str) -> str:
    """The runc twin's namespace beside the app's: runc pods are refused in the app's sandbox one."""
    return f"{namespace}{RUNC_TWIN_NAMESPACE_SUFFIX}"


def app_deployment(
    resource_name: str,
    metadata: k8s.meta.v1.ObjectMetaArgs,
    labels: dict[str, str],
    service_account: str,
    runtime_class: str | None,
    container: k8s.core.v1.ContainerArgs,
    opts: pulumi.ResourceOptions,
    volumes: list[k8s.core.v1.VolumeArgs] | None = None,
    replicas: int = 1,
    spread_over_nodes: bool = False,
) -> k8s.apps.v1.Deployment:
    """A Deployment of one container, selected by its labels, in the given runtime. With
    spread_over_nodes, no node takes a second replica while another eligible node has none (for two
    replicas: never both on one node), so draining a node never takes every replica at once.

    Eligible nodes are those of the pod's node selector (the Kata RuntimeClass's), tainted or
    cordoned ones included (the constraint's default nodeTaintsPolicy): with two workers, a replica
    evicted by a drain waits Pending for its node to come back rather than join the other one."""
    spread = (
        [
            k8s.core.v1.TopologySpreadConstraintArgs(
                topology_key=HOSTNAME_TOPOLOGY_KEY,
                max_skew=1,
                when_unsatisfiable="DoNotSchedule",
                label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
            )
        ]
        if spread_over_nodes
        else None
    )
    return k8s.apps.v1.Deployment(
        resource_name,
        metadata=metadata,
        spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=replicas,
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                spec=k8s.core.v1.PodSpecArgs(
                    service_account_name=service_account,
                    runtime_class_name=runtime_class,
                    containers=[container],
                    volumes=volumes,
                    topology_spread_constraints=spread,
                ),
            ),
        ),
        # Pods in Kata VMs start slowly under nested virtualization.
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create="20m", update="20m"))
        ),
    )


class KataRuntimeClass(pulumi.ComponentResource):
    """RuntimeClass kata-runtime (handler kata), scheduled only onto nodes labelled for Kata, and
    the admission policy that admits nothing else in namespaces labelled kata-mesh.io/sandbox=true.

    The RuntimeClass is made after the policy and its binding, so every Kata workload (each waits
    for the RuntimeClass) is admitted under the policy from its first pod."""

    runtime_class: k8s.node.v1.RuntimeClass
    admission: SandboxAdmission

    def __init__(
        self,
        name: str,
        provider: k8s.Provider,
        cluster_ready: pulumi.Resource,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("kata-mesh:workloads:KataRuntimeClass", name, None, opts)
        label, value = KATA_NODE_LABEL
        self.admission = SandboxAdmission(
            f"{name}-admission", provider, cluster_ready, pulumi.ResourceOptions(parent=self)
        )
        self.runtime_class = k8s.node.v1.RuntimeClass(
            name,
            metadata=k8s.meta.v1.ObjectMetaArgs(name=RUNTIME_CLASS),
            handler=KATA_HANDLER,
            overhead=k8s.node.v1.OverheadArgs(pod_fixed=KATA_POD_OVERHEAD),
            scheduling=k8s.node.v1.SchedulingArgs(node_selector={label: value}),
            opts=pulumi.ResourceOptions(
                parent=self, provider=provider, depends_on=[cluster_ready, self.admission.binding]
            ),
        )
        self.register_outputs(
            {"name": self.runtime_class.metadata.name, "policy": self.admission.policy.metadata.name}
        )


@dataclass(frozen=True)
class HttpbinArgs:
    namespace: str
    image: str
    provider: k8s.Provider
    runtime_class: k8s.node.v1.RuntimeClass
    # istiod (its injection webhook and CRDs) must exist before meshed pods and policies.
    mesh_ready: pulumi.Resource
    runc_twin: bool
    gateway: bool
    # httpbin's replicas: 2 (one per node, under a PodDisruptionBudget) with 2 or more workers,
    # else 1 (see HttpbinApp._disruption_budget).
    replicas: int

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"httpbin needs at least 1 replica, got {self.replicas}")


def app_fingerprint(args: HttpbinArgs) -> str:
    """Changes whenever what the app's pods run changes, so the proof runs again."""
    shape = [
        args.namespace,
        args.image,
        args.runc_twin,
        runc_namespace(args.namespace) if args.runc_twin else None,
        args.replicas,
        RUNTIME_CLASS,
        KATA_POD_OVERHEAD,
        HTTPBIN_RESOURCES,
    ]
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


def allowed_principals(gateway: bool) -> list[str]:
    """The identities httpbin answers: in-mesh workloads, and the ingress gateway when it is on
    (inside the in-mesh prefix too, but named: narrowing the prefix must not cut the route)."""
    return [IN_MESH_PRINCIPALS] + ([GATEWAY_PRINCIPAL] if gateway else [])


class HttpbinApp(pulumi.ComponentResource):
    """httpbin as the seed had it, in a Kata VM, in a sandbox namespace (sidecar injection, the Kata
    admission policy, STRICT mutual TLS, callers limited to mesh identities); with runcTwin, the
    same app under runc in a namespace of its own, in the same mesh and under the same rules but
    not a sandbox (the policy would refuse a runc pod there)."""

    namespace: k8s.core.v1.Namespace
    deployment: k8s.apps.v1.Deployment
    twin_namespace: k8s.core.v1.Namespace | None
    twin: k8s.apps.v1.Deployment | None
    disruption_budget: k8s.policy.v1.PodDisruptionBudget | None
    fingerprint: str

    def __init__(self, name: str, args: HttpbinArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:workloads:HttpbinApp", name, None, opts)
        self._args = args
        self.fingerprint = app_fingerprint(args)
        self._child = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=[args.mesh_ready]
        )
        self.namespace = self._namespace(f"{name}-namespace", args.namespace, sandbox_namespace_labels())
        self.service, self.deployment, self.disruption_budget = self._app(
            name, HTTPBIN, self.namespace, RUNTIME_CLASS, replicas=args.replicas
        )
        self.twin_namespace, self.twin = None, None
        if args.runc_twin:
            # The same app under runc, in the same mesh: the seed's "several runtimes side by side".
            self.twin_namespace = self._namespace(
                f"{name}-runc-namespace",
                runc_namespace(args.namespace),
                {"istio-injection": "enabled", **MESHED_POD_SECURITY},
            )
            # One replica: the twin is what Kata is measured beside, not the app that is served.
            _, self.twin, _ = self._app(f"{name}-runc", RUNC_TWIN, self.twin_namespace, None, replicas=1)
        # Mesh-wide STRICT (components/mesh.py) covers this namespace too; this one keeps the
        # sandbox STRICT should the mesh-wide mode ever be relaxed (a namespace's policy wins).
        self.peer_authentication = k8s.apiextensions.CustomResource(
            f"{name}-mtls-strict",
            api_version="security.istio.io/v1",
            kind="PeerAuthentication",
            metadata=self._metadata("default", self.namespace),
            spec={"mtls": {"mode": "STRICT"}},
            opts=self._in(self.namespace),
        )
        if args.gateway:
            self._route_from_gateway(name)
        self.register_outputs({"namespace": self.namespace.metadata.name})

    def _namespace(self, resource_name: str, namespace: str, labels: dict[str, str]) -> k8s.core.v1.Namespace:
        return k8s.core.v1.Namespace(
            resource_name,
            metadata=k8s.meta.v1.ObjectMetaArgs(name=namespace, labels=labels),
            opts=self._child,
        )

    def _in(self, namespace: k8s.core.v1.Namespace) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions.merge(self._child, pulumi.ResourceOptions(depends_on=[namespace]))

    @staticmethod
    def _metadata(
        name: str, namespace: k8s.core.v1.Namespace, labels: dict[str, str] | None = None
    ) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace.metadata.name, labels=labels)

    def _app(
        self,
        resource_name: str,
        app: str,
        namespace: k8s.core.v1.Namespace,
        runtime_class: str | None,
        replicas: int,
    ) -> tuple[k8s.core.v1.Service, k8s.apps.v1.Deployment, k8s.policy.v1.PodDisruptionBudget | None]:
        """The app's ServiceAccount (its mesh identity), Service, Deployment and AuthorizationPolicy;
        with 2 or more replicas, spread over nodes under a PodDisruptionBudget."""
        in_namespace = self._in(namespace)
        labels = {"app": app, "version": "v1"}
        account = k8s.core.v1.ServiceAccount(
            f"{resource_name}-service-account",
            metadata=self._metadata(app, namespace),
            opts=in_namespace,
        )
        service = k8s.core.v1.Service(
            f"{resource_name}-service",
            metadata=self._metadata(app, namespace, {"app": app, "service": app}),
            spec=k8s.core.v1.ServiceSpecArgs(
                ports=[
                    k8s.core.v1.ServicePortArgs(
                        name="http", port=HTTPBIN_PORT, target_port=HTTPBIN_CONTAINER_PORT
                    )
                ],
                selector={"app": app},
            ),
            opts=in_namespace,
        )
        # An ALLOW policy on the app: a request without a mesh identity (plaintext, or from
        # outside the mesh's trust domain) is refused even where mutual TLS were not STRICT.
        k8s.apiextensions.CustomResource(
            f"{resource_name}-authorization",
            api_version="security.istio.io/v1",
            kind="AuthorizationPolicy",
            metadata=self._metadata(f"{app}-mesh-callers", namespace),
            spec={
                "selector": {"matchLabels": {"app": app}},
                "action": "ALLOW",
                "rules": [{"from": [{"source": {"principals": allowed_principals(self._args.gateway)}}]}],
            },
            opts=in_namespace,
        )
        depends_on: list[pulumi.Resource] = [namespace, account]
        if runtime_class is not None:
            depends_on.append(self._args.runtime_class)
        deployment = app_deployment(
            f"{resource_name}-deployment",
            self._metadata(app, namespace, labels),
            labels,
            service_account=app,
            runtime_class=runtime_class,
            container=k8s.core.v1.ContainerArgs(
                name="httpbin",
                image=self._args.image,
                image_pull_policy="IfNotPresent",
                ports=[k8s.core.v1.ContainerPortArgs(container_port=HTTPBIN_CONTAINER_PORT)],
                readiness_probe=k8s.core.v1.ProbeArgs(
                    http_get=k8s.core.v1.HTTPGetActionArgs(path="/status/200", port=HTTPBIN_CONTAINER_PORT),
                    period_seconds=5,
                    # A Kata VM boots slowly under nested virtualization.
                    failure_threshold=24,
                ),
                resources=k8s.core.v1.ResourceRequirementsArgs(
                    requests=HTTPBIN_RESOURCES["requests"], limits=HTTPBIN_RESOURCES["limits"]
                ),
            ),
            opts=pulumi.ResourceOptions.merge(in_namespace, pulumi.ResourceOptions(depends_on=depends_on)),
            replicas=replicas,
            spread_over_nodes=replicas > 1,
        )
        return service, deployment, self._disruption_budget(resource_name, app, namespace, labels, replicas)

    def _disruption_budget(
        self,
        resource_name: str,
        app: str,
        namespace: k8s.core.v1.Namespace,
        labels: dict[str, str],
        replicas: int,
    ) -> k8s.policy.v1.PodDisruptionBudget | None:
        """`kubectl drain` (a rolling upgrade, node by node) evicts through the Eviction API, which
        keeps minAvailable 1 of the app's pods Ready: one replica serves while the other's node is
        drained, and the next node's drain waits until the moved replica is Ready again.

        None with one replica: a budget of minAvailable 1 over a single pod lets no eviction
        through, so draining its node would wait forever; without a budget it is evicted and the
        app is down until it runs again elsewhere (not enough workers to do better)."""
        if replicas < 2:
            return None
        return k8s.policy.v1.PodDisruptionBudget(
            f"{resource_name}-disruption-budget",
            metadata=self._metadata(app, namespace),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                min_available=1,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
                # A replica that is not Ready may be evicted even when the budget is not met: a
                # drain is never held up by pods that serve nothing (Ready ones stay guarded).
                unhealthy_pod_eviction_policy="AlwaysAllow",
            ),
            opts=self._in(namespace),
        )

    def _route_from_gateway(self, name: str) -> None:
        """An Istio Gateway on the ingress gateway's port 80 and a route from it to httpbin."""
        in_namespace = self._in(self.namespace)
        self.gateway = k8s.apiextensions.CustomResource(
            f"{name}-gateway",
            api_version="networking.istio.io/v1",
            kind="Gateway",
            metadata=self._metadata("httpbin-gateway", self.namespace),
            spec={
                "selector": {"istio": "ingressgateway"},
                "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
            },
            opts=in_namespace,
        )
        self.virtual_service = k8s.apiextensions.CustomResource(
            f"{name}-virtual-service",
            api_version="networking.istio.io/v1",
            kind="VirtualService",
            metadata=self._metadata(HTTPBIN, self.namespace),
            spec={
                "hosts": ["*"],
                "gateways": ["httpbin-gateway"],
                "http": [{"route": [{"destination": {"host": HTTPBIN, "port": {"number": HTTPBIN_PORT}}}]}],
            },
            opts=in_namespace,
        )
