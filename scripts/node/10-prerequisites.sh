#!/usr/bin/env bash
# Step 1: what kubeadm and Kata need from the kernel: swap off, modules loaded and persisted,
# forwarding and bridge sysctls, /dev/kvm present (lib.sh's km_kernel_prerequisites, which a VM booted
# from a node image runs too); plus the packages later steps use.
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
read -r -a packages <<<"$arg_packages"

km_kernel_prerequisites "$arg_modules" "$arg_sysctls"
km_apt_ensure "${packages[@]}"
km_log "prerequisites in place"
