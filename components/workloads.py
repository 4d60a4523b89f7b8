"""The kata-runtime RuntimeClass and the seed's httpbin app, meshed, in a Kata VM (and under runc)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.kubeadm_config import KATA_NODE_LABEL
from components.node_config import KATA_HANDLER

RUNTIME_CLASS = "kata-runtime"
# kata-deploy's newest QEMU overhead: the VMM runs inside the pod cgroup, and 160Mi let it be
# OOM-killed (REFERENCE section 4).
KATA_POD_OVERHEAD = {"cpu": "250m", "memory": "320Mi"}
HTTPBIN_PORT = 8000
HTTPBIN_CONTAINER_PORT = 80
HTTPBIN_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "500m", "memory": "256Mi"},
}


def one_replica_deployment(
    resource_name: str,
    metadata: k8s.meta.v1.ObjectMetaArgs,
    labels: dict[str, str],
    service_account: str,
    runtime_class: str | None,
    container: k8s.core.v1.ContainerArgs,
    opts: pulumi.ResourceOptions,
    volumes: list[k8s.core.v1.VolumeArgs] | None = None,
) -> k8s.apps.v1.Deployment:
    """A one-replica Deployment of one container, selected by its labels, in the given runtime."""
    return k8s.apps.v1.Deployment(
        resource_name,
        metadata=metadata,
        spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=1,
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                spec=k8s.core.v1.PodSpecArgs(
                    service_account_name=service_account,
                    runtime_class_name=runtime_class,
                    containers=[container],
                    volumes=volumes,
                ),
            ),
        ),
        # Pods in Kata VMs start slowly under nested virtualization.
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create="20m", update="20m"))
        ),
    )


class KataRuntimeClass(pulumi.ComponentResource):
    """RuntimeClass kata-runtime (handler kata), scheduled only onto nodes labelled for Kata."""

    runtime_class: k8s.node.v1.RuntimeClass

    def __init__(
        self,
        name: str,
        provider: k8s.Provider,
        cluster_ready: pulumi.Resource,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("kata-mesh:workloads:KataRuntimeClass", name, None, opts)
        label, value = KATA_NODE_LABEL
        self.runtime_class = k8s.node.v1.RuntimeClass(
            name,
            metadata=k8s.meta.v1.ObjectMetaArgs(name=RUNTIME_CLASS),
            handler=KATA_HANDLER,
            overhead=k8s.node.v1.OverheadArgs(pod_fixed=KATA_POD_OVERHEAD),
            scheduling=k8s.node.v1.SchedulingArgs(node_selector={label: value}),
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[cluster_ready]),
        )
        self.register_outputs({"name": self.runtime_class.metadata.name})


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


def app_fingerprint(args: HttpbinArgs) -> str:
    """Changes whenever what the app's pods run changes, so the proof runs again."""
    shape = [args.namespace, args.image, args.runc_twin, RUNTIME_CLASS, KATA_POD_OVERHEAD, HTTPBIN_RESOURCES]
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


class HttpbinApp(pulumi.ComponentResource):
    """httpbin as the seed had it, in a namespace with sidecar injection and STRICT mutual TLS."""

    namespace: k8s.core.v1.Namespace
    deployment: k8s.apps.v1.Deployment
    twin: k8s.apps.v1.Deployment | None
    fingerprint: str

    def __init__(self, name: str, args: HttpbinArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:workloads:HttpbinApp", name, None, opts)
        self._args = args
        self.fingerprint = app_fingerprint(args)
        self._child = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=[args.mesh_ready]
        )
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=args.namespace, labels={"istio-injection": "enabled"}),
            opts=self._child,
        )
        self._in_namespace = pulumi.ResourceOptions.merge(
            self._child, pulumi.ResourceOptions(depends_on=[self.namespace])
        )
        self.service_account = k8s.core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata=self._metadata("httpbin"),
            opts=self._in_namespace,
        )
        self.service, self.deployment = self._app(name, "httpbin", RUNTIME_CLASS)
        self.twin = None
        if args.runc_twin:
            # The same app under runc, in the same mesh: the seed's "several runtimes side by side".
            _, self.twin = self._app(f"{name}-runc", "httpbin-runc", None)
        self.peer_authentication = k8s.apiextensions.CustomResource(
            f"{name}-mtls-strict",
            api_version="security.istio.io/v1",
            kind="PeerAuthentication",
            metadata=self._metadata("default"),
            spec={"mtls": {"mode": "STRICT"}},
            opts=self._in_namespace,
        )
        if args.gateway:
            self._route_from_gateway(name)
        self.register_outputs({"namespace": self.namespace.metadata.name})

    def _metadata(self, name: str, labels: dict[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=self.namespace.metadata.name, labels=labels)

    def _app(
        self, resource_name: str, app: str, runtime_class: str | None
    ) -> tuple[k8s.core.v1.Service, k8s.apps.v1.Deployment]:
        labels = {"app": app, "version": "v1"}
        service = k8s.core.v1.Service(
            f"{resource_name}-service",
            metadata=self._metadata(app, {"app": app, "service": app}),
            spec=k8s.core.v1.ServiceSpecArgs(
                ports=[
                    k8s.core.v1.ServicePortArgs(
                        name="http", port=HTTPBIN_PORT, target_port=HTTPBIN_CONTAINER_PORT
                    )
                ],
                selector={"app": app},
            ),
            opts=self._in_namespace,
        )
        depends_on: list[pulumi.Resource] = [self.namespace, self.service_account]
        if runtime_class is not None:
            depends_on.append(self._args.runtime_class)
        deployment = one_replica_deployment(
            f"{resource_name}-deployment",
            self._metadata(app, labels),
            labels,
            service_account="httpbin",
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
            opts=pulumi.ResourceOptions.merge(
                self._in_namespace, pulumi.ResourceOptions(depends_on=depends_on)
            ),
        )
        return service, deployment

    def _route_from_gateway(self, name: str) -> None:
        """An Istio Gateway on the ingress gateway's port 80 and a route from it to httpbin."""
        self.gateway = k8s.apiextensions.CustomResource(
            f"{name}-gateway",
            api_version="networking.istio.io/v1",
            kind="Gateway",
            metadata=self._metadata("httpbin-gateway"),
            spec={
                "selector": {"istio": "ingressgateway"},
                "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
            },
            opts=self._in_namespace,
        )
        self.virtual_service = k8s.apiextensions.CustomResource(
            f"{name}-virtual-service",
            api_version="networking.istio.io/v1",
            kind="VirtualService",
            metadata=self._metadata("httpbin"),
            spec={
                "hosts": ["*"],
                "gateways": ["httpbin-gateway"],
                "http": [{"route": [{"destination": {"host": "httpbin", "port": {"number": HTTPBIN_PORT}}}]}],
            },
            opts=self._in_namespace,
        )
