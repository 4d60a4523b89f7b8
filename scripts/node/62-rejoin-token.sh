#!/usr/bin/env bash
# A surviving control plane (cp-1), when the first control plane (--node-name, cp-0) is on a new VM:
# the join that brings it back into the cluster the survivors still serve, instead of a restore
# from a backup (older data) or a new cluster. Prints that join command on stdout, or nothing when
# there is nothing to rejoin:
# - this node serves no cluster (no admin.conf: the stack's first `pulumi up`, or it is new too):
#   the first control plane restores the newest backup or initialises a new cluster;
# - the first control plane's etcd member answers (it serves already: a script change re-ran this).
# Otherwise its old VM is forgotten first (km_forget_member: its dead etcd member and its Node),
# the control-plane certificates are uploaded with --certificate-key (on stdin), and a bootstrap
# token is made for it. A node that holds a cluster whose API server does not answer stops here:
# the first control plane must not make a cluster of its own beside it.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_node_name=""
arg_ttl=""
arg_timeout_seconds=""
arg_api_timeout_seconds=""
arg_certificate_key=""
km_parse_args "$@"
km_require_args node_name ttl timeout_seconds api_timeout_seconds certificate_key
for value in "$arg_timeout_seconds" "$arg_api_timeout_seconds"; do
  [[ $value =~ ^[1-9][0-9]*$ ]] || km_die "timeouts are whole numbers of seconds, not: $value"
done
[[ $arg_certificate_key =~ ^[0-9a-f]{64}$ ]] || km_die "--certificate-key must be 64 lowercase hex digits"

if [[ ! -f $km_admin_kubeconfig ]]; then
  km_log "this node serves no cluster yet (no $km_admin_kubeconfig): $arg_node_name restores the newest backup or initialises a new cluster"
  exit 0
fi
export KUBECONFIG=$km_admin_kubeconfig
deadline=$((SECONDS + arg_api_timeout_seconds))
until kubectl get --raw=/readyz --request-timeout=5s >/dev/null 2>&1; do
  ((SECONDS < deadline)) ||
    km_die "this control plane holds a cluster ($km_admin_kubeconfig) but its API server does not answer after ${arg_api_timeout_seconds}s: $arg_node_name is not let to restore a backup or make a new cluster beside it. Bring this control plane back (sudo crictl ps -a, journalctl -u kubelet), then run pulumi up again"
  sleep 5
done

# The cluster's own settings (kubeadm keeps them in the kubeadm-config ConfigMap) for the upload:
# this node has no kubeadm init config of its own.
cluster_config=$(km_cluster_configuration) ||
  km_die "could not read the kubeadm-config ConfigMap; nothing was changed"
api_version=$(sed -n 's/^apiVersion: *//p' <<<"$cluster_config" | head -n 1)
if [[ $api_version != kubeadm.k8s.io/* ]] || ! grep -qx 'kind: ClusterConfiguration' <<<"$cluster_config"; then
  km_die "the kubeadm-config ConfigMap holds no ClusterConfiguration; nothing was changed"
fi
km_forget_member "$arg_node_name" "$arg_timeout_seconds"
if [[ $km_forgotten == serving ]]; then
  km_log "$arg_node_name serves as a control plane already: nothing to rejoin"
  exit 0
fi

config=$(mktemp /run/kata-mesh-rejoin.XXXXXX.yaml)
trap 'rm -f "$config"' EXIT
printf 'apiVersion: %s\nkind: InitConfiguration\n---\n%s\n' "$api_version" "$cluster_config" >"$config"
km_upload_certs "$config" "$arg_certificate_key"
km_log "$arg_node_name rejoins the control planes that survive: a join token for it"
kubeadm token create --ttl "$arg_ttl" --description "kata-mesh join for $arg_node_name" --print-join-command
