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
[[ $arg_timeout_seconds =~ ^[1-9][0-9]*$ ]] ||
  km_die "--timeout-seconds must be a whole number of seconds, not: $arg_timeout_seconds"
name=$arg_node_name
timeout=$arg_timeout_seconds
[[ -f $km_admin_kubeconfig ]] || km_die "no $km_admin_kubeconfig on this node (is it cp-0?); nothing was changed"

# One membership change at a time, with the removals of 85-remove-control-plane.sh too: each one
# checks the membership the previous one left.
mkdir -p /run/lock
exec 9>>/run/lock/kata-mesh-remove-control-plane
flock -w 900 9 || km_die "another control plane removal is still running after 900s; nothing was changed"

# 1. etcd's membership (km_etcd_members, as 85-remove-control-plane.sh reads it).
km_etcd_members "$name" || km_die "could not list etcd's members; nothing was changed"
member_id=$km_member_id
if [[ -z $member_id ]]; then
  km_log "$name is no etcd member: nothing to forget (a first join, or its old member is gone already)"
  exit 0
fi

# 2. Health of every member's client URLs (km_etcd_health).
km_etcd_health ||
  km_die "could not read etcd's endpoint health (etcdctl printed: ${km_health_output:-nothing}); nothing was changed"

# A member that answers is this node's own, already joined: the old VM is deleted before its
# replacement exists (GCE names are unique), so it cannot be the old one. This step also runs
# again when its script changes, long after the join: then there is nothing to forget.
if km_etcd_healthy "$km_member_urls"; then
  km_log "$name's etcd member $member_id answers at ${km_member_urls:-its client URL}: $name serves as a member already; nothing to forget"
  exit 0
fi

# 3. The quorum of the members that remain (removing a dead member only makes it easier to keep,
# but a cluster that lost it already must not be reconfigured behind its back).
km_etcd_unhealthy_survivors
count=${#km_survivors[@]}
healthy=$((count - ${#km_unhealthy[@]}))
quorum=$((count / 2 + 1))
km_log "etcd: $name (member $member_id) does not answer; without it, $healthy of $count healthy (quorum $quorum)"
if ((healthy < quorum)); then
  km_die "forgetting $name would leave etcd without quorum: of the $count members that would remain, $healthy healthy where $quorum are needed; unhealthy: ${km_unhealthy[*]}. Bring them back first, then run pulumi up again; nothing was changed"
fi

# 4. The old VM's Node first, then its member: a run that fails after the Node is gone still finds
# the member, and does both again. kubeadm join stops when a Node of its name exists and is Ready
# ("a Node with name ... and status Ready already exists in the cluster. You must delete the
# existing Node", its kubelet-start phase): the old Node stays Ready for the node monitor's grace
# period after its VM went, and its pods and mirror pods are the old VM's.
km_log "deleting the old VM's Node $name"
timeout "$timeout" kubectl --kubeconfig "$km_admin_kubeconfig" delete node "$name" --ignore-not-found >&2 ||
  km_die "could not delete Node $name (its etcd member $member_id is still there); run pulumi up again"
km_log "removing $name's old etcd member $member_id"
km_etcdctl member remove "$member_id" >&2 ||
  km_die "could not remove $name's old etcd member $member_id; run pulumi up again"
km_log "forgot $name's old VM: etcd member $member_id and its Node are gone; it can join again"
