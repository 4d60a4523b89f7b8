#!/usr/bin/env bash
# Control planes, once they serve: installs a script that a systemd timer runs (the backup,
# scripts/node/kata-mesh-backup.sh; the certificate renewal, kata-mesh-renew-certs.sh) with its
# service and timer (rendered by components/backup_config.py and components/cert_renewal.py) and
# the private folder it works in, enables the timer and, the first time with --run-now true, runs
# the service at once without waiting for it. A second run with the same files changes nothing;
# changed files are rewritten and the timer restarted.
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
arg_private_dir=""
arg_run_now=""
km_parse_args "$@"
km_require_args script_b64 script_path service_b64 timer_b64 unit_dir service_name timer_name private_dir run_now
[[ $arg_run_now == true || $arg_run_now == false ]] || km_die "--run-now must be true or false, got: $arg_run_now"
[[ $arg_service_name =~ ^[a-z0-9-]+\.service$ && $arg_timer_name =~ ^[a-z0-9-]+\.timer$ ]] ||
  km_die "--service-name and --timer-name must be plain unit names, got: $arg_service_name $arg_timer_name"

changed=false
km_put_file "$arg_script_path" 0755 "$(base64 -d <<<"$arg_script_b64")"
[[ $km_changed == false ]] || changed=true
km_put_file "$arg_unit_dir/$arg_service_name" 0644 "$(base64 -d <<<"$arg_service_b64")"
[[ $km_changed == false ]] || changed=true
km_put_file "$arg_unit_dir/$arg_timer_name" 0644 "$(base64 -d <<<"$arg_timer_b64")"
[[ $km_changed == false ]] || changed=true
# Where the script keeps what no one else may read (snapshots, the PKI, manifests): root's alone.
mkdir -p "$arg_private_dir"
chmod 0700 "$arg_private_dir"

first=false
systemctl is-enabled --quiet "$arg_timer_name" 2>/dev/null || first=true
if [[ $changed == true ]]; then
  systemctl daemon-reload
fi
systemctl enable --now "$arg_timer_name" >&2
if [[ $changed == true && $first == false ]]; then
  systemctl restart "$arg_timer_name"
  km_log "$arg_timer_name: files changed, timer restarted"
fi
if [[ $first == true && $arg_run_now == true ]]; then
  # The first run right away (a new cluster has no backup yet); --no-block: it may take minutes,
  # and its result shows in `systemctl status $arg_service_name`.
  systemctl start --no-block "$arg_service_name"
  km_log "$arg_timer_name enabled; $arg_service_name started"
elif [[ $first == true ]]; then
  km_log "$arg_timer_name enabled"
else
  km_log "$arg_timer_name already enabled"
fi
