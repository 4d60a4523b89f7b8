"""The proof's own identity in the cluster: a ServiceAccount with only what the proof's scripts
do, instead of kubeadm's admin.conf (cluster-admin).

96-mesh-facts.sh and 94-ha-facts.sh (run by components/proof.py on the first control plane) use
admin.conf for one thing only: `kubectl create token` for this ServiceAccount, a short-lived token
that they write into a private kubeconfig and run every other kubectl call with. What that
ServiceAccount may do is derived from those calls (`proof_rules`, the one source of the Roles
below and of the tests that replay the scripts' calls against them):

- in each app's namespace: `rollout status` of the app's Deployment (get, list and watch, by its
  name: kubectl lists and watches it with a metadata.name field selector, which RBAC matches
  against resourceNames), the app's pods listed and read, and `kubectl exec` into the app's pod
  (its name is the ReplicaSet's, unknown beforehand);
- in the app's sandbox namespace, where the in-mesh client runs: pods created (the client, and
  the runc probe's server-side dry run, which RBAC authorizes as a create), and the client waited
  for, exec'd into and deleted by its name; events listed (`kubectl describe` when it is not
  Ready);
- in the outside namespace (`default`), where the plaintext client runs: the same, every verb but
  create and the events' list held to the client's name, so nothing else in that namespace can be
  read, exec'd into or deleted;
- cluster-wide: Nodes listed (`kubectl get nodes`).

`kubectl exec` opens a WebSocket (an HTTP GET, authorized as `get pods/exec`, and from
Kubernetes 1.35 also as `create pods/exec`); it falls back to SPDY (a POST, `create`): both verbs.
Nothing on Secrets, no wildcard, no update or patch.

The ServiceAccount lives in kube-system: whoever may create pods in a namespace may run them as
any of its ServiceAccounts, and only cluster admins create pods in kube-system (in the app's
namespace, anyone who could deploy there would gain the proof's rights). It mounts no token into
any pod (automountServiceAccountToken: false); its tokens exist only as the scripts mint them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

PROOF_SERVICE_ACCOUNT = "kata-mesh-proof"
PROOF_SERVICE_ACCOUNT_NAMESPACE = "kube-system"
# The Roles, RoleBindings, ClusterRole and ClusterRoleBinding share the ServiceAccount's name.
PROOF_ROLE = PROOF_SERVICE_ACCOUNT
# The pods 96-mesh-facts.sh makes (its names for them): the in-mesh client in the app's sandbox
# namespace, the plaintext client in the outside namespace.
MESH_CLIENT_POD = "mesh-client"
PLAINTEXT_CLIENT_POD = "plaintext-client"

# One grant: (namespace, "" for cluster-scoped; API group; resource[/subresource]; verb; the one
# object's name, or None for any).
Grant = tuple[str, str, str, str, str | None]
# A rule as RBAC writes it: apiGroups, resources, verbs and, when held to names, resourceNames.
Rule = dict[str, list[str]]


@dataclass(frozen=True)
class ProofRules:
    # Each namespace the proof touches, with its Role's rules.
    namespaced: dict[str, list[Rule]]
    # The ClusterRole's rules: only what is cluster-scoped.
    cluster: list[Rule]


def _grants(apps: Mapping[str, str], client_namespace: str, outside_namespace: str) -> set[Grant]:
    """What the scripts' kubectl calls need, one verb at a time."""
    grants: set[Grant] = set()

    def grant(namespace: str, group: str, resource: str, verbs: str, name: str | None = None) -> None:
        grants.update((namespace, group, resource, verb, name) for verb in verbs.split())

    for app, namespace in apps.items():
        # kubectl rollout status deployment/APP: get, then list and watch by name.
        grant(namespace, "apps", "deployments", "get list watch", app)
        # get pods -o json / -l app=APP / -o wide; exec's lookup of the app's pod; exec into it.
        grant(namespace, "", "pods", "get list")
        grant(namespace, "", "pods/exec", "get create")
    for namespace, client in ((client_namespace, MESH_CLIENT_POD), (outside_namespace, PLAINTEXT_CLIENT_POD)):
        # kubectl run CLIENT (and the runc probe's --dry-run=server in the client's namespace).
        grant(namespace, "", "pods", "create")
        # delete --wait, wait --for=condition=Ready, get, exec, describe: by the client's name.
        grant(namespace, "", "pods", "get list watch delete", client)
        grant(namespace, "", "pods/exec", "get create", client)
        # describe pod CLIENT (the message when it is not Ready) lists its events.
        grant(namespace, "", "events", "list")
    # get nodes -o json (96-mesh-facts.sh), get nodes -l node-role... (94-ha-facts.sh).
    grant("", "", "nodes", "list")
    # A grant for any name makes the same grant for one name redundant.
    return {g for g in grants if g[4] is None or (*g[:4], None) not in grants}


def _rules(grants: set[Grant]) -> list[Rule]:
    """One namespace's grants as few rules: a rule per group and names, for the resources that
    take the same verbs."""
    verbs: dict[tuple[str, str, str | None], set[str]] = defaultdict(set)
    for _, group, resource, verb, name in grants:
        verbs[(group, resource, name)].add(verb)
    resources: dict[tuple[str, tuple[str, ...], str | None], list[str]] = defaultdict(list)
    for (group, resource, name), resource_verbs in sorted(
        verbs.items(), key=lambda i: (i[0][0], i[0][1], i[0][2] or "")
    ):
        resources[(group, tuple(sorted(resource_verbs)), name)].append(resource)
    rules = []
    for (group, rule_verbs, name), rule_resources in resources.items():
        rule: Rule = {"apiGroups": [group], "resources": rule_resources, "verbs": list(rule_verbs)}
        if name is not None:
            rule["resourceNames"] = [name]
        rules.append(rule)
    return rules


def proof_rules(apps: Mapping[str, str], client_namespace: str, outside_namespace: str) -> ProofRules:
    """The proof's permissions: apps is each app the proof judges with its namespace (as
    components.proof.app_namespaces gives them), client_namespace the app's sandbox namespace (where
    the in-mesh client and the runc probe go), outside_namespace where the plaintext client runs."""
    grants = _grants(apps, client_namespace, outside_namespace)
    namespaces = sorted({g[0] for g in grants if g[0]})
    return ProofRules(
        namespaced={ns: _rules({g for g in grants if g[0] == ns}) for ns in namespaces},
        cluster=_rules({g for g in grants if not g[0]}),
    )


@dataclass(frozen=True)
class ProofAccessArgs:
    provider: k8s.Provider
    # Each app the proof judges, with its namespace: components.proof.app_namespaces(proof_args).
    apps: Mapping[str, str]
    # The app's sandbox namespace (ProofArgs.namespace) and the plaintext client's
    # (components.proof.OUTSIDE_NAMESPACE).
    client_namespace: str
    outside_namespace: str
    # What makes the namespaces the Roles go in (the app), and the cluster itself.
    after: Sequence[pulumi.Resource]


def _policy_rules(rules: list[Rule]) -> list[k8s.rbac.v1.PolicyRuleArgs]:
    return [
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=rule["apiGroups"],
            resources=rule["resources"],
            verbs=rule["verbs"],
            resource_names=rule.get("resourceNames"),
        )
        for rule in rules
    ]


class ProofAccess(pulumi.ComponentResource):
    """The proof's ServiceAccount (kube-system/kata-mesh-proof), a Role and RoleBinding in each
    namespace the proof touches and a ClusterRole and ClusterRoleBinding for Nodes, all from
    proof_rules. The proof runs after this component (ProofArgs.app_resources)."""

    service_account: k8s.core.v1.ServiceAccount
    roles: dict[str, k8s.rbac.v1.Role]
    bindings: dict[str, k8s.rbac.v1.RoleBinding]
    cluster_role: k8s.rbac.v1.ClusterRole
    cluster_binding: k8s.rbac.v1.ClusterRoleBinding

    def __init__(self, name: str, args: ProofAccessArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:proof:ProofAccess", name, None, opts)
        rules = proof_rules(args.apps, args.client_namespace, args.outside_namespace)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.after))
        self.service_account = k8s.core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=PROOF_SERVICE_ACCOUNT, namespace=PROOF_SERVICE_ACCOUNT_NAMESPACE
            ),
            # No pod runs as it: its tokens are only those the proof's scripts mint.
            automount_service_account_token=False,
            opts=child,
        )
        subject = k8s.rbac.v1.SubjectArgs(
            kind="ServiceAccount", name=PROOF_SERVICE_ACCOUNT, namespace=PROOF_SERVICE_ACCOUNT_NAMESPACE
        )
        self.roles, self.bindings = {}, {}
        for namespace, namespace_rules in rules.namespaced.items():
            self.roles[namespace] = k8s.rbac.v1.Role(
                f"{name}-role-{namespace}",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=PROOF_ROLE, namespace=namespace),
                rules=_policy_rules(namespace_rules),
                opts=child,
            )
            self.bindings[namespace] = k8s.rbac.v1.RoleBinding(
                f"{name}-binding-{namespace}",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=PROOF_ROLE, namespace=namespace),
                role_ref=k8s.rbac.v1.RoleRefArgs(
                    api_group="rbac.authorization.k8s.io", kind="Role", name=PROOF_ROLE
                ),
                subjects=[subject],
                opts=pulumi.ResourceOptions.merge(
                    child, pulumi.ResourceOptions(depends_on=[self.roles[namespace], self.service_account])
                ),
            )
        self.cluster_role = k8s.rbac.v1.ClusterRole(
            f"{name}-cluster-role",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=PROOF_ROLE),
            rules=_policy_rules(rules.cluster),
            opts=child,
        )
        self.cluster_binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-cluster-binding",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=PROOF_ROLE),
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=PROOF_ROLE
            ),
            subjects=[subject],
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(depends_on=[self.cluster_role, self.service_account])
            ),
        )
        self.register_outputs(
            {
                "serviceAccount": self.service_account.metadata.name,
                "namespaces": sorted(rules.namespaced),
            }
        )
