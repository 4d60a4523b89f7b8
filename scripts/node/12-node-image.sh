#!/usr/bin/env bash
# Step 1 of a VM booted from a kata-mesh node image (after 00-wait-ready), in place of the
# prerequisites, containerd, Kata and Kubernetes steps: the image holds what they install, so this
# step only checks that it is the image this stack needs, then does what belongs to this VM rather
# than to the disk (the kernel's modules and sysctls, /dev/kvm, containerd running, Kata able to
# start VMs here, kubelet enabled) and records the rollout the node is at, as 40-kubernetes.sh does.
# Nothing is downloaded: no curl, apt-get or gpg. A VM that does not fit fails before any change,
# naming every mismatch at once, so one rebuild of the image fixes them all.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_manifest=""
arg_inputs_hash=""
arg_packages=""
arg_files=""
arg_kubernetes_version=""
arg_prefix=""
arg_kata_sha256=""
arg_bin_dir=""
arg_links=""
arg_modules=""
arg_sysctls=""
arg_rollout=""
arg_marker=""
arg_cri_socket=""
km_parse_args "$@"
km_require_args manifest inputs_hash packages files kubernetes_version prefix kata_sha256 bin_dir links \
  modules sysctls rollout marker cri_socket

# a. The arguments. They come from the program, but a wrong one must not pass as a check that held.
[[ $arg_inputs_hash =~ ^[0-9a-f]{64}$ ]] ||
  km_die "--inputs-hash must be a sha256 (64 lowercase hex digits), not: $arg_inputs_hash"
km_require_rollout "$arg_rollout"
[[ $arg_kata_sha256 =~ ^[0-9a-f]{64}$ ]] ||
  km_die "--kata-sha256 must be a sha256 (64 lowercase hex digits), not: $arg_kata_sha256"
[[ $arg_kubernetes_version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
  km_die "--kubernetes-version must be MAJOR.MINOR.PATCH, not: $arg_kubernetes_version"
[[ $arg_cri_socket == unix:///?* ]] || km_die "--cri-socket must be unix:///PATH, not: $arg_cri_socket"
read -r -a packages <<<"$arg_packages"
read -r -a files <<<"$arg_files"
read -r -a links <<<"$arg_links"
for path in "$arg_manifest" "$arg_prefix" "$arg_bin_dir" "$arg_marker" "${files[@]}"; do
  [[ $path == /?* && $path != *"/../"* && $path != */.. ]] || km_die "not an absolute path: $path"
done
for name in "${links[@]}"; do
  [[ $name =~ ^[A-Za-z0-9._+-]+$ && $name != . && $name != .. ]] || km_die "--links: not a file name: $name"
done
for pkg in "${packages[@]}"; do
  [[ $pkg =~ ^[a-z0-9][a-z0-9.+-]*$ ]] || km_die "--packages: not a package name: $pkg"
done
prefix=${arg_prefix%/}
bin_dir=${arg_bin_dir%/}
version=$arg_kubernetes_version

# b. The image: every mismatch is collected, so the error lists them all.
problems=()
if [[ ! -f $arg_manifest ]]; then
  problems+=("$arg_manifest is missing: this VM did not boot from a kata-mesh node image")
else
  image_inputs=""
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line == inputs-hash=* ]]; then
      image_inputs=${line#inputs-hash=}
      break
    fi
  done <"$arg_manifest"
  [[ $image_inputs == "$arg_inputs_hash" ]] ||
    problems+=("the node image was built for inputs ${image_inputs:-(none: $arg_manifest has no inputs-hash line)}, this stack needs $arg_inputs_hash")
fi
for pkg in "${packages[@]}"; do
  # As km_apt_ensure decides that a package is there.
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
    problems+=("package $pkg is not installed")
done
for file in "${files[@]}"; do
  if [[ ! -e $file ]]; then
    problems+=("$file is missing")
  elif [[ ! -f $file || ! -x $file ]]; then
    problems+=("$file is not an executable file")
  fi
done
kubeadm_version=$(kubeadm version -o short 2>/dev/null) || kubeadm_version=""
[[ $kubeadm_version == "v$version" ]] ||
  problems+=("kubeadm version -o short says '${kubeadm_version:-nothing}', not v$version")
kubelet_version=$(kubelet --version 2>/dev/null) || kubelet_version=""
[[ $kubelet_version == "Kubernetes v$version" ]] ||
  problems+=("kubelet --version says '${kubelet_version:-nothing}', not Kubernetes v$version")
release_marker=$prefix/.kata-mesh-release
if [[ ! -f $release_marker ]]; then
  problems+=("$prefix holds no Kata release installed by kata-mesh ($release_marker is missing)")
elif [[ $(<"$release_marker") != "$arg_kata_sha256" ]]; then
  problems+=("the Kata release in $prefix is $(<"$release_marker"), not $arg_kata_sha256")
fi
for name in "${links[@]}"; do
  link=$bin_dir/$name
  target=$prefix/bin/$name
  if [[ ! -L $link ]]; then
    problems+=("$link is not a link to $target")
  elif [[ $(readlink "$link") != "$target" ]]; then
    problems+=("$link points to $(readlink "$link"), not $target")
  elif [[ ! -x $target ]]; then
    problems+=("$link points to $target, which is missing")
  fi
done
if ((${#problems[@]} > 0)); then
  km_die "this VM's node image does not fit this stack; nothing was changed:
$(printf '  - %s\n' "${problems[@]}")
Rebuild the node image (pulumi up in images/, README \"Node images\"), or set kata-mesh:nodeImage to stock"
fi
km_log "the node image fits this stack (inputs $arg_inputs_hash)"

# c. The kernel: the image's /etc holds the modules and sysctls, but loading them, /dev/kvm and
# nested virtualization belong to this VM.
km_kernel_prerequisites "$arg_modules" "$arg_sysctls"

# d. containerd: the image has it enabled, so it is normally up already.
if ! systemctl is-active --quiet containerd; then
  systemctl enable --quiet containerd
  systemctl start containerd
fi
km_wait_containerd

# The images kubeadm runs were pulled at build (42-pull-images.sh): without them init or join
# would download them.
km_kubernetes_images "v$version"
km_missing_images "$arg_cri_socket"
((${#km_missing[@]} == 0)) ||
  km_die "this VM's node image does not fit this stack: containerd lacks the Kubernetes v$version images ${km_missing[*]}
Rebuild the node image (pulumi up in images/, README \"Node images\"), or set kata-mesh:nodeImage to stock"
km_log "the ${#km_images[@]} images of Kubernetes v$version are in containerd"

# e. Kata: the release is the image's, but whether it can start VMs depends on this VM.
km_kata_check "$prefix"

# f. kubelet enabled only, as on a stock node, and the node recorded at its version and rollout.
km_node_at "$version" "$arg_marker" "$arg_rollout"
km_log "node image ready: Kubernetes $version, Kata $arg_kata_sha256, rollout $arg_rollout"
