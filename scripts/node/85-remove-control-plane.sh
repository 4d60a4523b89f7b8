#!/usr/bin/env bash
# cp-0, when a control plane leaves the settings (controlPlaneCount lowered): takes it out of the
# cluster without breaking etcd. Stacked etcd has one member per control plane (named after its
# node); a VM deleted while still a member counts against etcd's quorum forever. So, before
# touching anything, this checks that the members that remain would keep a quorum of healthy
# members, and that going below 3 members (which tolerate no member failure) was allowed
# (allowControlPlaneShrink, written to --policy-file by 55-control-plane-policy.sh); then it drains
# the Node (best effort), removes the etcd member and deletes the Node. At `pulumi destroy` the
# policy says `destroying` and this leaves everything as it is: the whole cluster is going.
# A second run finds no member and no Node, and succeeds.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_node_name=""
arg_policy_file=""
arg_timeout_seconds=""
km_parse_args "$@"
km_require_args node_name policy_file timeout_seconds
km_require_timeout_seconds "$arg_timeout_seconds"
export KUBECONFIG=/etc/kubernetes/admin.conf
name=$arg_node_name
timeout=$arg_timeout_seconds

# 1. The policy: only `shrink=allowed` allows going below 3 members; no file, or anything else,
# refuses it.
policy=refused
if [[ -f $arg_policy_file ]]; then
  case $(<"$arg_policy_file") in
    shrink=destroying)
      km_log "the stack is being destroyed: leaving $name, etcd and the Node as they are"
      exit 0
      ;;
    shrink=allowed) policy=allowed ;;
  esac
  km_log "shrink policy ($arg_policy_file): $policy"
else
  km_log "no shrink policy at $arg_policy_file: going below 3 control planes is refused"
fi
[[ -f $KUBECONFIG ]] || km_die "no $KUBECONFIG on this node (is it cp-0?); nothing was changed"

# Removals of several control planes (5 -> 3) may run at once: one at a time, each one checking
# the membership the previous one left.
mkdir -p /run/lock
exec 9>>/run/lock/kata-mesh-remove-control-plane
flock -w 900 9 || km_die "another control plane removal is still running after 900s; nothing was changed"

# 2. etcd's membership (km_etcd_members).
km_etcd_members "$name" || km_die "could not list etcd's members; nothing was changed"
member_id=$km_member_id

# 3. The guard, before anything changes.
if [[ -z $member_id ]]; then
  km_log "$name is not an etcd member; leaving etcd as it is"
elif $km_member_is_learner; then
  km_log "$name is an etcd learner: it does not vote, so removing it leaves the quorum as it is"
else
  # A survivor is healthy when one of its client URLs answers.
  km_etcd_health ||
    km_die "could not read etcd's endpoint health (etcdctl printed: ${km_health_output:-nothing}); nothing was changed"
  km_etcd_unhealthy_survivors
  km_log "etcd: $km_voters voting members; without $name, $km_healthy_remaining of $km_remaining healthy (quorum $km_quorum)"
  if ((km_healthy_remaining < km_quorum)); then
    km_die "removing $name from etcd would leave it without quorum: of the $km_remaining members that would remain, $km_healthy_remaining healthy where $km_quorum are needed; unhealthy: ${km_unhealthy[*]}. Bring them back first, then run pulumi up again; nothing was changed"
  fi
  if ((km_voters >= 3 && km_remaining < 3)) && [[ $policy != allowed ]]; then
    km_die "removing $name would leave etcd with $km_remaining member(s), which tolerate no member failure: one control plane down would stop the cluster. To go below 3 control planes anyway: pulumi config set allowControlPlaneShrink true, then pulumi up again; or keep controlPlaneCount as it was; nothing was changed"
  fi
fi

# 4. Drain (best effort, bounded), leave etcd, delete the Node.
km_log "draining $name"
timeout "$timeout" kubectl drain "$name" --ignore-daemonsets --delete-emptydir-data --force \
  --timeout="${timeout}s" ||
  km_log "drain of $name did not finish; removing it anyway"
if [[ -n $member_id ]]; then
  km_log "removing $name (member $member_id) from etcd"
  km_etcdctl member remove "$member_id" >&2 ||
    km_die "could not remove $name (member $member_id) from etcd; run pulumi up again"
fi
km_log "deleting Node $name"
timeout "$timeout" kubectl delete node "$name" --ignore-not-found ||
  km_die "could not delete Node $name (it is out of etcd already); run pulumi up again, or kubectl delete node $name"
km_log "$name is out of the control plane"
