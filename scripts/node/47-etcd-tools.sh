#!/usr/bin/env bash
# Control planes, before 45-restore-control-plane.sh and kata-mesh-backup: the host's etcdctl and
# etcdutl, of the etcd version this Kubernetes runs, taken out of the very etcd image kubeadm pins
# (`kubeadm config images list`). No checksum of etcd's GitHub release can be pinned offline; the
# registry serves the image over TLS and containerd checks every blob against its manifest's digests.
# etcd's own image build (its Dockerfile, `ADD etcdctl /usr/local/bin/`, `ADD etcdutl
# /usr/local/bin/`) puts both tools in /usr/local/bin, static binaries on a distroless base, so they
# run on the host as they are. Kubernetes' older builds of that image (cluster/images/etcd) copied
# etcd and etcdctl only: an image without a tool is refused.
#
# The image is pulled through the CRI, mounted read-only, both tools copied to hidden files in
# --bin-dir and asked for their version there; only when both print the image's etcd version do
# they replace the installed ones (a rename each). Tools already at that version: nothing to do.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_kubernetes_version=""
arg_cri_socket=""
arg_bin_dir=""
arg_tools=""
km_parse_args "$@"
km_require_args kubernetes_version cri_socket bin_dir tools
kubernetes_version=${arg_kubernetes_version#v}
[[ $kubernetes_version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
  km_die "--kubernetes-version must be MAJOR.MINOR.PATCH, not: $arg_kubernetes_version"
[[ $arg_cri_socket == unix:///?* ]] || km_die "--cri-socket must be unix:///PATH, not: $arg_cri_socket"
[[ $arg_bin_dir == /?* && $arg_bin_dir != */ ]] || km_die "--bin-dir must be an absolute path, not: $arg_bin_dir"
read -r -a tools <<<"$arg_tools"
((${#tools[@]} > 0)) || km_die "--tools names no tool"
for tool in "${tools[@]}"; do
  [[ $tool =~ ^[a-z][a-z0-9_-]*$ ]] || km_die "--tools: not a tool name: $tool"
done
address=${arg_cri_socket#unix://}
ctr_k8s=(ctr --address "$address" --namespace k8s.io)

# 1. The etcd image kubeadm would run (registry.k8s.io/etcd:3.6.5-0: etcd 3.6.5, image build 0).
listed=$(kubeadm config images list --kubernetes-version "v$kubernetes_version" 2>&1) ||
  km_die "kubeadm config images list --kubernetes-version v$kubernetes_version failed: $listed"
images=$(grep -E '^[^[:space:]]+/etcd:[^[:space:]]+$' <<<"$listed" || true)
[[ -n $images ]] ||
  km_die "kubeadm lists no etcd image for Kubernetes v$kubernetes_version (no line with /etcd:), so the etcd tools' version is unknown: $listed"
[[ $images != *$'\n'* ]] || km_die "kubeadm lists more than one etcd image: ${images//$'\n'/ }"
image=$images
tag=${image##*:}
[[ $tag =~ ^([0-9]+\.[0-9]+\.[0-9]+)(-[0-9A-Za-z.]+)?$ ]] ||
  km_die "the etcd image's tag is not an etcd version (VERSION-BUILD): $image"
etcd_version=${BASH_REMATCH[1]}

# version_of FILE NAME: the version FILE prints for `version` ("NAME version: 3.6.5", as etcd's
# etcdctl and etcdutl both print it), or nothing.
version_of() {
  local file=$1 name=$2 out line
  out=$("$file" version 2>/dev/null) || return 0
  while IFS= read -r line; do
    if [[ $line == "$name version: "* ]]; then
      printf '%s' "${line#"$name version: "}"
      return 0
    fi
  done <<<"$out"
}

# 2. Already there at this version: nothing to do.
current=true
for tool in "${tools[@]}"; do
  if [[ ! -x $arg_bin_dir/$tool || $(version_of "$arg_bin_dir/$tool" "$tool") != "$etcd_version" ]]; then
    current=false
  fi
done
if $current; then
  km_log "${tools[*]} in $arg_bin_dir are etcd $etcd_version already ($image); nothing to do"
  exit 0
fi

# 3. Pulled through the CRI: the same registry path, namespace (k8s.io) and snapshotter as the
# kubelet's, so kubeadm init's etcd finds the image there, and the pull is checked by digest.
mount_dir=""
mount_attempted=false
staged=()
cleanup() {
  local file
  for file in "${staged[@]}"; do rm -f -- "$file"; done
  if $mount_attempted; then
    # --rm drops the read-only snapshot and the lease `images mount` took (keyed by the mount
    # path; it would otherwise hold the snapshot for 24 h with containerd 1.7, 1 h with 2.x).
    "${ctr_k8s[@]}" images unmount --rm "$mount_dir" >/dev/null ||
      km_log "could not unmount $mount_dir (ctr images unmount); it stays mounted"
  fi
  if [[ -n $mount_dir ]]; then
    rmdir -- "$mount_dir" 2>/dev/null || km_log "$mount_dir is left behind (not empty: still mounted?)"
  fi
}
trap cleanup EXIT

km_log "pulling $image (etcd $etcd_version) for ${tools[*]}"
pulled=false
for attempt in 1 2 3; do
  if crictl --runtime-endpoint "$arg_cri_socket" --image-endpoint "$arg_cri_socket" pull "$image" >&2; then
    pulled=true
    break
  fi
  km_log "crictl pull $image failed (attempt $attempt of 3)"
  if ((attempt < 3)); then sleep $((attempt * 5)); fi
done
$pulled || km_die "could not pull $image through $arg_cri_socket (registry reachable?); nothing was installed"

# Mounted read-only (`ctr images mount` makes a View snapshot unless --rw; containerd 1.7 and 2.x
# both have it, and `images unmount --rm`).
mount_dir=$(mktemp -d /tmp/kata-mesh-etcd-image.XXXXXX)
mount_attempted=true
"${ctr_k8s[@]}" images mount "$image" "$mount_dir" >&2 ||
  km_die "could not mount $image at $mount_dir (ctr images mount); nothing was installed"

# Each tool copied beside its destination (the same file system: the rename is atomic), and run
# there (an exec from /tmp may be refused, noexec).
mkdir -p "$arg_bin_dir"
declare -A staged_for=()
for tool in "${tools[@]}"; do
  source_file=$mount_dir/usr/local/bin/$tool
  [[ -f $source_file ]] || km_die "$image has no /usr/local/bin/$tool; nothing was installed"
  staged_file=$(mktemp "$arg_bin_dir/.$tool.kata-mesh.XXXXXX")
  staged+=("$staged_file")
  install -m 0755 -o root -g root "$source_file" "$staged_file"
  found=$(version_of "$staged_file" "$tool")
  [[ $found == "$etcd_version" ]] ||
    km_die "$tool from $image reports etcd version '${found:-none}', not $etcd_version (the image's tag); nothing was installed"
  staged_for[$tool]=$staged_file
done
for tool in "${tools[@]}"; do
  mv -f -- "${staged_for[$tool]}" "$arg_bin_dir/$tool"
done
staged=()
km_log "installed ${tools[*]} of etcd $etcd_version from $image in $arg_bin_dir"
