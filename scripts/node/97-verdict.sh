#!/usr/bin/env bash
# Control plane, last: prints the verification report the program computed and fails the deploy
# unless every check passed.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_report_b64=""
arg_passed=""
km_parse_args "$@"
km_require_args report_b64 passed

base64 -d <<<"$arg_report_b64"
if [[ $arg_passed != true ]]; then
  km_die "verification failed: the report above lists each check that failed (the app in a Kata VM \
with its sidecar and mutual TLS; every meshed app pod's sidecar at istiod's version; the hardening: \
a runc pod refused in the sandbox, the metadata server out of a pod's reach, plaintext refused; with 3 \
or more control planes every control plane, etcd member and the API through the load balancer). Once fixed, gather fresh evidence with:
  pulumi up --config kata-mesh:verificationRun=\"\$(date +%s)\""
fi
km_log "verification passed"
