#!/usr/bin/env bash
# Control plane: a fresh bootstrap token for one worker, printed as its join command. A stale,
# NotReady Node of the same name (its VM was replaced) is removed first so the new VM can join.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_node_name=""
arg_ttl=""
km_parse_args "$@"
km_require_args node_name ttl
export KUBECONFIG=/etc/kubernetes/admin.conf

ready=$(kubectl get node "$arg_node_name" --ignore-not-found \
  -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')
if [[ -n $ready && $ready != True ]]; then
  km_log "removing stale Node $arg_node_name (Ready=$ready) before it joins again"
  kubectl delete node "$arg_node_name" --wait=true --timeout=60s >&2
fi
kubeadm token create --ttl "$arg_ttl" --description "kata-mesh join for $arg_node_name" --print-join-command
