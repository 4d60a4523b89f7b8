#!/usr/bin/env bash
# Control planes, once they serve: installs the backup (scripts/node/kata-mesh-backup.sh) with its
# systemd service and timer (components/backup_config.py renders them), enables the timer and,
# the first time, takes a backup at once without waiting for it. A second run with the same
# files changes nothing; changed files are rewritten and the timer restarted.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_script_b64=""
arg_script_path=""
arg_service_b64=""
arg_timer_b64=""
arg_unit_dir=""
arg_service_name=""
arg_timer_name=""
arg_staging_dir=""
km_parse_args "$@"
km_require_args script_b64 script_path service_b64 timer_b64 unit_dir service_name timer_name staging_dir
[[ $arg_service_name =~ ^[a-z0-9-]+\.service$ && $arg_timer_name =~ ^[a-z0-9-]+\.timer$ ]] ||
  km_die "--service-name and --timer-name must be plain unit names, got: $arg_service_name $arg_timer_name"

changed=false
km_put_file "$arg_script_path" 0755 "$(base64 -d <<<"$arg_script_b64")"
[[ $km_changed == false ]] || changed=true
km_put_file "$arg_unit_dir/$arg_service_name" 0644 "$(base64 -d <<<"$arg_service_b64")"
[[ $km_changed == false ]] || changed=true
km_put_file "$arg_unit_dir/$arg_timer_name" 0644 "$(base64 -d <<<"$arg_timer_b64")"
[[ $km_changed == false ]] || changed=true
# Snapshots and the PKI tarball wait here for their upload: root's alone.
mkdir -p "$arg_staging_dir"
chmod 0700 "$arg_staging_dir"

first=false
systemctl is-enabled --quiet "$arg_timer_name" 2>/dev/null || first=true
if [[ $changed == true ]]; then
  systemctl daemon-reload
fi
systemctl enable --now "$arg_timer_name" >&2
if [[ $changed == true && $first == false ]]; then
  systemctl restart "$arg_timer_name"
  km_log "backup files changed: timer restarted"
fi
if [[ $first == true ]]; then
  # The first backup right away (a new cluster has nothing in the bucket yet); --no-block: its
  # upload may take minutes, and its result shows in `systemctl status $arg_service_name`.
  systemctl start --no-block "$arg_service_name"
  km_log "backup timer enabled; first backup started"
else
  km_log "backup timer already enabled"
fi
