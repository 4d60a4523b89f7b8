#!/usr/bin/env bash
# First control plane, at the start of one node's turn in a rollout: refuses a Kubernetes version
# kubeadm cannot upgrade to from the running one (read from the cluster, kubeadm-config), before
# anything changes: a downgrade, or a skipped minor. Then, when the node needs the rollout (--needed,
# 83-rollout-check.sh's answer on the node), cordons it and drains it: evictions, which respect
# PodDisruptionBudgets, bounded by --timeout-seconds. A drain that does not finish leaves the node
# cordoned and says how to look and how to resume.
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
export KUBECONFIG=$km_admin_kubeconfig

live=$(km_cluster_kubernetes_version)
km_check_kubernetes_upgrade "$live" "$arg_kubernetes_version"

km_require_needed "$arg_needed"
if [[ $arg_needed == current ]]; then
  km_log "$arg_node_name is at rollout ${arg_rollout:0:12} already: not drained"
  exit 0
fi
# Marked first: 89-rollout-release.sh uncordons a node the rollout cordoned even when a later check
# says it is current (a release that timed out), and only such a node.
kubectl annotate node "$arg_node_name" --overwrite "kata-mesh.io/rollout-cordoned=${arg_rollout:0:12}" >&2 ||
  km_die "could not mark $arg_node_name for the rollout; nothing was changed"
kubectl cordon "$arg_node_name" >&2 || km_die "could not cordon $arg_node_name; nothing was changed"
if ! kubectl drain "$arg_node_name" --ignore-daemonsets --delete-emptydir-data \
  --timeout="${arg_timeout_seconds}s" >&2; then
  km_die "could not drain $arg_node_name within ${arg_timeout_seconds}s (a PodDisruptionBudget that allows no eviction, or a pod that does not stop): it stays cordoned. See kubectl get pods -A -o wide --field-selector spec.nodeName=$arg_node_name and kubectl get pdb -A; then run pulumi up again, which resumes the rollout at $arg_node_name"
fi
km_log "$arg_node_name is cordoned and drained"
