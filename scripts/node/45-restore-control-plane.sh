#!/usr/bin/env bash
# First control plane, on a new VM, before 50-kubeadm-init.sh: brings the cluster back from its
# newest complete backup in Cloud Storage (kata-mesh-backup's gs://BUCKET/PREFIX/<time>-<node>/,
# complete when its manifest.json is there), or from the one --backup-object names. With none, it
# says that a new cluster is being initialised and leaves the node as it was.
#
# Everything is checked before anything on the node changes: both files' sha256 against the
# manifest, the snapshot read by `snapshot status` and restored (which checks the sha256 etcd
# appended to it) into a scratch folder beside --data-dir, the PKI tarball's entries. Only then:
# kubeadm's shared cluster identity (the cluster CA, the service-account keys, the front-proxy CA and
# the etcd CA; kubeadm init makes this node's own certificates from them, for its own name and
# address) goes into --pki-dir, the restored member (named after this node, with its peer URL, the
# only member) becomes --data-dir, and --marker-file says `state=complete`. 50-kubeadm-init.sh reads
# that marker: kubeadm init must then accept the existing etcd data
# (--ignore-preflight-errors=DirAvailable--var-lib-etcd) and never `kubeadm reset` (that deletes
# the data dir and the PKI).
#
# A node that has etcd data or a cluster CA already (it is no new VM) is left alone, and so is a
# node this step restored before (a second run changes nothing). A run interrupted after it began
# to change the node (the marker says `state=restoring`) starts again.
#
# With --rejoining true (62-rejoin-token.sh found control planes that survive, and made a join for
# this one) nothing is restored: their data is newer than any backup; 50-kubeadm-init.sh joins them.
#
# etcdutl (etcd 3.5+) reads and restores snapshots when it is there; else etcdctl (etcd 3.4 does
# both; 3.6's no longer can). An etcdutl that can (3.5.10+, 3.6) moves the restored revision on by
# a billion and marks it compacted, as Kubernetes asks of a restore: every watch that outlived the
# old cluster (the survivors' controllers, kubelets) then relists, rather than waiting for
# revisions it saw before the restore to come again with other contents.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi
umask 077
export LC_ALL=C

arg_bucket=""
arg_prefix=""
arg_node_name=""
arg_peer_url=""
arg_data_dir=""
arg_pki_dir=""
arg_marker_file=""
arg_backup_object=""
arg_metadata_url=http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token
arg_storage_url=https://storage.googleapis.com
arg_retries=5
arg_rejoining=false
km_parse_args "$@"
km_require_args bucket prefix node_name peer_url data_dir pki_dir marker_file metadata_url storage_url
[[ $arg_bucket =~ ^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$ ]] || km_die "--bucket is not a bucket name: $arg_bucket"
[[ $arg_prefix =~ ^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$ ]] ||
  km_die "--prefix must be object name parts separated by /, without a leading or trailing /: $arg_prefix"
[[ $arg_node_name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || km_die "--node-name is not a node name: $arg_node_name"
[[ $arg_peer_url =~ ^https?://[A-Za-z0-9.:-]+:[0-9]+$ ]] ||
  km_die "--peer-url must be etcd's peer URL, https://ADDRESS:PORT, not: $arg_peer_url"
for path in "$arg_data_dir" "$arg_pki_dir" "$arg_marker_file"; do
  [[ $path == /?*/?* && $path != */ ]] || km_die "not an absolute path in a folder: $path"
done
[[ $arg_retries =~ ^[0-9]+$ ]] || km_die "--retries must be a whole number, not: $arg_retries"
case $arg_rejoining in
  true)
    km_log "other control planes survive: $arg_node_name joins them (their data is newer than any backup); nothing restored"
    exit 0
    ;;
  false) ;;
  *) km_die "--rejoining must be true or false, not: $arg_rejoining" ;;
esac
# The kubeadm files every control plane shares (what `kubeadm init --upload-certs` shares).
shared_pki=(ca.crt ca.key sa.key sa.pub front-proxy-ca.crt front-proxy-ca.key etcd/ca.crt etcd/ca.key)
where="gs://$arg_bucket/$arg_prefix/"
# What Kubernetes' etcd restore guide bumps by: more than the writes any cluster makes between two
# backups.
revision_bump=1000000000

# 1. What this node is: restored already, or no new VM, or a restore interrupted half-way.
marker_state=""
if [[ -f $arg_marker_file ]]; then
  marker_state=$(sed -n 's/^state=//p' "$arg_marker_file")
fi
if [[ $marker_state == complete ]]; then
  [[ -d $arg_data_dir/member ]] ||
    km_die "$arg_marker_file says this node was restored, but $arg_data_dir has no etcd member (kubeadm reset?); delete $arg_marker_file to restore again"
  km_log "already restored ($(sed -n 's/^backup=//p' "$arg_marker_file")); nothing to do"
  exit 0
fi
if [[ $marker_state != restoring ]]; then
  if [[ -d $arg_data_dir && -n $(ls -A "$arg_data_dir") ]] || [[ -e $arg_pki_dir/ca.key ]]; then
    km_log "this node has etcd data ($arg_data_dir) or a cluster CA ($arg_pki_dir) already: no new control plane, nothing restored"
    exit 0
  fi
fi

for tool in curl jq tar sha256sum; do
  command -v "$tool" >/dev/null || km_die "$tool is not installed; nothing was changed"
done
snapshot_tool=etcdctl
command -v etcdutl >/dev/null && snapshot_tool=etcdutl
command -v "$snapshot_tool" >/dev/null ||
  km_die "neither etcdutl nor etcdctl is installed (the pinned etcd release provides them); nothing was changed"
etcdctl() { ETCDCTL_API=3 command etcdctl "$@"; }
etcdutl() { ETCDCTL_API=3 command etcdutl "$@"; }

# 2. Cloud Storage, as the VM's service account. Any failure stops here: a cluster initialised
# anew beside a backup it could not read would lose it (its own backups would be the newest).
token_response=$(curl -fsS --retry "$arg_retries" --retry-connrefused --connect-timeout 10 --max-time 60 \
  -H 'Metadata-Flavor: Google' "$arg_metadata_url") ||
  km_die "could not get an access token from the metadata server ($arg_metadata_url); nothing was changed"
token=$(jq -r '.access_token // empty' <<<"$token_response" 2>/dev/null) || token=""
[[ $token =~ ^[A-Za-z0-9._~+/=-]+$ ]] || km_die "the metadata server gave no access token; nothing was changed"
unset token_response
uri() { jq -rn --arg s "$1" '$s | @uri'; }

# gcs_get OUT URL WHAT: a GET with the token (in a config on stdin, never an argument); fails naming
# WHAT with Cloud Storage's own message.
gcs_get() {
  local out=$1 url=$2 what=$3 code why
  code=$(curl -sS --retry "$arg_retries" --retry-connrefused --connect-timeout 20 -o "$out" \
    -w '%{http_code}' -K - "$url" <<<"header = \"Authorization: Bearer $token\"") || true
  [[ $code == 2?? ]] && return 0
  why=$(jq -r '.error.message // empty' "$out" 2>/dev/null) || why=""
  why=${why%.}
  case $code in
    401 | 403) why+=" (the VM needs the devstorage.read_write scope, and its service account roles/storage.objectViewer on the bucket)" ;;
    000) why="no answer from $arg_storage_url" ;;
  esac
  km_die "could not read $what: HTTP $code ${why}; nothing was changed"
}

listing=$(mktemp)
trap 'rm -f "$listing"' EXIT
list_url="$arg_storage_url/storage/v1/b/$arg_bucket/o?prefix=$(uri "$arg_prefix/")&fields=$(uri 'items(name),nextPageToken')"
manifests=()
page=""
while :; do
  gcs_get "$listing" "$list_url${page:+&pageToken=$(uri "$page")}" "the backups under $where"
  # A listing that does not read is no empty bucket.
  found=$(jq -er --arg p "$arg_prefix/" '(.items // []) | map(.name
    | select(startswith($p)) | ltrimstr($p)
    | select(test("^[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9._-]+/manifest[.]json$")) | rtrimstr("/manifest.json"))
    | join("\n")' "$listing") || km_die "Cloud Storage's listing of $where does not read as JSON; nothing was changed"
  [[ -n $found ]] && mapfile -t -O "${#manifests[@]}" manifests <<<"$found"
  page=$(jq -r '.nextPageToken // empty' "$listing")
  [[ -n $page ]] || break
done
mapfile -t manifests < <(printf '%s\n' "${manifests[@]}" | sed '/^$/d' | sort)
recent=$(printf '%s\n' "${manifests[@]}" | tail -n 5 | tr '\n' ' ')
recent=${recent% }

if [[ -n $arg_backup_object ]]; then
  # The backup's folder (PREFIX/ID) or any object in it.
  wanted=${arg_backup_object#gs://"$arg_bucket"/}
  wanted=${wanted#"$arg_prefix"/}
  wanted=${wanted%%/*}
  backup=""
  for id in "${manifests[@]}"; do
    if [[ $id == "$wanted" ]]; then backup=$id; fi
  done
  [[ -n $backup ]] ||
    km_die "no complete backup $arg_backup_object under $where (the newest: ${recent:-none}); nothing was changed"
elif ((${#manifests[@]} == 0)); then
  [[ $marker_state != restoring ]] ||
    km_die "an earlier restore ($(sed -n 's/^backup=//p' "$arg_marker_file")) did not finish, and $where now holds no complete backup; nothing was changed"
  km_log "no complete backup under $where: initialising a new cluster"
  exit 0
else
  backup=${manifests[-1]}
fi
source_name="$where$backup/"
km_log "restoring from $source_name"

# 3. Download and check everything, in a scratch folder beside the data dir (the same file system:
# the restored member moves into place in one rename).
mkdir -p "$(dirname "$arg_data_dir")"
work=$(mktemp -d "$arg_data_dir.kata-mesh-restore.XXXXXX")
trap 'rm -f "$listing"; rm -rf -- "$work"' EXIT
# tool_error: the one line of etcdutl's or etcdctl's output worth showing (Go's panics print pages).
tool_error() { grep -E -m 1 '^Error|^fatal error|^panic' "$work/tool.log" || tail -n 1 "$work/tool.log"; }
refuse() { km_die "$source_name: $*; nothing was changed (to restore another backup, pass --backup-object with one of the newest: $recent)"; }
object_url() { printf '%s/storage/v1/b/%s/o/%s?alt=media' "$arg_storage_url" "$arg_bucket" "$(uri "$arg_prefix/$backup/$1")"; }
gcs_get "$work/manifest.json" "$(object_url manifest.json)" "${source_name}manifest.json"
jq -e '.format == 1 and .etcd.object == "etcd.db" and .pki.object == "pki.tar.gz"
  and (.etcd.sha256 | test("^[0-9a-f]{64}$")) and (.pki.sha256 | test("^[0-9a-f]{64}$"))' \
  "$work/manifest.json" >/dev/null 2>&1 || refuse "manifest.json is not a kata-mesh backup manifest (format 1)"
for part in etcd pki; do
  object=$(jq -r ".$part.object" "$work/manifest.json")
  expected=$(jq -r ".$part.sha256" "$work/manifest.json")
  gcs_get "$work/$object" "$(object_url "$object")" "$source_name$object"
  actual=$(km_sha256_of "$work/$object")
  [[ $actual == "$expected" ]] ||
    refuse "checksum mismatch for $object: the manifest says sha256 $expected, the download has $actual"
done
if ! $snapshot_tool snapshot status "$work/etcd.db" -w json >"$work/status.json" 2>"$work/tool.log" ||
  ! revision=$(jq -er '.revision' "$work/status.json" 2>/dev/null); then
  refuse "etcd.db is no readable etcd snapshot ($snapshot_tool snapshot status: $(tool_error))"
fi
# Restore checks the sha256 that `snapshot save` appended: a snapshot damaged before its upload
# stops here. The member is this node, alone, at its own peer URL, as kubeadm's etcd will run it.
bump=()
if [[ $snapshot_tool == etcdutl ]] && etcdutl snapshot restore --help 2>&1 | grep -q -- --bump-revision; then
  bump=(--bump-revision "$revision_bump" --mark-compacted)
fi
if ! $snapshot_tool snapshot restore "$work/etcd.db" --name "$arg_node_name" \
  --initial-cluster "$arg_node_name=$arg_peer_url" --initial-advertise-peer-urls "$arg_peer_url" \
  --data-dir "$work/etcd" "${bump[@]}" >"$work/tool.log" 2>&1; then
  refuse "etcd.db does not restore ($snapshot_tool snapshot restore: $(tool_error))"
fi
# Our own tarball holds ./ and names below it; anything else (an absolute path, ..) is refused.
entries=$(tar -tzf "$work/pki.tar.gz" 2>/dev/null) || refuse "pki.tar.gz is no gzip tarball"
while IFS= read -r entry; do
  [[ $entry =~ ^\./([A-Za-z0-9_][A-Za-z0-9._-]*/?)*$ ]] || refuse "pki.tar.gz holds an unexpected entry: $entry"
done <<<"$entries"
mkdir "$work/pki"
tar -C "$work/pki" --no-same-owner --no-same-permissions -xzf "$work/pki.tar.gz" ||
  refuse "pki.tar.gz does not unpack"
for file in "${shared_pki[@]}"; do
  [[ -f $work/pki/$file && -s $work/pki/$file ]] || refuse "pki.tar.gz has no $file"
done

# 4. Now the node changes: the marker first (a run that dies from here on starts again). Folders
# made from here on are kubeadm's usual 0755; every file gets its mode explicitly.
umask 022
km_put_file "$arg_marker_file" 0644 "$(printf 'backup=%s\nrevision=%s\nstate=restoring' "$source_name" "$revision")"
mkdir -p "$arg_pki_dir/etcd"
chmod 0755 "$arg_pki_dir" "$arg_pki_dir/etcd"
for file in "${shared_pki[@]}"; do
  mode=0644
  [[ $file == *.key ]] && mode=0600
  install -m "$mode" -o root -g root "$work/pki/$file" "$arg_pki_dir/$file"
done
rm -rf -- "$arg_data_dir"
chmod 0700 "$work/etcd"
mv -- "$work/etcd" "$arg_data_dir"
km_put_file "$arg_marker_file" 0644 "$(printf 'backup=%s\nrevision=%s\nstate=complete' "$source_name" "$revision")"
((${#bump[@]} == 0)) || revision="$revision, moved on by $revision_bump and compacted"
km_log "restored $source_name (etcd revision $revision): member $arg_node_name at $arg_peer_url in $arg_data_dir, the cluster CA in $arg_pki_dir; kubeadm init goes on from them"
