#!/usr/bin/env bash
# First control plane, after an Istio upgrade (Helm upgraded istiod's chart): every Deployment of
# the meshed apps' namespaces (--namespaces) restarted with `kubectl rollout restart`, so that
# their pods come back with the sidecar the new istiod injects, then each waited for with
# `kubectl rollout status`, each wait bounded by --timeout-seconds (all are restarted first, so they
# roll side by side). --istio-version is the version they restart for (said in the log).
# An action, not a state: every run restarts again. The program runs it only when the Istio
# version (or the namespaces) change, never on a first deploy (components/mesh_rollout.py).
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_namespaces=""
arg_istio_version=""
arg_timeout_seconds=""
km_parse_args "$@"
km_require_args namespaces istio_version timeout_seconds
km_require_timeout_seconds "$arg_timeout_seconds"
read -r -a namespaces <<<"$arg_namespaces"
for ns in "${namespaces[@]}"; do
  # A DNS label, as Kubernetes names namespaces.
  [[ $ns =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || km_die "--namespaces takes namespace names, got: $ns"
done
export KUBECONFIG=$km_admin_kubeconfig
timeout=${arg_timeout_seconds}s

# 1. Every Deployment of each namespace restarted (a new pod template annotation; the pods roll
# out under the Deployment's own strategy and disruption budget).
restarted=()
for ns in "${namespaces[@]}"; do
  names=$(kubectl -n "$ns" get deployments -o 'jsonpath={.items[*].metadata.name}') ||
    km_die "could not list the Deployments of namespace $ns"
  read -r -a deployments <<<"$names"
  if ((${#deployments[@]} == 0)); then
    km_log "namespace $ns has no Deployment: nothing to restart there"
    continue
  fi
  for deployment in "${deployments[@]}"; do
    kubectl -n "$ns" rollout restart "deployment/$deployment" >&2 ||
      km_die "could not restart deployment/$deployment (namespace $ns) for Istio $arg_istio_version"
    restarted+=("$ns/$deployment")
  done
done

# 2. Each one waited for: its new pods ready, its old ones gone.
for entry in "${restarted[@]}"; do
  ns=${entry%/*} deployment=${entry#*/}
  kubectl -n "$ns" rollout status "deployment/$deployment" --timeout="$timeout" >&2 ||
    km_die "deployment/$deployment (namespace $ns) did not finish restarting onto Istio $arg_istio_version's sidecar within $timeout: $(kubectl -n "$ns" get pods -o wide 2>&1). See kubectl -n $ns describe deployment/$deployment; once fixed, run pulumi up again (or kubectl -n $ns rollout restart deployment/$deployment)"
done
km_log "restarted ${#restarted[@]} Deployment(s) for Istio $arg_istio_version: ${restarted[*]}"
