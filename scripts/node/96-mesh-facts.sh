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
    km_die "deployment $app did not roll out within $timeout: $(kubectl -n "$ns" get pods -o wide 2>&1)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The in-mesh client: a pod in the injected namespace, so its request leaves through a sidecar.
# Made afresh each run, so an old one (its sleep over) is never reused.
kubectl -n "$ns" delete pod mesh-client --ignore-not-found --wait=true >&2
kubectl -n "$ns" run mesh-client --image="$arg_client_image" --restart=Never \
  --labels=app=mesh-client --command -- sleep 3600 >&2
kubectl -n "$ns" wait --for=condition=Ready pod/mesh-client --timeout="$timeout" >&2 ||
  km_die "the mesh client pod is not Ready: $(kubectl -n "$ns" describe pod mesh-client 2>&1 | tail -n 20)"

response=$(kubectl -n "$ns" exec mesh-client -c mesh-client -- \
  curl -sS --max-time 20 -w '\n%{http_code}' "$arg_url" 2>&1) || true
status=${response##*$'\n'}
[[ $status == 200 ]] || km_die "the in-mesh request to $arg_url answered ${status:-nothing}: ${response%$'\n'*}"
printf '%s' "$status" >"$work/status"
printf '%s' "${response%$'\n'*}" >"$work/body"

# The kernel inside each app's pod: the newest one not being deleted, as the verdict picks it.
echo '{}' >"$work/kernels.json"
for app in "${apps[@]}"; do
  kubectl -n "$ns" get pods -l "app=$app" -o json >"$work/app-pods.json"
  pod=$(jq -r --arg app "$app" '[.items[] | select(.metadata.labels.app == $app)
    | select(.metadata.deletionTimestamp == null)] | sort_by(.metadata.creationTimestamp)
    | last | .metadata.name // empty' "$work/app-pods.json")
  [[ -n $pod ]] || continue
  kernel=$(kubectl -n "$ns" exec "$pod" -c httpbin -- uname -r 2>/dev/null || true)
  jq --arg pod "$pod" --arg kernel "$kernel" '. + {($pod): $kernel}' "$work/kernels.json" >"$work/next.json"
  mv "$work/next.json" "$work/kernels.json"
done

# Documents go through files, not arguments: a big cluster's JSON outgrows an argument's limit.
kubectl -n "$ns" get pods -o json >"$work/pods.json"
kubectl get nodes -o json >"$work/nodes.json"
jq -n \
  --slurpfile pods "$work/pods.json" \
  --slurpfile nodes "$work/nodes.json" \
  --slurpfile kernels "$work/kernels.json" \
  --rawfile status "$work/status" \
  --rawfile body "$work/body" \
  '{pods: $pods[0], nodes: $nodes[0], podKernels: $kernels[0], request: {status: $status, body: $body}}'
