#!/usr/bin/env bash
# Control plane, after the app is deployed: the cluster's view of the app as one JSON document on
# stdout (pods, nodes, the kernel inside each app pod) and the answer an in-mesh client (a pod
# with its own sidecar) gets from httpbin. The program judges it (components/verification.py).
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_namespace=""
arg_apps=""
arg_client_image=""
arg_url=""
arg_timeout_seconds=""
km_parse_args "$@"
km_require_args namespace apps client_image url timeout_seconds
read -r -a apps <<<"$arg_apps"
export KUBECONFIG=/etc/kubernetes/admin.conf
ns=$arg_namespace
timeout=${arg_timeout_seconds}s

for app in "${apps[@]}"; do
  kubectl -n "$ns" rollout status "deployment/$app" --timeout="$timeout" >&2 ||
    km_log "deployment $app did not roll out; reporting what there is"
done

# The in-mesh client: a pod in the injected namespace, so its request leaves through a sidecar.
if ! kubectl -n "$ns" get pod mesh-client >/dev/null 2>&1; then
  kubectl -n "$ns" run mesh-client --image="$arg_client_image" --restart=Never \
    --labels=app=mesh-client --command -- sleep 86400 >&2
fi
kubectl -n "$ns" wait --for=condition=Ready pod/mesh-client --timeout="$timeout" >&2 ||
  km_log "the mesh client pod is not Ready"

response=$(kubectl -n "$ns" exec mesh-client -c mesh-client -- \
  curl -sS --max-time 20 -w '\n%{http_code}' "$arg_url" 2>&1) || true
status=${response##*$'\n'}
body=${response%$'\n'*}

kernels="{}"
for app in "${apps[@]}"; do
  pod=$(kubectl -n "$ns" get pods -l "app=$app" -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
  [[ -n $pod ]] || continue
  kernel=$(kubectl -n "$ns" exec "$pod" -c httpbin -- uname -r 2>/dev/null || true)
  kernels=$(jq --arg pod "$pod" --arg kernel "$kernel" '. + {($pod): $kernel}' <<<"$kernels")
done

jq -n \
  --argjson pods "$(kubectl -n "$ns" get pods -o json)" \
  --argjson nodes "$(kubectl get nodes -o json)" \
  --argjson kernels "$kernels" \
  --arg status "$status" \
  --arg body "$body" \
  '{pods: $pods, nodes: $nodes, podKernels: $kernels, request: {status: $status, body: $body}}'
