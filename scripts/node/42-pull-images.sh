#!/usr/bin/env bash
# Node image builder only, after 40-kubernetes.sh: the images kubeadm runs at this Kubernetes
# version (API server, controller manager, scheduler, kube-proxy, CoreDNS, pause, etcd) pulled into
# containerd's k8s.io namespace, where the kubelet looks for them, so that kubeadm init and join on
# a node booted from the image pull nothing. containerd checks every blob against its manifest's
# digest as it pulls. Each image is then asked for through the CRI, as the kubelet would.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_kubernetes_version=""
arg_cri_socket=""
km_parse_args "$@"
km_require_args kubernetes_version cri_socket
[[ $arg_kubernetes_version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
  km_die "--kubernetes-version must be MAJOR.MINOR.PATCH, not: $arg_kubernetes_version"
[[ $arg_cri_socket == unix:///?* ]] || km_die "--cri-socket must be unix:///PATH, not: $arg_cri_socket"
version=v$arg_kubernetes_version
socket=$arg_cri_socket

# kubeadm's warnings go to stderr (left to ours); stdout is one image a line.
km_kubernetes_images "$version"

km_missing_images "$socket"
if ((${#km_missing[@]} == 0)); then
  km_log "the ${#km_images[@]} images of Kubernetes $version are in containerd already; nothing to pull"
  exit 0
fi

km_log "pulling ${km_missing[*]}"
pulled=false
for attempt in 1 2 3; do
  if kubeadm config images pull --kubernetes-version "$version" --cri-socket "$socket" >&2; then
    pulled=true
    break
  fi
  km_log "kubeadm config images pull failed (attempt $attempt of 3)"
  if ((attempt < 3)); then sleep $((attempt * 10)); fi
done
$pulled || km_die "could not pull the images of Kubernetes $version through $socket (registry reachable?)"

km_missing_images "$socket"
((${#km_missing[@]} == 0)) ||
  km_die "containerd ($socket) lacks these images after kubeadm pulled them: ${km_missing[*]}"
km_log "the ${#km_images[@]} images of Kubernetes $version are in containerd"
