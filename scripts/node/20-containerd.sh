#!/usr/bin/env bash
# Step 2: containerd from its pinned release (with runc and the CNI plugins), the systemd unit
# and the config the program rendered: runc by default (systemd cgroups) and a `kata` runtime.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_containerd_url=""
arg_containerd_sha256=""
arg_runc_url=""
arg_runc_sha256=""
arg_cni_url=""
arg_cni_sha256=""
arg_config_b64=""
arg_unit_b64=""
arg_cache_dir=""
km_parse_args "$@"
km_require_args containerd_url containerd_sha256 runc_url runc_sha256 cni_url cni_sha256 config_b64 unit_b64 cache_dir

restart=false

containerd_tgz=$arg_cache_dir/${arg_containerd_url##*/}
km_fetch_verified "$arg_containerd_url" "$arg_containerd_sha256" "$containerd_tgz"
if ! km_is_installed containerd "$arg_containerd_sha256"; then
  tar -xzf "$containerd_tgz" -C /usr/local
  km_mark_installed containerd "$arg_containerd_sha256"
  restart=true
fi

runc_bin=$arg_cache_dir/${arg_runc_url##*/}
km_fetch_verified "$arg_runc_url" "$arg_runc_sha256" "$runc_bin"
if ! cmp -s "$runc_bin" /usr/local/sbin/runc; then
  install -D -m 0755 "$runc_bin" /usr/local/sbin/runc
  restart=true
fi

cni_tgz=$arg_cache_dir/${arg_cni_url##*/}
km_fetch_verified "$arg_cni_url" "$arg_cni_sha256" "$cni_tgz"
if ! km_is_installed cni-plugins "$arg_cni_sha256"; then
  mkdir -p /opt/cni/bin
  tar -xzf "$cni_tgz" -C /opt/cni/bin
  km_mark_installed cni-plugins "$arg_cni_sha256"
fi

# containerd's own unit, as the program rendered it (ExecStart /usr/local/bin/containerd).
km_put_file /etc/systemd/system/containerd.service 0644 "$(base64 -d <<<"$arg_unit_b64")"
if $km_changed; then
  systemctl daemon-reload
  restart=true
fi

config=$(base64 -d <<<"$arg_config_b64")
candidate=$(mktemp)
printf '%s\n' "$config" >"$candidate"
if ! errors=$(/usr/local/bin/containerd --config "$candidate" config dump 2>&1 >/dev/null); then
  rm -f "$candidate"
  km_die "containerd rejects the rendered config: $errors"
fi
rm -f "$candidate"
km_put_file /etc/containerd/config.toml 0644 "$config"
if $km_changed; then
  restart=true
fi

systemctl enable --quiet containerd
if $restart; then
  systemctl restart containerd
else
  systemctl start containerd
fi
km_wait_containerd
