#!/usr/bin/env bash
# Step 1: what kubeadm and Kata need from the kernel: swap off, modules loaded and persisted,
# forwarding and bridge sysctls, /dev/kvm present; plus the packages later steps use.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_modules=""
arg_sysctls=""
arg_packages=""
km_parse_args "$@"
km_require_args modules sysctls packages
read -r -a modules <<<"$arg_modules"
read -r -a sysctls <<<"$arg_sysctls"
read -r -a packages <<<"$arg_packages"

kvm_help="likely causes: nested virtualization is not enabled on this VM \
(advancedMachineFeatures.enableNestedVirtualization), the organization policy \
constraints/compute.disableNestedVirtualization forbids it, or the machine series has no Intel \
VT-x (E2, AMD and Arm series)"

# Swap off now and after reboots: kubelet refuses to start with swap on.
swapoff -a
if grep -Eq '^[^#].*[[:space:]]swap[[:space:]]' /etc/fstab; then
  sed -i -E 's/^([^#].*[[:space:]]swap[[:space:]].*)$/# \1/' /etc/fstab
  km_log "commented out swap in /etc/fstab"
fi

grep -qw vmx /proc/cpuinfo || km_die "this CPU exposes no VT-x (vmx flag missing); $kvm_help"

km_put_file /etc/modules-load.d/kata-mesh.conf 0644 "$(printf '%s\n' "${modules[@]}")"
for module in "${modules[@]}"; do
  modprobe "$module" || km_die "cannot load kernel module $module"
done
[[ -c /dev/kvm ]] || km_die "/dev/kvm is missing; $kvm_help"

km_put_file /etc/sysctl.d/99-kata-mesh.conf 0644 "$(printf '%s\n' "${sysctls[@]}")"
if $km_changed; then
  sysctl --quiet --system
fi
for setting in "${sysctls[@]}"; do
  key=${setting%%=*}
  [[ $(sysctl -n "$key") == "${setting#*=}" ]] || km_die "sysctl $key is not ${setting#*=}"
done

km_apt_ensure "${packages[@]}"
km_log "prerequisites in place"
