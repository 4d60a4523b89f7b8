#!/usr/bin/env bash
# First control plane: `kubeadm init --upload-certs` from the config the program rendered
# (preflight checks included), once; an init that failed half-way is reset and tried again. The
# certificate key that encrypts the uploaded control-plane certificates comes on stdin and only
# ever sits in a temporary 0600 file for the length of kubeadm's run. Every run then makes the
# node's taint and Kata label match whether it takes workloads (that changes with workerCount).
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_config_b64=""
arg_node_name=""
arg_takes_workloads=""
arg_kata_label=""
arg_certificate_key=""
km_parse_args "$@"
km_require_args config_b64 node_name takes_workloads kata_label certificate_key
[[ $arg_certificate_key =~ ^[0-9a-f]{64}$ ]] || km_die "--certificate-key must be 64 lowercase hex digits"

config_file=/etc/kubernetes/kubeadm-init.yaml
initialized=/etc/kubernetes/.kata-mesh-initialized
km_put_file "$config_file" 0600 "$(base64 -d <<<"$arg_config_b64")"
if [[ ! -f $initialized ]]; then
  if [[ -e /etc/kubernetes/admin.conf || -e /etc/kubernetes/manifests/kube-apiserver.yaml ]]; then
    km_log "an earlier kubeadm init did not finish; resetting this node before trying again"
    kubeadm reset -f >&2
  fi
  # The kept config has no key; kubeadm reads the one with it, which is gone when it ends.
  keyed_config=$(mktemp /run/kata-mesh-kubeadm-init.XXXXXX.yaml)
  trap 'rm -f "$keyed_config"' EXIT
  chmod 0600 "$keyed_config"
  km_with_certificate_key "$config_file" "$arg_certificate_key" >"$keyed_config"
  # --skip-token-print: init's own 24 h token would otherwise land in the logs; workers get
  # their own short-lived tokens from the join-token step. --upload-certs: the other control
  # planes fetch the cluster's CA and keys from the kubeadm-certs Secret, encrypted with the key.
  # kubeadm prints the key it used: its output goes through km_hide.
  kubeadm init --config "$keyed_config" --upload-certs --skip-token-print 2>&1 |
    km_hide "$arg_certificate_key" >&2 || km_die "kubeadm init failed; see the output above"
  rm -f "$keyed_config"
  touch "$initialized"
elif $km_changed; then
  km_log "cluster exists; kubeadm init does not re-apply a changed config (that is kubeadm upgrade's job)"
fi

export KUBECONFIG=/etc/kubernetes/admin.conf
for _ in $(seq 1 60); do
  kubectl get --raw=/readyz >/dev/null 2>&1 && break
  sleep 5
done
kubectl get --raw=/readyz >/dev/null || km_die "the API server does not answer on this node"

km_set_workload_role "$arg_node_name" "$arg_takes_workloads" "$arg_kata_label"
km_log "control plane ready"
