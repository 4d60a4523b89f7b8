#!/usr/bin/env bash
# Any node, after the app is deployed: what this node's runtime says about the app's pods, as one
# JSON document on stdout. The program judges it (components/verification.py); this only gathers:
# crictl's view of each pod sandbox (runtime handler), the processes running (Kata's shim, QEMU,
# virtiofsd beside runc's shims), the node's kernel, and each pod's cgroup memory.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_namespace=""
arg_cgroup_root=""
km_parse_args "$@"
km_require_args namespace cgroup_root

pods=$(crictl pods --namespace "$arg_namespace" --state ready -o json)
inspected="{}"
memory="{}"
for id in $(jq -r '.items[].id' <<<"$pods"); do
  inspected=$(jq --arg id "$id" --argjson doc "$(crictl inspectp -o json "$id")" '. + {($id): $doc}' <<<"$inspected")
  uid=$(jq -r --arg id "$id" '.items[] | select(.id == $id) | .metadata.uid' <<<"$pods")
  # The pod's cgroup (systemd driver); Kata runs its VM inside it, so this counts the VM too.
  cgroup=$(find "$arg_cgroup_root" -maxdepth 2 -type d -name "*pod${uid//-/_}.slice" -print -quit 2>/dev/null || true)
  if [[ -n $cgroup && -r $cgroup/memory.current ]]; then
    memory=$(jq --arg uid "$uid" --argjson bytes "$(<"$cgroup/memory.current")" '. + {($uid): $bytes}' <<<"$memory")
  fi
done

jq -n \
  --arg node "$(hostname)" \
  --arg kernel "$(uname -r)" \
  --argjson pods "$pods" \
  --argjson inspect "$inspected" \
  --argjson memory "$memory" \
  --arg processes "$(ps -e -o args=)" \
  '{node: $node, kernel: $kernel, pods: $pods, inspect: $inspect, memory: $memory, processes: $processes}'
