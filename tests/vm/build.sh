#!/usr/bin/env bash
# Builds, once, the Debian bookworm VM the VM tests boot (tests/vm.py, tests/test_node_vm.py):
# a debootstrap minbase root with systemd, sshd, a kernel and everything the node steps would
# otherwise apt-get inside the slow emulated guest; an ext4 disk image of it, its kernel and
# initrd, a test SSH key and the guest's host key; plus Debian's runc, CNI plugins and busybox,
# unpacked, which the tests repack into the release files they serve to the guest.
#
# Output: .cache/test-vm/, rebuilt only when this script changes (keyed by its sha256). Needs
# root; installs qemu-system-x86, qemu-utils, debootstrap, e2fsprogs and openssh-client when
# missing. Packages come from the Debian mirror this machine's apt already uses.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

out=.cache/test-vm
key=$(sha256sum tests/vm/build.sh | cut -d' ' -f1)
if [[ -f $out/key && $(<"$out/key") == "$key" ]]; then
  echo "test VM: $out is up to date"
  exit 0
fi
if ((EUID != 0)); then
  echo "test VM: building $out needs root (debootstrap); without it the VM tests skip (fail in CI)" >&2
  exit 1
fi

suite=bookworm
user=kmtest
host_alias=kata-mesh-test-vm
# The base system: systemd as init, sshd, a kernel with its modules, and what the steps call
# (sysctl is procps; sudo runs them). The NODE_PACKAGES of components/node_provisioning.py are
# installed here too, so the prerequisites step finds them and never runs apt in the guest.
base_packages=(systemd-sysv openssh-server linux-image-amd64 iproute2 kmod udev dbus sudo procps)
node_packages=(ca-certificates curl gpg zstd conntrack socat jq)
# Repacked by the tests into upstream-shaped release files (runc, CNI plugins) and a tiny image.
release_packages=(runc containernetworking-plugins busybox-static)

declare -A host_tools=([qemu-system-x86_64]=qemu-system-x86 [qemu-img]=qemu-utils
  [debootstrap]=debootstrap [mkfs.ext4]=e2fsprogs [ssh]=openssh-client [ssh-keygen]=openssh-client)
missing=()
for tool in "${!host_tools[@]}"; do
  command -v "$tool" >/dev/null || missing+=("${host_tools[$tool]}")
done
apt-get update -qq
if ((${#missing[@]} > 0)); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "test VM: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The mirror apt uses for the suite (deb.debian.org unless this machine is set up otherwise).
# shellcheck disable=SC2016 # apt's own $(FIELD) placeholders
mirror=$(apt-get indextargets --format '$(REPO_URI) $(CODENAME) $(TARGET_OF)' |
  awk -v suite="$suite" '$2 == suite && $3 == "deb" { print $1; exit }')
mirror=${mirror:-http://deb.debian.org/debian/}

build=$out.build
root=$build/root
# Nothing may stay mounted inside the root when it is removed.
unmount_root() {
  local mount_point
  if [[ -d $root ]]; then
    while read -r mount_point; do
      umount -l "$mount_point" || true
    done < <(awk -v root="$(realpath "$root")" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r)
  fi
}
cleanup() {
  unmount_root
  rm -rf --one-file-system "$build"
}
trap cleanup EXIT
cleanup
mkdir -p "$build/debs"

started=$SECONDS
echo "test VM: debootstrap $suite from $mirror"
packages=("${base_packages[@]}" "${node_packages[@]}")
debootstrap --variant=minbase --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
  --include="$(
    IFS=,
    echo "${packages[*]}"
  )" "$suite" "$root" "$mirror" >"$build/debootstrap.log" 2>&1 || {
  tail -n 40 "$build/debootstrap.log" >&2
  exit 1
}
unmount_root
echo "test VM: debootstrap took $((SECONDS - started)) s"

in_root() { chroot "$root" "$@"; }

echo kmvm >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 kmvm\n' >"$root/etc/hosts"
printf '# The root file system is mounted from the kernel command line.\n' >"$root/etc/fstab"

# QEMU user networking: the guest is 10.0.2.15 and reaches the host's loopback at 10.0.2.2. No
# default route and no DNS (debootstrap leaves this machine's resolv.conf behind): the guest can
# reach the test's own servers and nothing else.
printf '# No DNS: the VM tests reach the host by address, 10.0.2.2.\n' >"$root/etc/resolv.conf"
cat >"$root/etc/systemd/network/10-qemu-user.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
Address=10.0.2.15/24
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
in_root systemctl enable --quiet systemd-networkd.service
# Nothing that only slows the emulated boot down or reaches out on its own.
in_root systemctl mask --quiet apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
  e2scrub_reap.service fstrim.timer systemd-networkd-wait-online.service getty@tty1.service
# An initrd with only what mounts the root disk: the emulated kernel unpacks it, and udev in it
# loads its modules, several seconds faster than with Debian's default (most modules).
printf 'MODULES=list\n' >"$root/etc/initramfs-tools/conf.d/kata-mesh-test.conf"
printf '%s\n' virtio_pci virtio_blk ext4 >>"$root/etc/initramfs-tools/modules"
in_root update-initramfs -u -k all >/dev/null

ssh-keygen -q -t ed25519 -N '' -C kata-mesh-test -f "$build/id_ed25519"
in_root useradd --create-home --shell /bin/bash "$user"
uid=$(in_root id -u "$user")
install -d -m 0700 -o "$uid" -g "$uid" "$root/home/$user/.ssh"
install -m 0600 -o "$uid" -g "$uid" "$build/id_ed25519.pub" "$root/home/$user/.ssh/authorized_keys"
printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$user" >"$root/etc/sudoers.d/kata-mesh-test"
chmod 0440 "$root/etc/sudoers.d/kata-mesh-test"
printf 'UseDNS no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n' \
  >"$root/etc/ssh/sshd_config.d/kata-mesh-test.conf"
in_root ssh-keygen -A
printf '%s %s\n' "$host_alias" "$(cut -d' ' -f1,2 "$root/etc/ssh/ssh_host_ed25519_key.pub")" \
  >"$build/known_hosts"

in_root apt-get clean
cp "$(find "$root/boot" -name 'vmlinuz-*' | sort | tail -n 1)" "$build/vmlinuz"
cp "$(find "$root/boot" -name 'initrd.img-*' | sort | tail -n 1)" "$build/initrd.img"

# Room for the releases, their unpacked binaries and the containers; the file is sparse.
truncate -s "$(($(du -sm "$root" | cut -f1) + 2048))M" "$build/disk.img"
mkfs.ext4 -q -F -L kmroot -d "$root" "$build/disk.img"
rm -rf --one-file-system "$root"

(cd "$build/debs" && apt-get download -qq -o APT::Sandbox::User=root "${release_packages[@]}")
for package in "${release_packages[@]}"; do
  dpkg -x "$build/debs/${package}"_*.deb "$build/debs/$package"
done

echo "$key" >"$build/key"
rm -rf "$out"
mv "$build" "$out"
trap - EXIT
echo "test VM: built $out in $((SECONDS - started)) s"
