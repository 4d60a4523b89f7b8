"""Istio's Bookinfo sample, every workload in a Kata VM, in its own injected sandbox namespace
(the Kata admission policy applies there: every pod it runs is one the policy admits)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.admission import sandbox_namespace_labels
from components.workloads import RUNTIME_CLASS, app_deployment

BOOKINFO_IMAGE = "docker.io/istio/examples-bookinfo-{service}-{version}:1.20.3"
BOOKINFO_PORT = 9080
# (service, versions, writable paths the image needs), as in Istio's samples/bookinfo.
BOOKINFO_SERVICES = (
    ("details", ("v1",), ()),
    ("ratings", ("v1",), ()),
    ("reviews", ("v1", "v2", "v3"), ("/tmp", "/opt/ibm/wlp/output")),
    ("productpage", ("v1",), ("/tmp",)),
)
BOOKINFO_ENV = {"reviews": {"LOG_DIR": "/tmp/logs"}}
BOOKINFO_RESOURCES = {
    "requests": {"cpu": "50m", "memory": "96Mi"},
    "limits": {"cpu": "500m", "memory": "512Mi"},
}


@dataclass(frozen=True)
class BookinfoArgs:
    namespace: str
    provider: k8s.Provider
    runtime_class: k8s.node.v1.RuntimeClass
    mesh_ready: pulumi.Resource


class Bookinfo(pulumi.ComponentResource):
    deployments: list[k8s.apps.v1.Deployment]

    def __init__(self, name: str, args: BookinfoArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:workloads:Bookinfo", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[args.mesh_ready])
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=args.namespace, labels=sandbox_namespace_labels()),
            opts=child,
        )
        in_namespace = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[namespace]))

        def metadata(object_name: str, labels: dict[str, str]) -> k8s.meta.v1.ObjectMetaArgs:
            return k8s.meta.v1.ObjectMetaArgs(
                name=object_name, namespace=namespace.metadata.name, labels=labels
            )

        self.deployments = []
        for service, service_versions, writable in BOOKINFO_SERVICES:
            k8s.core.v1.Service(
                f"{name}-{service}-service",
                metadata=metadata(service, {"app": service, "service": service}),
                spec=k8s.core.v1.ServiceSpecArgs(
                    ports=[k8s.core.v1.ServicePortArgs(name="http", port=BOOKINFO_PORT)],
                    selector={"app": service},
                ),
                opts=in_namespace,
            )
            account = k8s.core.v1.ServiceAccount(
                f"{name}-{service}-service-account",
                metadata=metadata(f"bookinfo-{service}", {"account": service}),
                opts=in_namespace,
            )
            for version in service_versions:
                self.deployments.append(
                    self._deployment(name, service, version, writable, metadata, account, args, in_namespace)
                )
        self.register_outputs({})

    @staticmethod
    def _deployment(
        name: str,
        service: str,
        version: str,
        writable: tuple[str, ...],
        metadata: Callable[[str, dict[str, str]], k8s.meta.v1.ObjectMetaArgs],
        account: k8s.core.v1.ServiceAccount,
        args: BookinfoArgs,
        in_namespace: pulumi.ResourceOptions,
    ) -> k8s.apps.v1.Deployment:
        labels = {"app": service, "version": version}
        volumes = [f"writable-{i}" for i in range(len(writable))]
        return app_deployment(
            f"{name}-{service}-{version}",
            metadata(f"{service}-{version}", labels),
            labels,
            service_account=f"bookinfo-{service}",
            runtime_class=RUNTIME_CLASS,
            container=k8s.core.v1.ContainerArgs(
                name=service,
                image=BOOKINFO_IMAGE.format(service=service, version=version),
                image_pull_policy="IfNotPresent",
                env=[
                    k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in BOOKINFO_ENV.get(service, {}).items()
                ],
                ports=[k8s.core.v1.ContainerPortArgs(container_port=BOOKINFO_PORT)],
                resources=k8s.core.v1.ResourceRequirementsArgs(
                    requests=BOOKINFO_RESOURCES["requests"], limits=BOOKINFO_RESOURCES["limits"]
                ),
                volume_mounts=[
                    k8s.core.v1.VolumeMountArgs(name=volume, mount_path=path)
                    for volume, path in zip(volumes, writable, strict=True)
                ],
            ),
            volumes=[
                k8s.core.v1.VolumeArgs(name=volume, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs())
                for volume in volumes
            ],
            opts=pulumi.ResourceOptions.merge(
                in_namespace, pulumi.ResourceOptions(depends_on=[account, args.runtime_class])
            ),
        )
