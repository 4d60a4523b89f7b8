"""What the seed and REFERENCE say a node gets, written once for the tests (never read from the
code under test)."""

# REFERENCE 4 and 6: the kernel modules kubeadm, Flannel and Kata need, in load order.
SEED_MODULES = ["overlay", "br_netfilter", "kvm_intel", "vhost", "vhost_net", "vhost_vsock"]
# REFERENCE 6: forwarding and the bridge sysctls a bridge CNI (Flannel) needs.
SEED_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}
# REFERENCE 1: the seed's five links from /opt/kata/bin into /usr/local/bin.
SEED_LINKS = (
    "kata-runtime",
    "containerd-shim-kata-v2",
    "kata-monitor",
    "kata-collect-data.sh",
    "qemu-system-x86_64",
)
