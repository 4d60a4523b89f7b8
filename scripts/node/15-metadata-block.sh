#!/usr/bin/env bash
# Step 1b: pods may not reach the GCE metadata server (the node service account's token, the
# instance metadata). An nftables table of its own, loaded at boot by a systemd unit before
# containerd and kubelet, drops what the node forwards from the pod CIDR to the metadata address,
# DNS excepted. Host-network pods share the node's own address and are not covered.
set -euo pipefail
if ! declare -F km_parse_args >/dev/null; then
  # shellcheck source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

arg_pod_cidr=""
arg_metadata_ip=""
arg_table=""
arg_ruleset_path=""
arg_unit_path=""
arg_packages=""
km_parse_args "$@"
km_require_args pod_cidr metadata_ip table ruleset_path unit_path packages
read -r -a packages <<<"$arg_packages"

# The values end up in an nft file: only plain IPv4 addresses, prefixes and names get there.
octet='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
ipv4="$octet\\.$octet\\.$octet\\.$octet"
[[ $arg_pod_cidr =~ ^$ipv4/(3[0-2]|[12]?[0-9])$ ]] ||
  km_die "--pod-cidr must be an IPv4 prefix such as 10.244.0.0/16, got: $arg_pod_cidr"
[[ $arg_metadata_ip =~ ^$ipv4$ ]] ||
  km_die "--metadata-ip must be an IPv4 address such as 169.254.169.254, got: $arg_metadata_ip"
[[ $arg_table =~ ^[a-z][a-z0-9_]*$ ]] || km_die "--table must be a plain nftables name, got: $arg_table"
[[ $arg_ruleset_path =~ ^/[A-Za-z0-9._/-]+$ && $arg_unit_path =~ ^/etc/systemd/system/[A-Za-z0-9._-]+\.service$ ]] ||
  km_die "--ruleset-path must be a plain absolute path and --unit-path a unit in /etc/systemd/system"
unit=${arg_unit_path##*/}

km_apt_ensure "${packages[@]}"

# Why the forward hook: a pod's packets to 169.254.169.254 leave its network namespace (a runc
# pod's veth, or a Kata pod's, which carries its VM's traffic) and are routed by the node: on GCE
# the metadata address is not local to the node but reached through the subnet's gateway (a DHCP
# route), so they take the forward path, never input or output. There the source is still the
# pod's address (Flannel masquerades later, in postrouting) and the destination is final (a
# Service that kube-proxy DNATs to the metadata address is caught too, DNAT being in prerouting).
# The node's own traffic (kubelet, the guest agent, host-network pods) is locally originated and
# goes through output, which this table leaves alone.
#
# Why DNS stays open: on GCE the metadata server is also the VPC's DNS resolver. The node gets
# 169.254.169.254 as its name server from DHCP; on Ubuntu systemd-resolved lists it in
# /run/systemd/resolve/resolv.conf, which kubeadm gives kubelet as resolvConf on such hosts, so
# CoreDNS (dnsPolicy Default) forwards every name outside the cluster to 169.254.169.254:53 from
# its pod address. Dropping port 53 would break name resolution for the whole cluster.
#
# An accept here does not let anything through another table's drop, and a drop here is final
# whatever the other tables (kube-proxy's, Flannel's, iptables-nft's) accept. Loading the file
# again replaces the table whole: its first line makes sure the table exists, so the delete never
# fails, and `nft -f` applies the file as one transaction.
ruleset="#!/usr/sbin/nft -f
# Written by kata-mesh (scripts/node/15-metadata-block.sh) and loaded at boot by $unit:
# pods ($arg_pod_cidr) may not reach the metadata server ($arg_metadata_ip) except for DNS.
table inet $arg_table
delete table inet $arg_table
table inet $arg_table {
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		ip saddr $arg_pod_cidr ip daddr $arg_metadata_ip udp dport 53 accept
		ip saddr $arg_pod_cidr ip daddr $arg_metadata_ip tcp dport 53 accept
		ip saddr $arg_pod_cidr ip daddr $arg_metadata_ip counter drop
	}
}"

# Before containerd and kubelet, and required by them: no pod runs on a node where the table could
# not be loaded. After nftables.service, whose /etc/nftables.conf flushes the whole ruleset, in
# case someone enables it. No ExecStop: stopping the unit does not lift the block. The step
# reloads it (ExecReload) rather than restarting it, which would restart containerd and kubelet.
unit_text="[Unit]
Description=kata-mesh: pods may not reach the metadata server (nftables table inet $arg_table)
After=nftables.service
Before=containerd.service kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f $arg_ruleset_path
ExecReload=/usr/sbin/nft -f $arg_ruleset_path

[Install]
WantedBy=multi-user.target
RequiredBy=containerd.service kubelet.service"

# The kernel checks the ruleset before it is put in place; a rejected one leaves the old one.
candidate=$(mktemp)
printf '%s\n' "$ruleset" >"$candidate"
if ! errors=$(nft --check --file "$candidate" 2>&1); then
  rm -f "$candidate"
  km_die "nft rejects the metadata block ruleset: $errors"
fi
rm -f "$candidate"

changed=false
km_put_file "$arg_ruleset_path" 0644 "$ruleset"
if $km_changed; then
  changed=true
fi
km_put_file "$arg_unit_path" 0644 "$unit_text"
if $km_changed; then
  systemctl daemon-reload
  changed=true
fi

systemctl enable --quiet "$unit"
loaded() { nft list table inet "$arg_table" 2>/dev/null; }
if $changed || ! loaded >/dev/null; then
  # Active: ExecReload loads the file again; inactive: it starts.
  systemctl reload-or-restart "$unit" ||
    km_die "could not load the metadata block: $(systemctl status "$unit" --no-pager 2>&1 | tail -n 20)"
else
  systemctl start "$unit"
fi
listing=$(loaded) || km_die "table inet $arg_table is not loaded: $(systemctl status "$unit" --no-pager 2>&1 | tail -n 20)"
drop_rule="ip saddr ${arg_pod_cidr//./\\.} ip daddr ${arg_metadata_ip//./\\.} counter packets [0-9]+ bytes [0-9]+ drop"
grep -Eq "^[[:space:]]*$drop_rule\$" <<<"$listing" ||
  km_die "table inet $arg_table does not drop $arg_pod_cidr to $arg_metadata_ip: $listing"
km_log "pods ($arg_pod_cidr) cannot reach $arg_metadata_ip except for DNS"
