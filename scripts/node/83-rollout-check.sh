#!/usr/bin/env bash
# A live node, at the start of its turn in a rollout (a change of kubernetesVersion, kataVersion, a
# pin in components/versions.py, or the containerd or Kata config): prints `needed` when this node
# is not at --rollout yet, `current` when it is. --marker holds the rollout a node was last brought
# to: its provisioning writes it (a new VM has everything), 88-rollout-kubernetes.sh writes it at
# the end of a rollout. The steps on the first control plane that drain and release the node read
# the answer: a rollout that is current changes nothing there.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_rollout=""
arg_marker=""
km_parse_args "$@"
km_require_args rollout marker
km_require_rollout "$arg_rollout"
[[ $arg_marker == /?*/?* ]] || km_die "--marker must be an absolute path in a folder, not: $arg_marker"

if [[ -f $arg_marker && $(<"$arg_marker") == "$arg_rollout" ]]; then
  km_log "this node is at rollout ${arg_rollout:0:12} already"
  echo current
else
  km_log "this node is at rollout $( [[ -f $arg_marker ]] && head -c 12 "$arg_marker" || echo none), not ${arg_rollout:0:12}: its turn"
  echo needed
fi
