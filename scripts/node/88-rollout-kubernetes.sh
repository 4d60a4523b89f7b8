#!/usr/bin/env bash
# A live node, drained, in its turn of a rollout (after the containerd and Kata steps ran again with
# the new pins): Kubernetes to --kubernetes-version in kubeadm's documented order, then
# --marker says the node is at --rollout (83-rollout-check.sh reads it).
# 1. pkgs.k8s.io's repository of the target's minor, and kubeadm at the target (held).
# 2. --role first: `kubeadm upgrade plan` must accept the target, then `kubeadm upgrade apply`
#    (the cluster's control plane, its certificates renewed); unless the cluster runs it already.
#    --role control-plane or worker: `kubeadm upgrade node` (this node's control-plane pods, or its
#    kubelet's config), once per target version.
# 3. kubelet and kubectl at the target (held), the kubelet restarted on them.
# Each part is skipped when done: a second run changes nothing.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_node_name=""
arg_role=""
arg_kubernetes_version=""
arg_apt_repository=""
arg_cni_tarball=""
arg_cni_sha256=""
arg_rollout=""
arg_marker=""
km_parse_args "$@"
km_require_args node_name role kubernetes_version apt_repository cni_tarball cni_sha256 rollout marker
version=${arg_kubernetes_version#v}
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || km_die "--kubernetes-version must be MAJOR.MINOR.PATCH, not: $arg_kubernetes_version"
km_require_rollout "$arg_rollout"
case $arg_role in first | control-plane | worker) ;; *) km_die "--role must be first, control-plane or worker, not: $arg_role" ;; esac

if [[ $arg_role == first ]]; then
  # What the cluster runs, and whether kubeadm can go from there: before this node changes.
  export KUBECONFIG=$km_admin_kubeconfig
  live=$(km_cluster_kubernetes_version)
  [[ ${live#v} == "$version" ]] || km_check_kubernetes_upgrade "$live" "$version"
fi
km_kubernetes_apt_source "$arg_apt_repository"
km_install_kubernetes_packages "$version" "$arg_cni_tarball" "$arg_cni_sha256" kubeadm

if [[ $arg_role == first ]]; then
  if [[ ${live#v} == "$version" ]]; then
    km_log "the control plane runs v$version already"
  else
    kubeadm upgrade plan "v$version" >&2 ||
      km_die "kubeadm upgrade plan does not accept v$version from $live; see its output above. The cluster was not upgraded (this node has kubeadm $version and stays drained): fix what it says and run pulumi up again"
    kubeadm upgrade apply -y "v$version" >&2 ||
      km_die "kubeadm upgrade apply v$version failed; see its output above. Fix what it says and run pulumi up again (kubeadm upgrade apply can run again)"
    km_log "the control plane is at v$version"
  fi
elif km_is_installed kubeadm-upgrade-node "$version"; then
  km_log "kubeadm upgrade node ran for v$version already"
else
  kubeadm upgrade node >&2 || km_die "kubeadm upgrade node failed; see its output above, then run pulumi up again"
  km_mark_installed kubeadm-upgrade-node "$version"
fi

km_install_kubernetes_packages "$version" "$arg_cni_tarball" "$arg_cni_sha256" kubelet kubectl
# pkgs.k8s.io's kubelet package does not restart the service: until a restart at this version has
# been done (a run can die between the install and the restart), the old kubelet runs on.
if $km_packages_changed || ! km_is_installed kubelet-restarted "$version"; then
  systemctl daemon-reload
  systemctl restart kubelet
  km_mark_installed kubelet-restarted "$version"
  km_log "kubelet restarted at v$version"
fi
km_put_file "$arg_marker" 0644 "$arg_rollout"
km_log "$arg_node_name is at rollout ${arg_rollout:0:12} (Kubernetes v$version)"
