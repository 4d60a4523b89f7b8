#!/usr/bin/env bash
# Worker: `kubeadm join` with the JoinConfiguration the program rendered (its token is secret and
# the file is removed afterwards). A node that already joined is left as it is.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_config_b64=""
km_parse_args "$@"
km_require_args config_b64

if [[ -f /etc/kubernetes/kubelet.conf ]]; then
  km_log "already joined"
  exit 0
fi
config_file=$(mktemp /etc/kubernetes-join.XXXXXX.yaml)
trap 'rm -f "$config_file"' EXIT
chmod 0600 "$config_file"
base64 -d <<<"$arg_config_b64" >"$config_file"
kubeadm join --config "$config_file" || km_die "kubeadm join failed; see the output above"
km_log "joined the cluster"
