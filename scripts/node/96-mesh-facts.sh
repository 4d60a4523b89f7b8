#!/usr/bin/env bash
# Control plane, after the app is deployed: the cluster's view of the app as one JSON document on
# stdout (pods, nodes, the kernel inside each app pod) and the answer an in-mesh client (a pod
# with its own sidecar) gets from httpbin; then what the hardening does to three attempts that
# must fail (a runc pod in the sandbox namespace, the metadata server asked from the in-mesh Kata
# client, a plaintext request to httpbin from a pod outside the mesh), each recorded as it went,
# under "hardening". The program judges it all (components/verification.py).
# Each app is given as <namespace>/<deployment>: the Kata app lives in its sandbox namespace, the
# runc twin in a namespace of its own (the sandbox's admission policy refuses runc pods).
# Every pod made here is deleted when the script ends, whether it succeeded or not.
# Every kubectl call runs as the proof's ServiceAccount (--proof-service-account in
# --proof-service-account-namespace; components/proof_access.py grants it what these calls need),
# through a kubeconfig with a short-lived token in a private folder removed at the end; admin.conf
# only mints that token.
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
arg_metadata_url=""
arg_metadata_host=""
arg_outside_namespace=""
arg_proof_service_account=""
arg_proof_service_account_namespace=""
km_parse_args "$@"
km_require_args namespace apps client_image client_runtime_class url timeout_seconds \
  metadata_url metadata_host outside_namespace proof_service_account proof_service_account_namespace
[[ $arg_timeout_seconds =~ ^[1-9][0-9]*$ ]] || km_die "--timeout-seconds must be a positive number, got: $arg_timeout_seconds"
read -r -a apps <<<"$arg_apps"
ns=$arg_namespace
timeout=${arg_timeout_seconds}s

# The namespaces to list pods in: the client's, then each app's, once each.
namespaces=("$ns")
for entry in "${apps[@]}"; do
  [[ $entry =~ ^[^/]+/[^/]+$ ]] || km_die "--apps takes <namespace>/<deployment> entries, got: $entry"
  [[ " ${namespaces[*]} " == *" ${entry%/*} "* ]] || namespaces+=("${entry%/*}")
done

# A private folder (mktemp -d: 0700) for the documents and the kubeconfigs, removed at the end.
work=$(mktemp -d)
# The pods this script makes, as <namespace>/<name>: each is listed before it is made, so one made
# only in part is deleted too.
made=()
account=$arg_proof_service_account account_ns=$arg_proof_service_account_namespace
cleanup() {
  local pod
  if ((${#made[@]})); then
    # A token of its own for the deletes, valid for all of them: the run's may be near its end
    # after long waits. In a subshell: a failure to mint must not end the cleanup.
    if (km_service_account_kubeconfig "$account" "$account_ns" $((${#made[@]} * arg_timeout_seconds + 600)) \
      "$work/cleanup.kubeconfig"); then
      export KUBECONFIG=$work/cleanup.kubeconfig
    else
      km_log "could not mint a token for the cleanup; deleting with the run's"
    fi
  fi
  for pod in "${made[@]}"; do
    kubectl -n "${pod%/*}" delete pod "${pod#*/}" --ignore-not-found --wait=true --grace-period=1 \
      --timeout="$timeout" >&2 || km_log "could not delete pod $pod: delete it by hand"
  done
  rm -rf "$work"
}
trap cleanup EXIT
# Valid for every bounded wait below (each rollout, the two clients' readiness) and ten minutes
# more.
km_service_account_kubeconfig "$account" "$account_ns" $(((${#apps[@]} + 2) * arg_timeout_seconds + 600)) \
  "$work/proof.kubeconfig"
export KUBECONFIG=$work/proof.kubeconfig

for entry in "${apps[@]}"; do
  app_ns=${entry%/*} app=${entry#*/}
  kubectl -n "$app_ns" rollout status "deployment/$app" --timeout="$timeout" >&2 ||
    km_die "deployment $app (namespace $app_ns) did not roll out within $timeout: $(kubectl -n "$app_ns" get pods -o wide 2>&1)"
done

# The in-mesh client: a pod in the injected namespace, so its request leaves through a sidecar.
# It runs in a Kata VM: the namespace is a sandbox, whose admission policy refuses any other
# runtime. The label asks for the sidecar even if the namespace's injection label were gone.
# Made afresh each run, so an old one (its sleep over) is never reused.
kubectl -n "$ns" delete pod mesh-client --ignore-not-found --wait=true >&2
made+=("$ns/mesh-client")
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

# --- The hardening: three attempts that must fail, each recorded as it went ---------------------

# Asked inside a pod (its shell): curl's own words, then the HTTP status (000: no answer) and
# curl's exit code, each on a line of its own, so a kubectl exec that could not run curl at all is
# not mistaken for curl failing. The body is thrown away: a metadata server that answered would
# have sent the node's access token, which must not end up in the report.
# shellcheck disable=SC2016 # expanded by the pod's shell
probe_script='curl -sS -o /dev/null -w "http_code=%{http_code}\n" "$@" 2>&1; echo "curl_exit=$?"'
probe_json() {
  jq -n --arg said "$1" '($said | split("\n")) as $lines | {
    status: ([$lines[] | capture("^http_code=(?<code>[0-9]+)$").code] | last // ""),
    curlExit: ([$lines[] | capture("^curl_exit=(?<code>[0-9]+)$").code | tonumber] | last // null),
    output: ([$lines[] | select(test("^(http_code|curl_exit)=") | not)] | join("\n") | sub("\\s+$"; ""))
  }'
}

# 1. A runc pod (no runtimeClassName) in the sandbox namespace: its admission policy must refuse
# it. A server-side dry run goes through every admission step, Istio's injection included, and
# stores nothing. kubectl's exit status and words are kept whatever they are.
runc_exit=0
runc_output=$(kubectl -n "$ns" run runc-probe --image="$arg_client_image" --restart=Never \
  --labels=app=runc-probe --dry-run=server --command -- sleep 1 2>&1) || runc_exit=$?
jq -n --arg ns "$ns" --arg output "$runc_output" --argjson exit "$runc_exit" \
  '{namespace: $ns, pod: "runc-probe", exitCode: $exit, output: $output}' >"$work/runc-probe.json"

# 2. The metadata server, asked for the node service account's token from the in-mesh Kata
# client: its request leaves through its sidecar (the mesh's outbound policy, ALLOW_ANY, passes it
# on from the pod's address) and the node drops it, so no answer may come back, not even one made
# up by the sidecar. Its name still resolves (DNS stays open), kept as a detail.
metadata_output=$(kubectl -n "$ns" exec mesh-client -c mesh-client -- \
  sh -c "$probe_script" probe -m 5 -H 'Metadata-Flavor: Google' "$arg_metadata_url" 2>&1) || true
resolved=$(kubectl -n "$ns" exec mesh-client -c mesh-client -- getent hosts "$arg_metadata_host" 2>/dev/null) || true
probe_json "$metadata_output" | jq --arg from "$ns/mesh-client" --arg url "$arg_metadata_url" \
  --arg host "$arg_metadata_host" --arg resolved "$resolved" \
  '{from: $from, url: $url} + . + {dns: {name: $host, answer: ($resolved | gsub("\\s+"; " ") | sub(" $"; ""))}}' \
  >"$work/metadata.json"

# 3. A plaintext request to httpbin from a pod outside the mesh: no sidecar (the label says so
# whatever the namespace's injection label), runc, in a namespace that is no sandbox. STRICT
# mutual TLS makes httpbin's sidecar reset the connection. The pod meets Pod Security's
# `restricted` level (it asks for nothing), whatever the namespace enforces. The overrides are a
# strategic merge: kubectl's default (a JSON merge patch) would replace the container list whole,
# dropping the image and command `kubectl run` put there.
outside_ns=$arg_outside_namespace
outside=plaintext-client
kubectl -n "$outside_ns" delete pod "$outside" --ignore-not-found --wait=true >&2
made+=("$outside_ns/$outside")
outside_overrides=$(jq -cn --arg name "$outside" '{apiVersion: "v1", spec: {
  automountServiceAccountToken: false,
  securityContext: {runAsNonRoot: true, runAsUser: 100, runAsGroup: 101, seccompProfile: {type: "RuntimeDefault"}},
  containers: [{name: $name, securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: ["ALL"]}}}]
}}')
kubectl -n "$outside_ns" run "$outside" --image="$arg_client_image" --restart=Never \
  --labels="app=$outside,sidecar.istio.io/inject=false" --override-type=strategic --overrides="$outside_overrides" \
  --command -- sleep 3600 >&2 ||
  km_die "could not create the plaintext client pod in $outside_ns (kubectl's error above)"
kubectl -n "$outside_ns" wait --for=condition=Ready "pod/$outside" --timeout="$timeout" >&2 ||
  km_die "the plaintext client pod ($outside_ns/$outside) is not Ready: $(kubectl -n "$outside_ns" describe pod "$outside" 2>&1 | tail -n 20)"
outside_containers=$(kubectl -n "$outside_ns" get pod "$outside" -o json |
  jq -r '[.spec.initContainers[]?.name, .spec.containers[].name] | join(" ")') ||
  km_die "could not read the plaintext client pod ($outside_ns/$outside)"
plaintext_output=$(kubectl -n "$outside_ns" exec "$outside" -c "$outside" -- \
  sh -c "$probe_script" probe -m 10 "$arg_url" 2>&1) || true
probe_json "$plaintext_output" | jq --arg from "$outside_ns/$outside" --arg url "$arg_url" \
  --arg containers "$outside_containers" \
  '{from: $from, url: $url, sidecar: ($containers | split(" ") | any(. == "istio-proxy"))} + .' \
  >"$work/plaintext.json"

# The kernel inside each app's pod: the newest one not being deleted, as the verdict picks it.
echo '{}' >"$work/kernels.json"
for entry in "${apps[@]}"; do
  app_ns=${entry%/*} app=${entry#*/}
  kubectl -n "$app_ns" get pods -l "app=$app" -o json >"$work/app-pods.json"
  pod=$(jq -r --arg app "$app" '[.items[] | select(.metadata.labels.app == $app)
    | select(.metadata.deletionTimestamp == null)] | sort_by(.metadata.creationTimestamp, .metadata.name)
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
  --slurpfile runc "$work/runc-probe.json" \
  --slurpfile metadata "$work/metadata.json" \
  --slurpfile plaintext "$work/plaintext.json" \
  '{pods: $pods[0], nodes: $nodes[0], podKernels: $kernels[0], request: {status: $status, body: $body},
    hardening: {runcProbe: $runc[0], metadata: $metadata[0], plaintext: $plaintext[0]}}'
