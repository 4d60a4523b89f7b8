#!/usr/bin/env bash
# cp-0, right before a control plane other than cp-0 joins again on a new VM (same node name, new
# instance): forgets its old VM. Stacked etcd has one member per control plane, named after its
# node; the old VM's member is still listed, dead, and `kubeadm join --control-plane` of the new
# VM fails on it (etcd holds a member of that name, and the dead one counts against the quorum).
# So this removes that member, once it is sure the member is dead (a live one means the node still
# serves: not a replaced VM) and that the members that remain keep a quorum of healthy ones; and it
# deletes the old VM's Node object. A first join finds no member of that name and changes nothing;
# so does a second run.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_node_name=""
arg_timeout_seconds=""
km_parse_args "$@"
km_require_args node_name timeout_seconds
km_require_timeout_seconds "$arg_timeout_seconds"
[[ -f $km_admin_kubeconfig ]] || km_die "no $km_admin_kubeconfig on this node (is it cp-0?); nothing was changed"

km_forget_member "$arg_node_name" "$arg_timeout_seconds"
