#!/usr/bin/env bash
# Step 4: kubelet, kubeadm and kubectl at the pinned version from pkgs.k8s.io, held so that
# unattended upgrades never move them; crictl (cri-tools) pointed at containerd.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_kubernetes_version=""
arg_apt_repository=""
arg_cri_socket=""
arg_cni_tarball=""
arg_cni_sha256=""
km_parse_args "$@"
km_require_args kubernetes_version apt_repository cri_socket cni_tarball cni_sha256

keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
source_line="deb [signed-by=$keyring] $arg_apt_repository /"
packages=(kubelet kubeadm kubectl)

km_put_file /etc/apt/sources.list.d/kubernetes.list 0644 "$source_line"
repo_changed=$km_changed
if $repo_changed || [[ ! -s $keyring ]]; then
  key=$(mktemp)
  curl -fsSL --retry 6 --retry-all-errors --connect-timeout 20 -o "$key" "${arg_apt_repository%/}/Release.key" ||
    km_die "could not download the Kubernetes apt key from $arg_apt_repository"
  mkdir -p "$(dirname "$keyring")"
  gpg --batch --yes --dearmor -o "$keyring" "$key"
  chmod 0644 "$keyring"
  rm -f "$key"
fi

installed_all=true
for pkg in "${packages[@]}"; do
  version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
  [[ $version == "$arg_kubernetes_version"-* ]] || installed_all=false
done
if ! $installed_all; then
  km_apt_update
  apt-mark unhold "${packages[@]}" >/dev/null 2>&1 || true
  km_apt install -y --no-install-recommends --allow-change-held-packages \
    "${packages[@]/%/=$arg_kubernetes_version-*}"
  # The packages pull in kubernetes-cni, which writes its own plugins over /opt/cni/bin: put the
  # pinned, checksummed ones (the containerd step's download) back.
  [[ $(km_sha256_of "$arg_cni_tarball") == "$arg_cni_sha256" ]] ||
    km_die "$arg_cni_tarball is not the pinned CNI plugins release"
  tar -xzf "$arg_cni_tarball" -C /opt/cni/bin
  km_log "restored the pinned CNI plugins in /opt/cni/bin"
fi
apt-mark hold "${packages[@]}" >/dev/null
if dpkg-query -W kubernetes-cni >/dev/null 2>&1; then
  apt-mark hold kubernetes-cni >/dev/null
fi
for pkg in "${packages[@]}"; do
  version=$(dpkg-query -W -f='${Version}' "$pkg")
  [[ $version == "$arg_kubernetes_version"-* ]] || km_die "$pkg is at $version, not $arg_kubernetes_version"
done

km_put_file /etc/crictl.yaml 0644 "runtime-endpoint: $arg_cri_socket
image-endpoint: $arg_cri_socket
timeout: 30"
systemctl enable --quiet kubelet
km_log "kubelet, kubeadm and kubectl $arg_kubernetes_version installed and held"
