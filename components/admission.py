"""Kata enforced by admission, and Pod Security admission's labels.

In every namespace labelled kata-mesh.io/sandbox=true (the app's, Bookinfo's, and any an operator
labels), Kubernetes' built-in ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1, CEL, no
webhook or controller) admits only Pods that run in a Kata VM and that do not reach past it:

- spec.runtimeClassName must be kata-runtime;
- no privileged container, no hostNetwork, hostPID or hostIPC, no hostPath volume;
- no container adds a capability, except the init container istio-init (Istio's sidecar injection
  puts it there to write the pod's iptables rules), and it only NET_ADMIN and NET_RAW.

Containers, init containers and ephemeral containers are all checked. The policy judges Pods
themselves, so a pod made by a Deployment, Job or any other controller is covered when the
controller creates it; and it sees the pod after the mutating webhooks (Istio's injection), so what
runs is what is judged.

Pod Security admission (the built-in `pod-security.kubernetes.io/*` namespace labels) cannot do
this job: its `baseline` level forbids the NET_ADMIN and NET_RAW istio-init needs (Istio CNI, which
would remove that need, cannot redirect a Kata pod's traffic), so sandbox namespaces only `warn`
and `audit` with it, and the policy here does the refusing.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_kubernetes as k8s

SANDBOX_LABEL = "kata-mesh.io/sandbox"
SANDBOX_LABELS = {SANDBOX_LABEL: "true"}
POLICY_NAME = "kata-mesh-sandbox"
# The RuntimeClass (components/workloads.py declares it with this name).
KATA_RUNTIME_CLASS = "kata-runtime"
ISTIO_INIT = "istio-init"
ISTIO_INIT_CAPABILITIES = ("NET_ADMIN", "NET_RAW")
# The pod's container lists, each a variable of the policy.
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")

# --- Pod Security admission ---------------------------------------------------------------------

POD_SECURITY = "pod-security.kubernetes.io"
PRIVILEGED, BASELINE, RESTRICTED = "privileged", "baseline", "restricted"


def pod_security_labels(enforce: str, warn: str, audit: str) -> dict[str, str]:
    """A namespace's Pod Security admission labels (each mode at the cluster's latest version)."""
    return {f"{POD_SECURITY}/enforce": enforce, f"{POD_SECURITY}/warn": warn, f"{POD_SECURITY}/audit": audit}


# Namespaces whose pods carry Istio's istio-init (NET_ADMIN, NET_RAW): nothing stricter than
# privileged can be enforced there. `warn` at baseline tells whoever applies a workload whose pod
# template breaks it (the pod templates the program declares do not, so `pulumi up` stays quiet;
# istio-init is added only to the pods); `audit` at restricted records every pod short of it.
MESHED_POD_SECURITY = pod_security_labels(enforce=PRIVILEGED, warn=BASELINE, audit=RESTRICTED)
# istiod and the ingress gateway run as non-root, without added capabilities, with seccomp
# RuntimeDefault (components/mesh.py sets it): restricted in every mode.
RESTRICTED_POD_SECURITY = pod_security_labels(enforce=RESTRICTED, warn=RESTRICTED, audit=RESTRICTED)


def sandbox_namespace_labels() -> dict[str, str]:
    """A namespace for Kata pods in the mesh: sidecar injection, the sandbox policy, Pod Security."""
    return {"istio-injection": "enabled", **SANDBOX_LABELS, **MESHED_POD_SECURITY}


# --- The policy's CEL -----------------------------------------------------------------------------


def cel_string(text: str) -> str:
    """A CEL string literal (CEL's escapes are JSON's for these characters)."""
    return json.dumps(text)


def _container_list(field: str) -> str:
    return f"has(object.spec.{field}) ? object.spec.{field} : []"


def _names_of(lists: tuple[str, ...], where: str) -> str:
    """The names of the containers, in these lists, for which `where` (about `c`) holds."""
    return " + ".join(f"variables.{name}.filter(c, {where}).map(c, c.name)" for name in lists)


ADDS_CAPABILITIES = (
    "has(c.securityContext) && has(c.securityContext.capabilities) && has(c.securityContext.capabilities.add)"
)
# The capabilities (`cap`) container `c` of the init containers may add: istio-init's two.
ISTIO_INIT_MAY_ADD = (
    f"c.name == {cel_string(ISTIO_INIT)} && cap in {json.dumps(list(ISTIO_INIT_CAPABILITIES))}"
)


def _refused_capabilities(field: str) -> str:
    """`<container> adds <CAP>, <CAP>` for each container of the list that adds one it may not:
    an init container any but istio-init's two, another container any at all."""
    added = "c.securityContext.capabilities.add"
    refused = f"{added}.filter(cap, !({ISTIO_INIT_MAY_ADD}))" if field == "initContainers" else added
    return (
        f"variables.{field}.filter(c, {ADDS_CAPABILITIES} && size({refused}) > 0)"
        f".map(c, c.name + ' adds ' + {refused}.join(', '))"
    )


HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")

# (name, expression), in order: a variable may use the ones before it.
VARIABLES: tuple[tuple[str, str], ...] = (
    *((name, _container_list(name)) for name in CONTAINER_LISTS),
    (
        "privileged",
        _names_of(
            CONTAINER_LISTS,
            "has(c.securityContext) && has(c.securityContext.privileged) && c.securityContext.privileged",
        ),
    ),
    (
        "hostNamespaces",
        " + ".join(
            f"(has(object.spec.{field}) && object.spec.{field} ? [{cel_string(field)}] : [])"
            for field in HOST_NAMESPACES
        ),
    ),
    (
        "hostPathVolumes",
        "has(object.spec.volumes) ? object.spec.volumes.filter(v, has(v.hostPath)).map(v, v.name) : []",
    ),
    ("refusedCapabilities", " + ".join(_refused_capabilities(field) for field in CONTAINER_LISTS)),
)

WHERE = f"in namespaces labelled {SANDBOX_LABEL}=true"
RUNTIME_MESSAGE = (
    f"pods {WHERE} run in a Kata VM only: set spec.runtimeClassName: {KATA_RUNTIME_CLASS} "
    "(for a Deployment, Job or other workload, in its pod template), or use a namespace without "
    "that label"
)
PRIVILEGED_MESSAGE = (
    f"privileged containers are refused {WHERE}: remove securityContext.privileged (or set it to false)"
)
HOST_NAMESPACES_MESSAGE = (
    f"pods sharing the node's network, process or IPC namespace are refused {WHERE}: "
    "leave out hostNetwork, hostPID and hostIPC (or set them to false)"
)
HOST_PATH_MESSAGE = (
    f"hostPath volumes are refused {WHERE}: use an emptyDir, configMap, secret, projected or "
    "persistentVolumeClaim volume instead"
)
CAPABILITIES_MESSAGE = (
    f"{WHERE} only the init container {ISTIO_INIT} may add capabilities, and only "
    f"{' and '.join(ISTIO_INIT_CAPABILITIES)}: remove the others from securityContext.capabilities.add"
)

# (expression, message, messageExpression): the message names the fix; the messageExpression
# adds what the pod has (the API server falls back to the message should it fail).
VALIDATIONS: tuple[tuple[str, str, str], ...] = (
    (
        f"has(object.spec.runtimeClassName) && object.spec.runtimeClassName == {cel_string(KATA_RUNTIME_CLASS)}",
        RUNTIME_MESSAGE,
        "'spec.runtimeClassName is ' + (has(object.spec.runtimeClassName) ? "
        "'\"' + object.spec.runtimeClassName + '\"' : 'not set') + "
        f"{cel_string('; ' + RUNTIME_MESSAGE)}",
    ),
    (
        "size(variables.privileged) == 0",
        PRIVILEGED_MESSAGE,
        f"'privileged: ' + variables.privileged.join(', ') + {cel_string('; ' + PRIVILEGED_MESSAGE)}",
    ),
    (
        "size(variables.hostNamespaces) == 0",
        HOST_NAMESPACES_MESSAGE,
        f"'the pod sets ' + variables.hostNamespaces.join(', ') + {cel_string('; ' + HOST_NAMESPACES_MESSAGE)}",
    ),
    (
        "size(variables.hostPathVolumes) == 0",
        HOST_PATH_MESSAGE,
        f"'hostPath volumes: ' + variables.hostPathVolumes.join(', ') + {cel_string('; ' + HOST_PATH_MESSAGE)}",
    ),
    (
        "size(variables.refusedCapabilities) == 0",
        CAPABILITIES_MESSAGE,
        f"variables.refusedCapabilities.join('; ') + {cel_string('; ' + CAPABILITIES_MESSAGE)}",
    ),
)

# Like Pod Security admission: an update that leaves the pod's spec as it was (labels,
# annotations, finalizers, owner references) is not judged, so a pod that was there before its
# namespace got the label can still be relabelled or released by its controller. Every update that
# changes the spec (an ephemeral container added, an image changed) is judged on the whole pod.
MATCH_CONDITIONS: tuple[tuple[str, str], ...] = (
    ("creates-or-changes-the-pod-spec", "request.operation != 'UPDATE' || object.spec != oldObject.spec"),
)


class SandboxAdmission(pulumi.ComponentResource):
    """The ValidatingAdmissionPolicy and its binding to namespaces labelled kata-mesh.io/sandbox=true."""

    policy: k8s.admissionregistration.v1.ValidatingAdmissionPolicy
    binding: k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding

    def __init__(
        self,
        name: str,
        provider: k8s.Provider,
        cluster_ready: pulumi.Resource,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("kata-mesh:admission:SandboxAdmission", name, None, opts)
        v1 = k8s.admissionregistration.v1
        self.policy = v1.ValidatingAdmissionPolicy(
            f"{name}-policy",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=POLICY_NAME),
            spec=v1.ValidatingAdmissionPolicySpecArgs(
                # A policy that cannot be evaluated refuses the pod rather than letting it through.
                failure_policy="Fail",
                match_constraints=v1.MatchResourcesArgs(
                    resource_rules=[
                        # Pods are created and updated as Pods; ephemeral containers are added
                        # through their own subresource (kubectl debug), whose object is the Pod.
                        v1.NamedRuleWithOperationsArgs(
                            api_groups=[""],
                            api_versions=["v1"],
                            operations=["CREATE", "UPDATE"],
                            resources=["pods", "pods/ephemeralcontainers"],
                            scope="Namespaced",
                        )
                    ]
                ),
                match_conditions=[v1.MatchConditionArgs(name=n, expression=e) for n, e in MATCH_CONDITIONS],
                variables=[v1.VariableArgs(name=n, expression=e) for n, e in VARIABLES],
                validations=[
                    v1.ValidationArgs(
                        expression=expression,
                        message=message,
                        message_expression=message_expression,
                        reason="Forbidden",
                    )
                    for expression, message, message_expression in VALIDATIONS
                ],
            ),
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[cluster_ready]),
        )
        # Made after the policy: a binding to a policy not there yet would refuse every pod in the
        # sandbox namespaces (failurePolicy Fail).
        self.binding = v1.ValidatingAdmissionPolicyBinding(
            f"{name}-binding",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=POLICY_NAME),
            spec=v1.ValidatingAdmissionPolicyBindingSpecArgs(
                policy_name=POLICY_NAME,
                validation_actions=["Deny"],
                match_resources=v1.MatchResourcesArgs(
                    namespace_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=SANDBOX_LABELS)
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[self.policy]),
        )
        self.register_outputs({"policy": self.policy.metadata.name, "binding": self.binding.metadata.name})
