#!/usr/bin/env bash
# Control plane: `kubeadm init` from the config the program rendered (preflight checks included).
# Once the cluster exists, later runs only check that the API server answers.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_config_b64=""
km_parse_args "$@"
km_require_args config_b64

config_file=/etc/kubernetes/kubeadm-init.yaml
km_put_file "$config_file" 0600 "$(base64 -d <<<"$arg_config_b64")"
if [[ -f /etc/kubernetes/admin.conf ]]; then
  if $km_changed; then
    km_log "cluster exists; kubeadm init does not re-apply a changed config (that is kubeadm upgrade's job)"
  fi
else
  # --skip-token-print: init's own 24 h token would otherwise land in the logs; workers get
  # their own short-lived tokens from the join-token step.
  kubeadm init --config "$config_file" --skip-token-print || km_die "kubeadm init failed; see the output above"
fi

export KUBECONFIG=/etc/kubernetes/admin.conf
for _ in $(seq 1 60); do
  kubectl get --raw=/readyz >/dev/null 2>&1 && break
  sleep 5
done
kubectl get --raw=/readyz >/dev/null || km_die "the API server does not answer on this node"
km_log "control plane ready"
