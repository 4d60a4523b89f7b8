#!/usr/bin/env bash
# First control plane: `kubeadm init --upload-certs` from the config the program rendered
# (preflight checks included), once; an init that failed half-way is reset and tried again. The
# certificate key that encrypts the uploaded control-plane certificates comes on stdin and only
# ever sits in a temporary 0600 file for the length of kubeadm's run. Before kubeadm init, the
# API server's encryption config (on stdin too: it holds the key that encrypts Secrets in etcd) and
# audit policy are written where ClusterConfiguration mounts them. Once the API server answers:
# super-admin.conf leaves the node and kubeadm init's own bootstrap token is deleted (every node
# joins with a token of its own). Every run then makes the node's taint and Kata label match
# whether it takes workloads (that changes with workerCount).
#
# After 45-restore-control-plane.sh brought a backup back onto this new VM, its marker
# (--restored-marker) says `state=complete`: kubeadm init then runs on the restored data. It keeps the
# restored CAs and service-account keys in /etc/kubernetes/pki (it issues this node's own
# certificates from them) and starts etcd on the restored /var/lib/etcd, which its preflight check
# DirAvailable--var-lib-etcd would refuse. A marker saying `state=restoring` (a restore that died
# half-way) stops this step before anything changes. With the marker there, an unfinished init is
# never undone by `kubeadm reset` (that deletes the data dir and the PKI: the restored cluster);
# only the static pod manifests and kubeconfigs go. Without the marker nothing of this applies.
#
# When other control planes survive the first one's new VM, --join-config-b64 (on stdin: it holds a
# token and the certificate key) is the JoinConfiguration 62-rejoin-token.sh made for it on one of
# them: this VM joins them instead of kubeadm init, and 45-restore-control-plane.sh restored
# nothing. Its joins go to the load balancer's address, which GCE makes local to every backend,
# this one included, whose API server is not up yet: until it is, this node's connections to that
# address go to the survivor --rejoin-via (km_redirect_endpoint).
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
arg_encryption_config_b64=""
arg_encryption_config_file=""
arg_audit_policy_b64=""
arg_audit_policy_file=""
arg_audit_log_dir=""
arg_init_token_description=""
arg_restored_marker=""
arg_join_config_b64=""
arg_rejoin_via=""
arg_api_timeout_seconds=300
km_parse_args "$@"
km_require_args config_b64 node_name takes_workloads kata_label certificate_key encryption_config_b64 \
  encryption_config_file audit_policy_b64 audit_policy_file audit_log_dir init_token_description \
  restored_marker
[[ $arg_certificate_key =~ ^[0-9a-f]{64}$ ]] || km_die "--certificate-key must be 64 lowercase hex digits"
[[ $arg_restored_marker == /?*/?* && $arg_restored_marker != */ ]] ||
  km_die "--restored-marker must be an absolute path in a folder, not: $arg_restored_marker"
[[ -z $arg_join_config_b64 || -n $arg_rejoin_via ]] ||
  km_die "--join-config-b64 needs --rejoin-via, the survivor whose API server answers the join"

config_file=/etc/kubernetes/kubeadm-init.yaml
initialized=/etc/kubernetes/.kata-mesh-initialized
in_service=false
[[ -f $initialized ]] && in_service=true

# The restore, if any: read (and refused) before anything on the node changes. kubeadm's own paths:
# ClusterConfiguration leaves etcd's data dir and the certificates dir at their defaults, and the
# preflight check is named after the data dir ("DirAvailable-" and the path, / made -).
etcd_data_dir=/var/lib/etcd
pki_dir=/etc/kubernetes/pki
restored_state=""
restored_from=""
if [[ -e $arg_restored_marker ]]; then
  [[ -f $arg_restored_marker ]] || km_die "$arg_restored_marker is not a file"
  restored_state=$(sed -n 's/^state=//p' "$arg_restored_marker")
  restored_from=$(sed -n 's/^backup=//p' "$arg_restored_marker")
  case $restored_state in
    complete) ;;
    restoring)
      km_die "the restore from ${restored_from:-a backup} did not finish ($arg_restored_marker says state=restoring): $etcd_data_dir and $pki_dir may hold half of it, and kubeadm init is not run on that. Run the restore step again (45-restore-control-plane.sh, the program's $arg_node_name-restore: \`pulumi up\` retries it after its failure); it starts over from the backup and marks state=complete when done. Nothing was changed" ;;
    *) km_die "$arg_restored_marker holds no state=complete nor state=restoring line (state: '${restored_state//$'\n'/ }'); it is 45-restore-control-plane.sh's marker: run that step again. Nothing was changed" ;;
  esac
  if [[ ! -f $initialized ]]; then
    # kubeadm init on an empty data dir, or without the restored CAs, would make a new cluster.
    absent=""
    [[ -d $etcd_data_dir/member ]] || absent="an etcd member in $etcd_data_dir"
    for file in ca.crt ca.key sa.key sa.pub front-proxy-ca.crt front-proxy-ca.key etcd/ca.crt etcd/ca.key; do
      [[ -n $absent || -s $pki_dir/$file ]] || absent=$pki_dir/$file
    done
    [[ -z $absent ]] ||
      km_die "$arg_restored_marker says the cluster was restored from $restored_from, but $absent is missing (kubeadm reset?): kubeadm init would make a new cluster. Delete $arg_restored_marker, $etcd_data_dir and $pki_dir (all from the backup) and run the restore step (45-restore-control-plane.sh, the program's $arg_node_name-restore) again. Nothing was changed"
  fi
fi
km_put_api_server_files "$arg_encryption_config_file" "$arg_encryption_config_b64" "$arg_audit_policy_file" \
  "$arg_audit_policy_b64" "$arg_audit_log_dir" "$in_service"
km_put_file "$config_file" 0600 "$(base64 -d <<<"$arg_config_b64")"
if [[ ! -f $initialized && -n $arg_join_config_b64 ]]; then
  [[ -z $restored_state ]] ||
    km_die "$arg_restored_marker says a backup was restored here ($restored_from), yet the program says the other control planes survive and this node joins them: delete $arg_restored_marker and run pulumi up again. Nothing was changed"
  join_config=$(mktemp /run/kata-mesh-rejoin.XXXXXX.yaml)
  trap 'rm -f "$join_config"; km_redirect_endpoint remove' EXIT
  chmod 0600 "$join_config"
  base64 -d <<<"$arg_join_config_b64" >"$join_config"
  endpoint=$(sed -n 's/^ *apiServerEndpoint: *//p' "$join_config" | head -n 1)
  key=$(sed -n 's/^ *certificateKey: *//p' "$join_config")
  [[ $endpoint == *:* && -n $key ]] ||
    km_die "--join-config-b64 is no control plane's JoinConfiguration (apiServerEndpoint, certificateKey)"
  if [[ -e /etc/kubernetes/kubelet.conf || -e /etc/kubernetes/manifests/kube-apiserver.yaml || -e $pki_dir/ca.crt ]]; then
    km_log "an earlier join did not finish; resetting this node before trying again"
    kubeadm reset -f >&2
  fi
  km_redirect_endpoint add "${endpoint%:*}" "${endpoint##*:}" "$arg_rejoin_via"
  status=0
  output=$(kubeadm join --config "$join_config" 2>&1) || status=$?
  km_hide "$key" <<<"$output" >&2
  ((status == 0)) || km_die "kubeadm join (this control plane joining the ones that survive) failed; see the output above"
  km_wait_local_api "$arg_api_timeout_seconds"
  km_redirect_endpoint remove
  rm -f "$join_config"
  trap - EXIT
  touch "$initialized"
  km_log "joined the control planes that survive"
elif [[ ! -f $initialized ]]; then
  if [[ -e /etc/kubernetes/admin.conf || -e /etc/kubernetes/manifests/kube-apiserver.yaml ]]; then
    if [[ -n $restored_state ]]; then
      # Never kubeadm reset here: it empties $etcd_data_dir and $pki_dir, the restored cluster.
      # What init wrote goes (the leaf certificates it made stay: init checks them against the CA
      # and keeps them); then what reset would do besides deleting: the kubelet stops, and so do
      # the earlier try's pods (preflight wants ports 6443, 2379, 2380 and 10250 free, and an etcd
      # left running would keep writing to the data dir the next one opens).
      km_log "an earlier kubeadm init on the restored cluster did not finish; removing its static pod manifests and kubeconfigs (no kubeadm reset: it would delete $etcd_data_dir and $pki_dir) before trying again"
      rm -f /etc/kubernetes/manifests/*.yaml /etc/kubernetes/*.conf
      systemctl stop kubelet >&2 || km_die "could not stop the kubelet before trying kubeadm init again"
      crictl rmp --all --force >&2 ||
        km_die "could not remove the earlier try's pods (crictl rmp --all --force) before trying kubeadm init again"
    else
      km_log "an earlier kubeadm init did not finish; resetting this node before trying again"
      kubeadm reset -f >&2
    fi
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
  init_flags=(--config "$keyed_config" --upload-certs --skip-token-print)
  if [[ $restored_state == complete ]]; then
    km_log "bringing the cluster back from backup $restored_from: kubeadm init keeps its CAs and keys in $pki_dir and starts etcd on its data in $etcd_data_dir"
    init_flags+=(--ignore-preflight-errors=DirAvailable--var-lib-etcd)
  fi
  kubeadm init "${init_flags[@]}" 2>&1 |
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

km_drop_super_admin
km_delete_bootstrap_tokens "$arg_init_token_description" "The default bootstrap token generated by 'kubeadm init'."
km_set_workload_role "$arg_node_name" "$arg_takes_workloads" "$arg_kata_label"
km_log "control plane ready"
