#!/usr/bin/env bash
# Control plane: `kubeadm init` from the config the program rendered (preflight checks included),
# once; an init that failed half-way is reset and tried again. Every run then makes the node's
# taint and Kata label match whether it takes workloads (that changes with workerCount).
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_config_b64=""
arg_node_name=""
arg_takes_workloads=""
arg_kata_label=""
km_parse_args "$@"
km_require_args config_b64 node_name takes_workloads kata_label

config_file=/etc/kubernetes/kubeadm-init.yaml
initialized=/etc/kubernetes/.kata-mesh-initialized
km_put_file "$config_file" 0600 "$(base64 -d <<<"$arg_config_b64")"
if [[ ! -f $initialized ]]; then
  if [[ -e /etc/kubernetes/admin.conf || -e /etc/kubernetes/manifests/kube-apiserver.yaml ]]; then
    km_log "an earlier kubeadm init did not finish; resetting this node before trying again"
    kubeadm reset -f >&2
  fi
  # --skip-token-print: init's own 24 h token would otherwise land in the logs; workers get
  # their own short-lived tokens from the join-token step.
  kubeadm init --config "$config_file" --skip-token-print || km_die "kubeadm init failed; see the output above"
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

taint=node-role.kubernetes.io/control-plane
if [[ $arg_takes_workloads == true ]]; then
  if kubectl get node "$arg_node_name" -o jsonpath='{.spec.taints[*].key}' | grep -qw "$taint"; then
    kubectl taint node "$arg_node_name" "$taint:NoSchedule-" >&2
  fi
  kubectl label node "$arg_node_name" "$arg_kata_label" --overwrite >&2
else
  kubectl taint node "$arg_node_name" "$taint=:NoSchedule" --overwrite >&2
  label_key=${arg_kata_label%%=*}
  if kubectl get node "$arg_node_name" -o json | jq -e --arg key "$label_key" '.metadata.labels | has($key)' >/dev/null; then
    kubectl label node "$arg_node_name" "$label_key-" >&2
  fi
fi
km_log "control plane ready"
