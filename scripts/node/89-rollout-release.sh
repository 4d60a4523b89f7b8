#!/usr/bin/env bash
# First control plane, at the end of one node's turn in a rollout: once the node is Ready again with
# its kubelet at --kubernetes-version (within --timeout-seconds), it is uncordoned and its
# kata-mesh.io/rollout-cordoned mark (84-rollout-drain.sh's) removed. Nothing when the node needed no
# rollout (--needed current) and carries no such mark. A node that does not come back stays
# cordoned; the message says how to look and how to resume.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_node_name=""
arg_needed=""
arg_kubernetes_version=""
arg_rollout=""
arg_timeout_seconds=""
km_parse_args "$@"
km_require_args node_name kubernetes_version rollout timeout_seconds
km_require_rollout "$arg_rollout"
km_require_timeout_seconds "$arg_timeout_seconds"
km_require_needed "$arg_needed"
export KUBECONFIG=$km_admin_kubeconfig
if [[ $arg_needed == current ]]; then
  # Current, but cordoned by a rollout whose release did not finish: released now, or failed again.
  marked=$(kubectl get node "$arg_node_name" -o jsonpath='{.metadata.annotations.kata-mesh\.io/rollout-cordoned}') ||
    km_die "could not read Node $arg_node_name"
  if [[ -z $marked ]]; then
    km_log "$arg_node_name needed no rollout to ${arg_rollout:0:12}: nothing to release"
    exit 0
  fi
  km_log "$arg_node_name is current, but a rollout cordoned it ($marked) and did not release it: releasing it now"
fi

want=v${arg_kubernetes_version#v}
deadline=$((SECONDS + arg_timeout_seconds))
while :; do
  seen=$(kubectl get node "$arg_node_name" \
    -o jsonpath='{.status.nodeInfo.kubeletVersion} {.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) || seen=""
  [[ $seen == "$want True" ]] && break
  ((SECONDS < deadline)) ||
    km_die "$arg_node_name is not Ready with kubelet $want after ${arg_timeout_seconds}s (it reports: ${seen:-nothing}); it stays cordoned. See kubectl describe node $arg_node_name and, on the node, journalctl -u kubelet; then run pulumi up again, which resumes the rollout at $arg_node_name"
  sleep 5
done
kubectl uncordon "$arg_node_name" >&2 || km_die "could not uncordon $arg_node_name; run pulumi up again"
kubectl annotate node "$arg_node_name" kata-mesh.io/rollout-cordoned- >&2 ||
  km_die "uncordoned $arg_node_name, but could not remove its kata-mesh.io/rollout-cordoned mark; run pulumi up again"
km_log "$arg_node_name is Ready with kubelet $want and uncordoned"
