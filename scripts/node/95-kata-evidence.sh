#!/usr/bin/env bash
# Any node, after the app is deployed: what this node's runtime says about the pods of the app's
# namespaces (the Kata app's and the runc twin's), as one JSON document on stdout. The program
# judges it (components/verification.py); this only gathers: crictl's view of each pod sandbox
# (runtime handler), the processes running (Kata's shim, QEMU, virtiofsd beside runc's shims), the
# node's kernel, each pod's cgroup memory, and Kata's version (the first line of
# `kata-runtime --version`, "kata-runtime  : <version>"; empty where kata-runtime is missing).
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_namespaces=""
arg_cgroup_root=""
km_parse_args "$@"
km_require_args namespaces cgroup_root

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Documents go through files, not arguments: they can outgrow an argument's size limit.
# Only the sandboxes that are ready (crictl lists stopped ones too otherwise), of the namespaces
# asked for, compared whole (crictl's own --namespace filter is a pattern, and one app's namespace
# name may begin another's).
crictl pods --state ready -o json >"$work/all-pods.json"
jq --arg namespaces "$arg_namespaces" '($namespaces | split(" ") | map(select(. != ""))) as $wanted
  | .items |= map(select(.metadata.namespace as $ns | any($wanted[]; . == $ns)))' \
  "$work/all-pods.json" >"$work/pods.json"
echo '{}' >"$work/inspect.json"
echo '{}' >"$work/memory.json"
for id in $(jq -r '.items[].id' "$work/pods.json"); do
  crictl inspectp -o json "$id" >"$work/sandbox.json"
  jq --arg id "$id" --slurpfile doc "$work/sandbox.json" '. + {($id): $doc[0]}' "$work/inspect.json" >"$work/next.json"
  mv "$work/next.json" "$work/inspect.json"
  uid=$(jq -r --arg id "$id" '.items[] | select(.id == $id) | .metadata.uid' "$work/pods.json")
  # The pod's cgroup (systemd driver); Kata runs its VM inside it, so this counts the VM too.
  cgroup=$(find "$arg_cgroup_root" -maxdepth 2 -type d -name "*pod${uid//-/_}.slice" -print -quit 2>/dev/null || true)
  if [[ -n $cgroup && -r $cgroup/memory.current ]]; then
    jq --arg uid "$uid" --argjson bytes "$(<"$cgroup/memory.current")" '. + {($uid): $bytes}' \
      "$work/memory.json" >"$work/next.json"
    mv "$work/next.json" "$work/memory.json"
  fi
done
ps -e -o args= >"$work/processes"
kata_runtime=$(kata-runtime --version 2>/dev/null) || kata_runtime=""
kata_runtime=${kata_runtime%%$'\n'*}

jq -n \
  --arg node "$(hostname)" \
  --arg kernel "$(uname -r)" \
  --slurpfile pods "$work/pods.json" \
  --slurpfile inspect "$work/inspect.json" \
  --slurpfile memory "$work/memory.json" \
  --rawfile processes "$work/processes" \
  --arg kataRuntime "$kata_runtime" \
  '{node: $node, kernel: $kernel, pods: $pods[0], inspect: $inspect[0], memory: $memory[0], processes: $processes,
    kataRuntime: $kataRuntime}'
