"""Istio from its official Helm charts: base, then istiod, then (optionally) an ingress gateway;
mutual TLS required mesh-wide."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components import versions
from components.admission import RESTRICTED_POD_SECURITY

ISTIO_NAMESPACE = "istio-system"
GATEWAY_NAMESPACE = "istio-ingress"
GATEWAY_NAME = "istio-ingressgateway"
# The mesh's trust domain (Istio's default, set explicitly): workload identities are
# spiffe://cluster.local/ns/<namespace>/sa/<service account>.
TRUST_DOMAIN = "cluster.local"
# Pod Security admission's restricted level wants a seccomp profile on every pod.
RUNTIME_DEFAULT_SECCOMP = {"type": "RuntimeDefault"}
# The gateway chart's own pod sysctl (so its proxy, not root, binds port 80), kept when the pod's
# securityContext is set: the chart uses it only when none is given.
UNPRIVILEGED_PORTS_SYSCTL = {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}
# Helm waits this long for each release's resources to become ready.
RELEASE_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class MeshArgs:
    istio_version: str
    provider: k8s.Provider
    # Nothing is installed before the cluster is ready for it.
    cluster_ready: pulumi.Resource
    gateway_node_port: int | None = None


def istiod_values() -> dict:
    """istiod's values: sidecar injection with istio-init; no CNI (it cannot redirect Kata pods).

    Since Istio 1.24 the istiod chart's values are flat (`cni.enabled`; the chart still copies the
    older `pilot.*` keys up), so the flat names are used. istiod's own pod gets seccomp
    RuntimeDefault, the one thing Pod Security's restricted level wants that the chart leaves out."""
    return {
        "cni": {"enabled": False},
        # The app starts only once its proxy is up, so its first requests do not fail.
        "meshConfig": {
            "accessLogFile": "/dev/stdout",
            "defaultConfig": {"holdApplicationUntilProxyStarts": True},
            "trustDomain": TRUST_DOMAIN,
        },
        "seccompProfile": RUNTIME_DEFAULT_SECCOMP,
    }


def gateway_values(node_port: int) -> dict:
    """The gateway chart defaults to a LoadBalancer Service, which nothing provides on kubeadm. Its
    pod gets seccomp RuntimeDefault (for Pod Security's restricted level) beside the chart's sysctl."""
    return {
        "securityContext": {
            "sysctls": [UNPRIVILEGED_PORTS_SYSCTL],
            "seccompProfile": RUNTIME_DEFAULT_SECCOMP,
        },
        "service": {
            "type": "NodePort",
            "ports": [
                {"name": "status-port", "port": 15021, "protocol": "TCP", "targetPort": 15021},
                {"name": "http2", "port": 80, "protocol": "TCP", "targetPort": 80, "nodePort": node_port},
            ],
        },
    }


class IstioMesh(pulumi.ComponentResource):
    """Istio's namespaces (Pod Security restricted, enforced), its charts, and mesh-wide STRICT
    mutual TLS: a sidecar accepts only mutual-TLS traffic, in every namespace."""

    base: k8s.helm.v3.Release
    istiod: k8s.helm.v3.Release
    gateway: k8s.helm.v3.Release | None
    peer_authentication: k8s.apiextensions.CustomResource

    def __init__(self, name: str, args: MeshArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:mesh:IstioMesh", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        namespace = k8s.core.v1.Namespace(
            f"{name}-istio-system",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=ISTIO_NAMESPACE, labels=RESTRICTED_POD_SECURITY),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[args.cluster_ready])),
        )
        self.base = self._release(
            f"{name}-base", "istio-base", "base", namespace, {}, args, child, [namespace]
        )
        self.istiod = self._release(
            f"{name}-istiod", "istiod", "istiod", namespace, istiod_values(), args, child, [self.base]
        )
        # In the root namespace, without a selector: the whole mesh's default. The CRD comes with
        # base; istiod's validation webhook answers for it once istiod is up.
        self.peer_authentication = k8s.apiextensions.CustomResource(
            f"{name}-mtls-strict",
            api_version="security.istio.io/v1",
            kind="PeerAuthentication",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="default", namespace=ISTIO_NAMESPACE),
            spec={"mtls": {"mode": "STRICT"}},
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[self.istiod])),
        )
        self.gateway = None
        if args.gateway_node_port is not None:
            gateway_namespace = k8s.core.v1.Namespace(
                f"{name}-istio-ingress",
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=GATEWAY_NAMESPACE,
                    labels={"istio-injection": "enabled", **RESTRICTED_POD_SECURITY},
                ),
                opts=pulumi.ResourceOptions.merge(
                    child, pulumi.ResourceOptions(depends_on=[args.cluster_ready])
                ),
            )
            self.gateway = self._release(
                f"{name}-gateway",
                GATEWAY_NAME,
                "gateway",
                gateway_namespace,
                gateway_values(args.gateway_node_port),
                args,
                child,
                [self.istiod],
            )
        self.register_outputs({})

    @staticmethod
    def _release(
        resource_name: str,
        release_name: str,
        chart: str,
        namespace: k8s.core.v1.Namespace,
        values: dict,
        args: MeshArgs,
        child: pulumi.ResourceOptions,
        after: list[pulumi.Resource],
    ) -> k8s.helm.v3.Release:
        return k8s.helm.v3.Release(
            resource_name,
            name=release_name,
            chart=chart,
            version=args.istio_version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=versions.ISTIO_CHART_REPOSITORY),
            namespace=namespace.metadata.name,
            values=values,
            timeout=RELEASE_TIMEOUT_SECONDS,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=after)),
        )
