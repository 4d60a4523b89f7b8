#!/usr/bin/env bash
# Worker: `kubeadm join` with the JoinConfiguration the program rendered (it holds a token, so it
# comes on stdin and its file is removed afterwards). A node already in this cluster is left as it
# is (and made to register again if its Node was deleted); a half-joined node, or one from an
# earlier cluster (another CA), is reset first.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_config_b64=""
arg_node_name=""
km_parse_args "$@"
km_require_args config_b64 node_name

config_file=$(mktemp /etc/kubernetes-join.XXXXXX.yaml)
trap 'rm -f "$config_file"' EXIT
chmod 0600 "$config_file"
base64 -d <<<"$arg_config_b64" >"$config_file"
joined=/etc/kubernetes/.kata-mesh-joined
cluster_ca=$(grep -o 'sha256:[a-f0-9]\{64\}' "$config_file" | head -n 1)

if [[ -f $joined && -f /etc/kubernetes/pki/ca.crt ]]; then
  local_ca="sha256:$(openssl x509 -pubkey -noout -in /etc/kubernetes/pki/ca.crt |
    openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1)"
  if [[ $local_ca == "$cluster_ca" ]]; then
    if ! kubectl --kubeconfig /etc/kubernetes/kubelet.conf get node "$arg_node_name" >/dev/null 2>&1; then
      km_log "Node $arg_node_name is not in the cluster; restarting kubelet so that it registers again"
      systemctl restart kubelet
    fi
    km_log "already joined"
    exit 0
  fi
  km_log "this node was joined to another cluster (its CA differs); joining this one instead"
fi
if [[ -e $joined || -e /etc/kubernetes/kubelet.conf || -e /etc/kubernetes/pki/ca.crt ]]; then
  kubeadm reset -f >&2
  rm -f "$joined"
fi
kubeadm join --config "$config_file" || km_die "kubeadm join failed; see the output above"
touch "$joined"
km_log "joined the cluster"
