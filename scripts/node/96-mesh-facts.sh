#!/usr/bin/env bash
# Control plane, after the app is deployed: the cluster's view of the app as one JSON document on
# stdout (pods, nodes, the kernel inside each app pod) and the answer an in-mesh client (a pod
# with its own sidecar) gets from httpbin. The program judges it (components/verification.py).
# Each app is given as <namespace>/<deployment>: the Kata app lives in its sandbox namespace, the
# runc twin in a namespace of its own (the sandbox's admission policy refuses runc pods).
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_namespace=""
arg_apps=""
arg_client_image=""
arg_client_runtime_class=""
arg_url=""
arg_timeout_seconds=""
km_parse_args "$@"
km_require_args namespace apps client_image client_runtime_class url timeout_seconds
read -r -a apps <<<"$arg_apps"
export KUBECONFIG=/etc/kubernetes/admin.conf
ns=$arg_namespace
timeout=${arg_timeout_seconds}s

# The namespaces to list pods in: the client's, then each app's, once each.
namespaces=("$ns")
for entry in "${apps[@]}"; do
  [[ $entry =~ ^[^/]+/[^/]+$ ]] || km_die "--apps takes <namespace>/<deployment> entries, got: $entry"
  [[ " ${namespaces[*]} " == *" ${entry%/*} "* ]] || namespaces+=("${entry%/*}")
done

for entry in "${apps[@]}"; do
  app_ns=${entry%/*} app=${entry#*/}
  kubectl -n "$app_ns" rollout status "deployment/$app" --timeout="$timeout" >&2 ||
    km_die "deployment $app (namespace $app_ns) did not roll out within $timeout: $(kubectl -n "$app_ns" get pods -o wide 2>&1)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The in-mesh client: a pod in the injected namespace, so its request leaves through a sidecar.
# It runs in a Kata VM: the namespace is a sandbox, whose admission policy refuses any other
# runtime. The label asks for the sidecar even if the namespace's injection label were gone.
# Made afresh each run, so an old one (its sleep over) is never reused.
kubectl -n "$ns" delete pod mesh-client --ignore-not-found --wait=true >&2
overrides=$(jq -cn --arg runtime "$arg_client_runtime_class" '{apiVersion: "v1", spec: {runtimeClassName: $runtime}}')
kubectl -n "$ns" run mesh-client --image="$arg_client_image" --restart=Never \
  --labels=app=mesh-client,sidecar.istio.io/inject=true --overrides="$overrides" \
  --command -- sleep 3600 >&2 ||
  km_die "could not create the mesh client pod in $ns (kubectl's error above; refused by an admission policy?)"
kubectl -n "$ns" wait --for=condition=Ready pod/mesh-client --timeout="$timeout" >&2 ||
  km_die "the mesh client pod is not Ready: $(kubectl -n "$ns" describe pod mesh-client 2>&1 | tail -n 20)"
kubectl -n "$ns" get pod mesh-client -o json >"$work/client.json"
client_containers=$(jq -r '[.spec.initContainers[]?.name, .spec.containers[].name] | join(" ")' "$work/client.json")
[[ " $client_containers " == *" istio-proxy "* ]] ||
  km_die "the mesh client has no istio-proxy sidecar (its containers: $client_containers): is istiod's injection webhook up?"

response=$(kubectl -n "$ns" exec mesh-client -c mesh-client -- \
  curl -sS --max-time 20 -w '\n%{http_code}' "$arg_url" 2>&1) || true
status=${response##*$'\n'}
[[ $status == 200 ]] || km_die "the in-mesh request to $arg_url answered ${status:-nothing}: ${response%$'\n'*}"
printf '%s' "$status" >"$work/status"
printf '%s' "${response%$'\n'*}" >"$work/body"

# The kernel inside each app's pod: the newest one not being deleted, as the verdict picks it.
echo '{}' >"$work/kernels.json"
for entry in "${apps[@]}"; do
  app_ns=${entry%/*} app=${entry#*/}
  kubectl -n "$app_ns" get pods -l "app=$app" -o json >"$work/app-pods.json"
  pod=$(jq -r --arg app "$app" '[.items[] | select(.metadata.labels.app == $app)
    | select(.metadata.deletionTimestamp == null)] | sort_by(.metadata.creationTimestamp)
    | last | .metadata.name // empty' "$work/app-pods.json")
  [[ -n $pod ]] || continue
  kernel=$(kubectl -n "$app_ns" exec "$pod" -c httpbin -- uname -r 2>/dev/null || true)
  jq --arg pod "$pod" --arg kernel "$kernel" '. + {($pod): $kernel}' "$work/kernels.json" >"$work/next.json"
  mv "$work/next.json" "$work/kernels.json"
done

# Documents go through files, not arguments: a big cluster's JSON outgrows an argument's limit.
pod_lists=()
for index in "${!namespaces[@]}"; do
  kubectl -n "${namespaces[$index]}" get pods -o json >"$work/pods-$index.json"
  pod_lists+=("$work/pods-$index.json")
done
jq -s '{apiVersion: "v1", kind: "List", items: (map(.items) | add)}' "${pod_lists[@]}" >"$work/pods.json"
kubectl get nodes -o json >"$work/nodes.json"
jq -n \
  --slurpfile pods "$work/pods.json" \
  --slurpfile nodes "$work/nodes.json" \
  --slurpfile kernels "$work/kernels.json" \
  --rawfile status "$work/status" \
  --rawfile body "$work/body" \
  '{pods: $pods[0], nodes: $nodes[0], podKernels: $kernels[0], request: {status: $status, body: $body}}'
