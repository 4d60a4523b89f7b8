#!/usr/bin/env bash
# kata-mesh-backup: one backup of this control plane, run by kata-mesh-backup.timer (installed as
# /usr/local/sbin/kata-mesh-backup; self-contained: it reads no lib.sh, so it keeps working
# whatever the node steps become). In order:
#   1. an etcd snapshot, taken by the host's etcdctl (the pinned etcd release's, installed beside
#      etcdutl) as a client of the local member with kubeadm's healthcheck-client certificate;
#   2. the snapshot verified: `snapshot status` (etcdutl when there, else etcdctl) reads it, and a
#      trial `snapshot restore` into a scratch folder checks the sha256 etcd appends to it;
#   3. a tarball of kubeadm's PKI folder (0600: it holds the cluster's CA keys);
#   4. both, then manifest.json (their sha256 and sizes, the snapshot's revision) uploaded last to
#      gs://BUCKET/PREFIX/<UTC time>-<node>/ with Cloud Storage's JSON API, as the VM's service
#      account (token from the metadata server). A backup without its manifest is incomplete and
#      never restored.
# Each backup first lands whole in STAGING/<UTC time>-<node>/ (0700), and the newest --keep-local
# stay there whatever the upload does: a failed upload leaves the snapshot on disk and exits
# non-zero (the systemd unit shows as failed).
set -euo pipefail
umask 077
export LC_ALL=C

log() { printf '[kata-mesh-backup] %s\n' "$*" >&2; }
die() {
  printf '[kata-mesh-backup] ERROR: %s\n' "$*" >&2
  exit 1
}

arg_bucket=""
arg_prefix=""
arg_node_name=""
arg_keep_local=3
arg_etcd_endpoint=https://127.0.0.1:2379
arg_cacert=/etc/kubernetes/pki/etcd/ca.crt
arg_cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt
arg_key=/etc/kubernetes/pki/etcd/healthcheck-client.key
arg_pki_dir=/etc/kubernetes/pki
arg_staging_dir=/var/backups/kata-mesh
arg_metadata_url=http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token
arg_storage_url=https://storage.googleapis.com
arg_retries=5

# --some-name VALUE pairs set arg_some_name; names not declared above are refused.
while (($#)); do
  [[ $1 == --?* && $# -ge 2 ]] || die "expected --name value pairs, got: $*"
  name=arg_${1#--}
  name=${name//-/_}
  [[ -v $name ]] || die "unknown argument: $1"
  printf -v "$name" '%s' "$2"
  shift 2
done
missing=()
for name in bucket prefix node_name; do
  var=arg_$name
  [[ -n ${!var} ]] || missing+=("--${name//_/-}")
done
((${#missing[@]} == 0)) || die "missing required argument(s): ${missing[*]}"
[[ $arg_bucket =~ ^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$ ]] || die "--bucket is not a bucket name: $arg_bucket"
[[ $arg_prefix =~ ^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$ ]] ||
  die "--prefix must be object name parts separated by /, without a leading or trailing /: $arg_prefix"
[[ $arg_node_name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "--node-name is not a node name: $arg_node_name"
[[ $arg_keep_local =~ ^[1-9][0-9]*$ ]] || die "--keep-local must be 1 or more, not: $arg_keep_local"
[[ $arg_retries =~ ^[0-9]+$ ]] || die "--retries must be a whole number, not: $arg_retries"
[[ $arg_staging_dir == /?* ]] || die "--staging-dir must be an absolute path, not: $arg_staging_dir"
for tool in etcdctl curl jq tar sha256sum flock; do
  command -v "$tool" >/dev/null || die "$tool is not installed (the backup needs it)"
done
# etcdutl (etcd 3.5+) reads and restores snapshot files; etcd 3.4's etcdctl does it itself (3.6's
# no longer can).
snapshot_tool=etcdctl
command -v etcdutl >/dev/null && snapshot_tool=etcdutl
etcdctl() { ETCDCTL_API=3 command etcdctl "$@"; }
etcdutl() { ETCDCTL_API=3 command etcdutl "$@"; }

mkdir -p "$arg_staging_dir"
chmod 0700 "$arg_staging_dir"
exec 9>>"$arg_staging_dir/.lock"
flock -n 9 || die "another backup is running (lock $arg_staging_dir/.lock)"

# What an interrupted run left behind is incomplete: gone.
for stale in "$arg_staging_dir"/*.partial; do
  if [[ -e $stale ]]; then rm -rf -- "$stale"; fi
done

# prune: keeps the newest --keep-local complete local backups (their names sort by time).
prune() {
  local backups=() i
  for i in "$arg_staging_dir"/[0-9]*T[0-9]*Z-*/; do
    if [[ -d $i ]]; then backups+=("${i%/}"); fi
  done
  for ((i = 0; i < ${#backups[@]} - arg_keep_local; i++)); do
    rm -rf -- "${backups[i]}"
    log "pruned the local backup ${backups[i]}"
  done
}

# tail_of FILE: the one line of a tool's output worth showing (Go's panics print pages of stacks).
tail_of() { grep -E -m 1 'is unhealthy|^Error|^fatal error|^panic' "$1" || tail -n 1 "$1"; }

id=$(date -u +%Y%m%dT%H%M%SZ)-$arg_node_name
final=$arg_staging_dir/$id
[[ ! -e $final ]] || die "$final exists already (one backup per second and node)"
work=$final.partial
mkdir -m 0700 "$work"
trap 'rm -rf -- "$work"' EXIT

# 1. The snapshot. etcdctl keeps trying a member that does not answer until its --command-timeout,
# which bounds the whole transfer of a snapshot (etcd 3.4): a quick health check first.
log "taking an etcd snapshot from $arg_etcd_endpoint"
client=(--endpoints="$arg_etcd_endpoint" --cacert="$arg_cacert" --cert="$arg_cert" --key="$arg_key" --dial-timeout=5s)
if ! etcdctl "${client[@]}" --command-timeout=5s endpoint health >"$work/tool.log" 2>&1 ||
  ! etcdctl "${client[@]}" --command-timeout=30m snapshot save "$work/etcd.db" >"$work/tool.log" 2>&1; then
  die "could not take a snapshot from $arg_etcd_endpoint: $(tail_of "$work/tool.log"); nothing was uploaded"
fi

# 2. Verified: readable, and whole (restore checks the sha256 that snapshot save appended).
if ! status=$($snapshot_tool snapshot status "$work/etcd.db" -w json 2>"$work/tool.log") ||
  ! revision=$(jq -er '.revision' <<<"$status" 2>/dev/null); then
  die "the snapshot just taken does not read back ($snapshot_tool snapshot status: $(tail_of "$work/tool.log")); nothing was uploaded"
fi
if ! $snapshot_tool snapshot restore "$work/etcd.db" --data-dir "$work/verify.etcd" >"$work/tool.log" 2>&1; then
  die "the snapshot just taken does not restore ($(tail_of "$work/tool.log")); nothing was uploaded"
fi
rm -rf -- "$work/verify.etcd" "$work/tool.log"
chmod 0600 "$work/etcd.db"

# 3. The PKI: CA keys included, so 0600 like the snapshot (which holds every Secret).
for file in ca.crt ca.key sa.key sa.pub front-proxy-ca.crt front-proxy-ca.key etcd/ca.crt etcd/ca.key; do
  [[ -f $arg_pki_dir/$file ]] || die "$arg_pki_dir/$file is missing (is this a control plane?); nothing was uploaded"
done
tar -C "$arg_pki_dir" --numeric-owner -czf "$work/pki.tar.gz" .
chmod 0600 "$work/pki.tar.gz"

# 4. The manifest: uploaded last, it marks the backup complete.
jq -n --arg id "$id" --arg node "$arg_node_name" --arg created "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --arg etcd_sha256 "$(sha256sum "$work/etcd.db" | cut -d' ' -f1)" --arg etcd_size "$(stat -c %s "$work/etcd.db")" \
  --arg pki_sha256 "$(sha256sum "$work/pki.tar.gz" | cut -d' ' -f1)" --arg pki_size "$(stat -c %s "$work/pki.tar.gz")" \
  --argjson status "$status" '{
    format: 1, id: $id, node: $node, created: $created,
    etcd: {object: "etcd.db", sha256: $etcd_sha256, size: ($etcd_size | tonumber),
      revision: $status.revision, totalKey: $status.totalKey, totalSize: $status.totalSize},
    pki: {object: "pki.tar.gz", sha256: $pki_sha256, size: ($pki_size | tonumber)}
  }' >"$work/manifest.json"
mv -- "$work" "$final"
trap - EXIT
log "backup $id (etcd revision $revision) is at $final"
prune

# 5. Upload, as the VM's service account.
dest="gs://$arg_bucket/$arg_prefix/$id/"
fail() { die "$*; the backup stays at $final (the newest $arg_keep_local local backups are kept)"; }
token_response=$(curl -fsS --retry "$arg_retries" --retry-connrefused --connect-timeout 10 --max-time 60 \
  -H 'Metadata-Flavor: Google' "$arg_metadata_url") ||
  fail "could not get an access token from the metadata server ($arg_metadata_url)"
token=$(jq -r '.access_token // empty' <<<"$token_response" 2>/dev/null) || token=""
[[ $token =~ ^[A-Za-z0-9._~+/=-]+$ ]] || fail "the metadata server gave no access token"
unset token_response

upload() {
  local file=$1 object=$2 out code size
  out=$(mktemp)
  # The token reaches curl in a config on stdin: never an argument (the process list).
  code=$(curl -sS --retry "$arg_retries" --retry-connrefused --connect-timeout 20 -X POST -T "$file" \
    -H 'Content-Type: application/octet-stream' -H 'Expect:' -o "$out" -w '%{http_code}' -K - \
    "$arg_storage_url/upload/storage/v1/b/$arg_bucket/o?uploadType=media&ifGenerationMatch=0&name=$(jq -rn --arg s "$object" '$s | @uri')" \
    <<<"header = \"Authorization: Bearer $token\"") || true
  if [[ $code != 2?? ]]; then
    local why
    why=$(jq -r '.error.message // empty' "$out" 2>/dev/null) || why=""
    why=${why%.}
    rm -f "$out"
    case $code in
      401 | 403) why+=" (the VM needs the devstorage.read_write scope, and its service account roles/storage.objectCreator on the bucket)" ;;
      000) why="no answer from $arg_storage_url" ;;
    esac
    fail "upload of gs://$arg_bucket/$object failed: HTTP $code ${why}"
  fi
  size=$(jq -r '.size // empty' "$out" 2>/dev/null) || size=""
  rm -f "$out"
  [[ $size == "$(stat -c %s "$file")" ]] ||
    fail "Cloud Storage holds ${size:-no} bytes for gs://$arg_bucket/$object, not the $(stat -c %s "$file") sent"
}
for file in etcd.db pki.tar.gz manifest.json; do
  upload "$final/$file" "$arg_prefix/$id/$file"
done
log "uploaded to $dest (etcd.db, pki.tar.gz, manifest.json)"
