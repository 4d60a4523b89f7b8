#!/usr/bin/env bash
# cp-0: the shrink policy that 85-remove-control-plane.sh reads before it takes a control plane out
# of etcd. The program runs this with `allowed` or `refused` (the allowControlPlaneShrink setting)
# whenever that setting changes, and with `destroying` when the stack is destroyed, so that the
# removal steps, which run later in the same `pulumi up` or `pulumi destroy`, know which it is.
# The file holds exactly one line, `shrink=<value>`, and is rewritten only when it changes.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_policy_file=""
arg_shrink=""
km_parse_args "$@"
km_require_args policy_file shrink

[[ $arg_policy_file == /* ]] || km_die "--policy-file must be an absolute path, not: $arg_policy_file"
case $arg_shrink in
  allowed | refused | destroying) ;;
  *) km_die "--shrink must be allowed, refused or destroying, not: $arg_shrink" ;;
esac

km_put_file "$arg_policy_file" 0644 "shrink=$arg_shrink"
if $km_changed; then
  km_log "control plane shrink policy: $arg_shrink"
else
  km_log "control plane shrink policy already $arg_shrink"
fi
