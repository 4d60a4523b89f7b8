#!/usr/bin/env bash
# Node image builder only, last: readies the builder's disk to become the node image. What belongs
# to the builder VM goes (its identity, keys, logs, caches and rollout marker), what the node steps
# installed stays (containerd, runc, Kata, the CNI plugins, kubelet/kubeadm/kubectl, the pulled
# images, the modules and sysctls files), and the manifest that 12-node-image.sh checks is written
# last. --root / seals this very VM; any other --root seals a copy of a root file system there and
# leaves the running system alone. Running it again leaves the same tree.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_root=""
arg_manifest=""
arg_manifest_b64=""
arg_rollout_marker=""
arg_host_key_dir=""
arg_sshd_dropin=""
km_parse_args "$@"
km_require_args root manifest manifest_b64 rollout_marker host_key_dir sshd_dropin

# Everything is checked before the first removal: a refused run leaves the tree as it was.
[[ $arg_root == /* ]] || km_die "--root must be an absolute path, not: $arg_root"
[[ /$arg_root/ != *"/../"* && /$arg_root/ != *"/./"* ]] || km_die "--root must not hold . or .. parts: $arg_root"
[[ -d $arg_root ]] || km_die "--root $arg_root is no directory"
root=$(cd -P -- "$arg_root" && pwd -P) || km_die "cannot enter --root $arg_root"
live=false
# The same directory as / (a link, or "//", which pwd keeps as it is) is the running system.
if [[ $root -ef / ]]; then
  # The live system only when asked for by name, never through a link that leads there.
  [[ $arg_root =~ ^/+$ ]] || km_die "--root $arg_root is the running system's root: pass --root / to seal it"
  live=true
  root=/
  ((EUID == 0)) || km_die "sealing the running system needs root"
fi
# The paths below are joined to it: "" for the live root.
r=${root%/}

for path in "$arg_manifest" "$arg_rollout_marker" "$arg_host_key_dir" "$arg_sshd_dropin"; do
  [[ $path == /?*/?* && /$path/ != *"/../"* && /$path/ != *"/./"* && $path != */ ]] ||
    km_die "not an absolute path in a folder (taken inside --root): $path"
done
[[ ! -d $r$arg_manifest || -L $r$arg_manifest ]] || km_die "$r$arg_manifest is a directory, not a manifest"
# A link in one of these would lead the removals out of --root.
for top in etc var root home tmp; do
  [[ ! -L $r/$top ]] || km_die "$r/$top is a link; refusing to follow it out of --root"
done

manifest=$(base64 -d <<<"$arg_manifest_b64" 2>/dev/null) || km_die "--manifest-b64 is not base64"
first=true
while IFS= read -r line; do
  if $first; then
    [[ $line =~ ^inputs-hash=[0-9a-f]{64}$ ]] ||
      km_die "the manifest must start with inputs-hash=<sha256>, not: $line"
    first=false
  fi
  [[ $line =~ ^[A-Za-z0-9][A-Za-z0-9._-]*=[^[:cntrl:]]*$ ]] || km_die "the manifest has a line that is not key=value: $line"
done <<<"$manifest"

# The live system first stops whatever would write keys, state or logs behind the removals: the
# kubelet, containerd (its images stay on disk), and Google's guest agent, which writes users'
# authorized_keys and host keys (google-guest-agent-manager is its newer packaging's unit).
unit_exists() { [[ $(systemctl show -p LoadState --value "$1.service" 2>/dev/null) != not-found ]]; }
if $live; then
  for unit in kubelet containerd google-guest-agent google-guest-agent-manager; do
    if unit_exists "$unit"; then
      systemctl stop "$unit.service" || km_die "could not stop $unit"
    fi
  done
fi

# The old manifest goes first: a disk sealed halfway carries none, and no node takes it for an image.
rm -f -- "$r$arg_manifest"

shopt -s nullglob

# clear_dir DIR [FIND TESTS...]: removes DIR's entries (those that pass the tests), not DIR itself,
# and nothing on another file system.
clear_dir() {
  local dir=$1
  shift
  [[ -d $dir && ! -L $dir ]] || return 0
  find "$dir" -xdev -mindepth 1 -maxdepth 1 "$@" -exec rm -rf --one-file-system -- {} +
}

# cloud-init runs again on every VM made from the image, as on a first boot (new host keys,
# the stack's user-data).
clear_dir "$r/var/lib/cloud"
rm -f -- "$r"/var/log/cloud-init*.log

# One machine ID per VM: systemd makes a new one at the first boot when the file is empty. dbus's
# own copy goes unless it is the usual link to /etc/machine-id.
machine_id=$r/etc/machine-id
if [[ -L $machine_id ]]; then
  rm -f -- "$machine_id"
  : >"$machine_id"
elif [[ -s $machine_id ]]; then
  : >"$machine_id"
fi
if [[ -f $r/var/lib/dbus/machine-id && ! -L $r/var/lib/dbus/machine-id ]]; then
  rm -f -- "$r/var/lib/dbus/machine-id"
fi
# The same random seed on every node would be credited to none of them, but shared all the same.
rm -f -- "$r/var/lib/systemd/random-seed"

# apt's caches and package lists: a node that needs a package refreshes them (km_apt_ensure).
rm -f -- "$r"/var/cache/apt/*.bin
clear_dir "$r/var/cache/apt/archives" -name '*.deb'
clear_dir "$r/var/cache/apt/archives/partial"
clear_dir "$r/var/lib/apt/lists" ! -name lock ! -name partial
clear_dir "$r/var/lib/apt/lists/partial"

# The builder's logs: the journal's files (its folder stays, so journald keeps persisting), rotated
# logs, and every other log emptied in place (daemons reopen them with their owners and modes).
clear_dir "$r/var/log/journal"
if [[ -d $r/var/log && ! -L $r/var/log ]]; then
  find "$r/var/log" -xdev \( -type f -o -type l \) \
    \( -name '*.gz' -o -name '*.xz' -o -name '*.zst' -o -name '*.[0-9]' -o -name '*.old' \) -delete
  find "$r/var/log" -xdev -type f -size +0 -exec truncate -s 0 -- {} +
fi
clear_dir "$r/tmp"
clear_dir "$r/var/tmp"
km_log "removed the builder's cloud-init state, machine ID, apt caches, logs and temporary files"

# A node reaches its rollout when 12-node-image.sh writes this, never by inheriting the builder's.
rm -f -- "$r$arg_rollout_marker"

# Disabled, as on a stock node before kubeadm: 12-node-image.sh enables it, kubeadm starts it.
if $live && unit_exists kubelet; then
  systemctl disable --now --quiet kubelet.service || km_die "could not disable kubelet"
fi
rm -f -- "$r"/etc/systemd/system/*.wants/kubelet.service

# The builder's SSH identity, last before the manifest, so that a seal that fails earlier can be run
# again over SSH: its host keys, the pinned host key and the drop-in that serves it (a node gets its
# own through cloud-init), and every key that could log in to it.
rm -f -- "$r"/etc/ssh/ssh_host_*
rm -rf --one-file-system -- "$r$arg_host_key_dir"
rm -f -- "$r$arg_sshd_dropin"
for home in "$r/root" "$r"/home/*; do
  [[ -d $home && ! -L $home ]] || continue
  if [[ -d $home/.ssh && ! -L $home/.ssh ]]; then
    rm -f -- "$home/.ssh/authorized_keys" "$home/.ssh/authorized_keys2"
  fi
  find "$home" -xdev -mindepth 1 -maxdepth 1 -name '.*history' \( -type f -o -type l \) -delete
done
km_log "removed the builder's SSH host keys, authorized keys and shell histories"

# The manifest last, whole (a rename), with exactly the content the program rendered.
mkdir -p -- "$(dirname -- "$r$arg_manifest")"
staged=$(mktemp "$r$arg_manifest.XXXXXX.new")
trap 'rm -f -- "$staged"' EXIT
base64 -d <<<"$arg_manifest_b64" >"$staged"
chmod 0644 "$staged"
mv -f -- "$staged" "$r$arg_manifest"
trap - EXIT
if $live; then
  sync
else
  sync -- "$r$arg_manifest"
fi
km_log "sealed ${root}: wrote $r$arg_manifest (${manifest%%$'\n'*})"
