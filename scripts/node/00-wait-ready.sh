#!/usr/bin/env bash
# Step 0: waits until the fresh VM has finished booting (cloud-init done), so no later step races
# the image's own first-boot work.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_timeout_seconds=""
km_parse_args "$@"
km_require_args timeout_seconds

if ! command -v cloud-init >/dev/null; then
  km_log "no cloud-init on this image; nothing to wait for"
  exit 0
fi
status=0
timeout "$arg_timeout_seconds" cloud-init status --wait >/dev/null || status=$?
case $status in
  # 2: finished with recoverable errors (a warning in a module), which still leaves a usable VM.
  0 | 2) km_log "cloud-init finished" ;;
  124) km_die "cloud-init did not finish within ${arg_timeout_seconds}s: $(cloud-init status --long 2>&1)" ;;
  *) km_die "cloud-init failed (exit $status): $(cloud-init status --long 2>&1)" ;;
esac
