#!/usr/bin/env bash
# Control plane: waits until every node of the stack is registered and Ready (the pod network is
# up), so that what is deployed next can schedule.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_node_names=""
arg_timeout_seconds=""
km_parse_args "$@"
km_require_args node_names timeout_seconds
read -r -a node_names <<<"$arg_node_names"
export KUBECONFIG=/etc/kubernetes/admin.conf

deadline=$((SECONDS + arg_timeout_seconds))
for node in "${node_names[@]}"; do
  until kubectl get node "$node" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || km_die "Node $node never registered: $(kubectl get nodes -o wide 2>&1)"
    sleep 5
  done
done
remaining=$((deadline - SECONDS))
((remaining > 0)) || remaining=1
kubectl wait --for=condition=Ready "${node_names[@]/#/node/}" --timeout="${remaining}s" >&2 ||
  km_die "not every node is Ready: $(kubectl get nodes -o wide 2>&1)"
kubectl get nodes -o wide >&2
