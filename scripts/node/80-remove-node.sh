#!/usr/bin/env bash
# Control plane, when a worker leaves the settings: drain it and delete its Node, best effort and
# bounded in time, so that removing a worker (or destroying the stack) is never blocked by it.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_node_name=""
arg_timeout_seconds=""
km_parse_args "$@"
km_require_args node_name timeout_seconds
export KUBECONFIG=/etc/kubernetes/admin.conf

if [[ ! -f $KUBECONFIG ]]; then
  km_log "no cluster on this node; nothing to drain"
  exit 0
fi
timeout "$arg_timeout_seconds" kubectl drain "$arg_node_name" --ignore-daemonsets \
  --delete-emptydir-data --force --timeout="${arg_timeout_seconds}s" ||
  km_log "drain of $arg_node_name did not finish; deleting it anyway"
timeout 60 kubectl delete node "$arg_node_name" --ignore-not-found --wait=false ||
  km_log "could not delete Node $arg_node_name; remove it with kubectl delete node"
exit 0
