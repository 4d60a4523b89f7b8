#!/usr/bin/env bash
# First control plane, with 3 or more control planes: the highly available control plane as one
# JSON document on stdout. The program judges it (components/verification.py); this only gathers:
# the control-plane Nodes with their Ready condition, etcd's members (`member list`) and each
# member's health (`endpoint health --cluster`), both asked of this node's own etcd. A command
# that fails is recorded in the document with its error, so the verdict can say what is wrong.
# Until everything looks settled (a control plane that just joined may still be coming up), it
# gathers again, --attempts times at most, 10 seconds apart.
# kubectl runs as the proof's ServiceAccount (--proof-service-account in
# --proof-service-account-namespace, allowed to list Nodes; components/proof_access.py), through a
# kubeconfig with a short-lived token in a private folder removed at the end; admin.conf only mints
# that token.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_control_planes=""
arg_proof_service_account=""
arg_proof_service_account_namespace=""
arg_attempts=""
km_parse_args "$@"
km_require_args control_planes proof_service_account proof_service_account_namespace attempts
[[ $arg_attempts =~ ^[1-9][0-9]*$ ]] || km_die "--attempts must be a positive number, got: $arg_attempts"
read -r -a control_planes <<<"$arg_control_planes"

# A private folder (mktemp -d: 0700) for the documents and the kubeconfig, removed at the end.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export KUBECONFIG=$work/proof.kubeconfig

# The kubeconfig, minted at the first attempt whose API server answers (a token valid for every
# attempt, a minute at most each, and ten minutes more): one that does not answer is recorded as
# the Nodes' error, while etcd is still asked. In a subshell, so that its failure ends nothing.
have_kubeconfig() {
  [[ -s $KUBECONFIG ]] || (km_service_account_kubeconfig "$arg_proof_service_account" \
    "$arg_proof_service_account_namespace" $((arg_attempts * 60 + 600)) "$KUBECONFIG")
}

# What a failed command said: etcdctl's own "Error: ..." line (it logs warnings as JSON before
# it), else the last line of its stderr.
error_of() {
  local file=$1 line
  line=$(grep -E '^(Error|error): ' "$file" | tail -n 1 || true)
  [[ -n $line ]] || line=$(grep -v '^[[:space:]]*$' "$file" | tail -n 1 || true)
  printf '%s' "${line:-exit status $2}"
}

# is_json FILE TEST: FILE holds JSON passing TEST (jq 1.6's -e passes an empty file).
is_json() { [[ -s $1 ]] && jq -e "$2" "$1" >/dev/null 2>&1; }

# Each part as {items: [...], error: null or "what failed"}.
gather_nodes() {
  local code=0
  if ! have_kubeconfig 2>"$work/nodes.err"; then
    jq -n --arg error "kubectl create token: $(error_of "$work/nodes.err" 1)" \
      '{items: [], error: $error}' >"$work/nodes.json"
    return 0
  fi
  kubectl get nodes -l node-role.kubernetes.io/control-plane -o json >"$work/nodes.raw" 2>"$work/nodes.err" || code=$?
  if ((code == 0)) && is_json "$work/nodes.raw" '.items | type == "array"'; then
    jq '{items: [.items[] | {name: .metadata.name}
      + ((.status.conditions // []) | map(select(.type == "Ready")) | .[0] // {}
         | {ready: (.status // "Unknown"), reason: (.reason // ""), message: (.message // "")})],
      error: null}' "$work/nodes.raw" >"$work/nodes.json"
  else
    jq -n --arg error "kubectl get nodes: $(error_of "$work/nodes.err" "$code")" \
      '{items: [], error: $error}' >"$work/nodes.json"
  fi
}

# `member list -w simple`: "ID, status, name, peer URLs, client URLs, is learner", URLs joined by
# commas. Parsed as text: the JSON output's member IDs are 64-bit numbers, which jq rounds.
gather_members() {
  local code=0
  ( km_etcdctl member list -w simple ) >"$work/members.raw" 2>"$work/members.err" || code=$?
  if ((code == 0)); then
    jq -R -s '{items: [split("\n")[] | select(length > 0) | split(", ")
      | {id: .[0], status: .[1], name: .[2],
         peerURLs: (.[3] | split(",") | map(select(length > 0))),
         clientURLs: (.[4] | split(",") | map(select(length > 0))),
         isLearner: (.[5] == "true")}],
      error: null}' "$work/members.raw" >"$work/members.json"
  else
    jq -n --arg error "etcdctl member list: $(error_of "$work/members.err" "$code")" \
      '{items: [], error: $error}' >"$work/members.json"
  fi
}

# `endpoint health --cluster -w json` exits 1 when any member is unhealthy and still prints every
# member's answer: the answers are kept either way, the error too.
gather_health() {
  local code=0 error=""
  ( km_etcdctl endpoint health --cluster -w json ) >"$work/health.raw" 2>"$work/health.err" || code=$?
  ((code == 0)) || error="etcdctl endpoint health: $(error_of "$work/health.err" "$code")"
  if is_json "$work/health.raw" 'type == "array"'; then
    jq --arg error "$error" '{items: [.[] | {endpoint, health, took, error: (.error // "")}],
      error: (if $error == "" then null else $error end)}' "$work/health.raw" >"$work/health.json"
  else
    jq -n --arg error "${error:-etcdctl endpoint health printed no answers}" \
      '{items: [], error: $error}' >"$work/health.json"
  fi
}

document() {
  jq -n \
    --arg names "$arg_control_planes" \
    --argjson attempt "$1" \
    --slurpfile nodes "$work/nodes.json" \
    --slurpfile members "$work/members.json" \
    --slurpfile health "$work/health.json" \
    '{controlPlanes: ($names | split(" ") | map(select(length > 0))), attempts: $attempt,
      nodes: $nodes[0], members: $members[0], health: $health[0]}'
}

# Settled: every control plane's Node Ready, etcd's started voting members named exactly as the
# control planes, every answer healthy. Only decides whether to look again; the program judges.
settled() {
  jq -e '(.controlPlanes | sort) as $want
    | ($want - [.nodes.items[] | select(.ready == "True") | .name] | length == 0)
    and ([.members.items[] | select(.status == "started" and (.isLearner | not)) | .name] | sort) == $want
    and (.members.items | length) == ($want | length)
    and .health.error == null and (.health.items | length) > 0 and all(.health.items[]; .health)' \
    "$work/doc.json" >/dev/null
}

for ((attempt = 1; ; attempt++)); do
  gather_nodes
  gather_members
  gather_health
  document "$attempt" >"$work/doc.json"
  settled && break
  if ((attempt >= arg_attempts)); then
    km_log "the control plane did not look settled after $attempt attempts; reporting what it shows"
    break
  fi
  km_log "control planes ${control_planes[*]}: not settled yet (attempt $attempt of $arg_attempts)"
  sleep 10
done
cat "$work/doc.json"
