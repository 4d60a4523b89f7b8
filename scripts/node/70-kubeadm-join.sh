#!/usr/bin/env bash
# Worker or further control plane: `kubeadm join` with the JoinConfiguration the program rendered
# (it holds a token, and for a control plane the certificate key, so it comes on stdin and its file
# is removed afterwards). A control plane first gets the API server's encryption config (on stdin
# too) and audit policy, which its API server, built from the cluster's ClusterConfiguration,
# reads from its first start; it then waits for that API server and gets its taint and Kata
# label, like the first one. A node already in this cluster is left as it
# is (and made to register again if its Node was deleted); a half-joined node, or one from an
# earlier cluster (another CA), is reset first.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_config_b64=""
arg_node_name=""
arg_control_plane=false
arg_takes_workloads=false
arg_kata_label=""
arg_api_timeout_seconds=300
arg_token_step=""
arg_encryption_config_b64=""
arg_encryption_config_file=""
arg_audit_policy_b64=""
arg_audit_policy_file=""
arg_audit_log_dir=""
km_parse_args "$@"
km_require_args config_b64 node_name
case $arg_control_plane in
  true)
    km_require_args kata_label encryption_config_b64 encryption_config_file audit_policy_b64 audit_policy_file \
      audit_log_dir
    ;;
  false)
    [[ -z $arg_encryption_config_b64$arg_encryption_config_file$arg_audit_policy_b64$arg_audit_policy_file$arg_audit_log_dir ]] ||
      km_die "a worker runs no API server: it gets no encryption config nor audit policy"
    ;;
  *) km_die "--control-plane must be true or false" ;;
esac

config_file=$(mktemp /run/kata-mesh-join.XXXXXX.yaml)
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
    already_joined=true
  else
    km_log "this node was joined to another cluster (its CA differs); joining this one instead"
  fi
fi
if [[ $arg_control_plane == true ]]; then
  km_put_api_server_files "$arg_encryption_config_file" "$arg_encryption_config_b64" "$arg_audit_policy_file" \
    "$arg_audit_policy_b64" "$arg_audit_log_dir" "${already_joined:-false}"
fi
if [[ ${already_joined:-false} == false ]]; then
  if [[ -e $joined || -e /etc/kubernetes/kubelet.conf || -e /etc/kubernetes/pki/ca.crt ]]; then
    kubeadm reset -f >&2
    rm -f "$joined"
  fi
  key=$(sed -n 's/^ *certificateKey: *//p' "$config_file")
  status=0
  output=$(kubeadm join --config "$config_file" 2>&1) || status=$?
  # A control plane's config holds the certificate key: whatever kubeadm echoes of it stays out
  # of the logs.
  if [[ -n $key ]]; then km_hide "$key" <<<"$output" >&2; else printf '%s\n' "$output" >&2; fi
  if ((status != 0)); then
    # A join retried long after its token step ran: the token lives JOIN_TOKEN_TTL, the uploaded
    # control-plane certificates two hours.
    if grep -qE 'or it has expired|"kubeadm-certs"' <<<"$output"; then
      how="make new ones by replacing the join-token step, and this step joins again with them"
      [[ -z $arg_token_step ]] ||
        how+=": pulumi up --replace \"\$(pulumi stack --show-urns | grep -o 'urn:pulumi:[^ ]*::$arg_token_step\$')\""
      km_die "the join token made for $arg_node_name${key:+ (or the control-plane certificates uploaded for it)} expired before this join; $how"
    fi
    km_die "kubeadm join failed; see the output above"
  fi
  touch "$joined"
  km_log "joined the cluster"
fi
[[ $arg_control_plane == true ]] || exit 0

# The load balancer sends to this control plane only after this step: its own API server must
# answer first.
km_wait_local_api "$arg_api_timeout_seconds"
export KUBECONFIG=/etc/kubernetes/admin.conf
km_set_workload_role "$arg_node_name" "$arg_takes_workloads" "$arg_kata_label"
km_log "control plane ready"
