#!/usr/bin/env bash
# First control plane: a fresh bootstrap token for one node, printed as its join command. A stale,
# NotReady Node of the same name (its VM was replaced) is removed first so the new VM can join.
# For a control plane, the control-plane certificates are uploaded again first: the kubeadm-certs
# Secret that `kubeadm init --upload-certs` made expires after two hours, and a control plane can
# join much later (3 -> 5). The certificate key comes on stdin, never on a command line.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_node_name=""
arg_ttl=""
arg_control_plane=false
arg_certificate_key=""
km_parse_args "$@"
km_require_args node_name ttl
export KUBECONFIG=/etc/kubernetes/admin.conf
# Written by 50-kubeadm-init.sh; the cluster's settings for the upload-certs phase.
init_config=/etc/kubernetes/kubeadm-init.yaml

if [[ $arg_control_plane == true ]]; then
  [[ -n $arg_certificate_key ]] || km_die "a control plane's token needs --certificate-key"
  km_upload_certs "$init_config" "$arg_certificate_key"
elif [[ $arg_control_plane != false ]]; then
  km_die "--control-plane must be true or false"
fi

ready=$(kubectl get node "$arg_node_name" --ignore-not-found \
  -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')
if [[ -n $ready && $ready != True ]]; then
  km_log "removing stale Node $arg_node_name (Ready=$ready) before it joins again"
  kubectl delete node "$arg_node_name" --wait=true --timeout=60s >&2
fi
kubeadm token create --ttl "$arg_ttl" --description "kata-mesh join for $arg_node_name" --print-join-command
