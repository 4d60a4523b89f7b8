#!/usr/bin/env bash
# Step 4: kubelet, kubeadm and kubectl at the pinned version from pkgs.k8s.io, held so that
# unattended upgrades never move them; crictl (cri-tools) pointed at containerd. Last of a new VM's
# steps: --marker then says the node is at --rollout, the pins and configs it was provisioned with
# (components/rollout.py rolls later changes over the live nodes one at a time).
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
arg_rollout=""
arg_marker=""
km_parse_args "$@"
km_require_args kubernetes_version apt_repository cri_socket cni_tarball cni_sha256 rollout marker

km_kubernetes_apt_source "$arg_apt_repository"
km_install_kubernetes_packages "$arg_kubernetes_version" "$arg_cni_tarball" "$arg_cni_sha256" kubelet kubeadm kubectl

km_put_file /etc/crictl.yaml 0644 "runtime-endpoint: $arg_cri_socket
image-endpoint: $arg_cri_socket
timeout: 30"
km_node_at "$arg_kubernetes_version" "$arg_marker" "$arg_rollout"
km_log "kubelet, kubeadm and kubectl $arg_kubernetes_version installed and held"
