"""The metadata block step (scripts/node/15-metadata-block.sh), run as the program sends it in a
sandboxed node (tests/node_sandbox.py), with Debian's real nftables behind the recording `nft`
stand-in: every nft call the step (or its unit, through the `systemctl` stand-in) makes runs for
real inside a network namespace this test made, never in this machine's own.

Then the block itself, for real, in network namespaces the test makes and wires up like a GCE
node (nothing connects them to this machine's network, so no packet leaves them):

    pod (10.244.1.2) --veth-- node (10.244.1.1 | 10.10.0.2) --veth-- metadata (10.10.0.1, gateway)
                              forwards, masquerades the pods         169.254.169.254: HTTP 80, DNS 53
                              like Flannel, DNATs a Service           169.254.169.253, 10.99.0.1: HTTP 80
                              like kube-proxy, and runs the step's
                              ruleset

The node reaches 169.254.169.254 through its gateway, as a GCE node does (DHCP gives it that
route), so a pod's packets to it are forwarded."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import netns
import pytest
from harness import require_tool
from node_sandbox import Result, Sandbox, require_sandbox
from test_node_steps import program_step, with_args

from components.node_provisioning import (
    METADATA_BLOCK_RULESET,
    METADATA_BLOCK_TABLE,
    METADATA_BLOCK_UNIT,
    METADATA_IP,
)

# Real nftables in network namespaces: scripts/test.sh runs these as their own stage
# (pyproject.toml, `system`).
pytestmark = pytest.mark.system

UNIT = Path(METADATA_BLOCK_UNIT).name
POD_CIDR = "10.244.0.0/16"
POD_IP = "10.244.1.2"
NODE_POD_SIDE = "10.244.1.1"
NODE_IP = "10.10.0.2"
GATEWAY = "10.10.0.1"
# Beside the metadata server: another link-local address and an ordinary one, both answering HTTP.
OTHER_LINK_LOCAL = "169.254.169.253"
ELSEWHERE = "10.99.0.1"
# A Service address kube-proxy would DNAT to the metadata server.
SERVICE_IP = "10.96.0.99"
BLOCKED_TIMEOUT_SECONDS = 0.5
_names = itertools.count()

# What a Flannel and kube-proxy node has besides the block: pod traffic leaving the pod network is
# masqueraded after routing, a Service is DNATed before it, and another table accepts everything
# from the pods (Flannel's FORWARD rules): none of it may open the block.
NODE_FIXTURE_RULES = f"""
table ip kmtest_cluster {{
	chain forward {{
		type filter hook forward priority filter; policy accept;
		ip saddr {POD_CIDR} accept
	}}
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr {SERVICE_IP} tcp dport 80 dnat to {METADATA_IP}:80
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr {POD_CIDR} ip daddr != {POD_CIDR} masquerade
	}}
}}
"""

# The metadata namespace's servers: HTTP on each address (the answer names the address), and a DNS
# responder on udp and tcp 53 that answers every A query with the metadata server's address.
METADATA_SERVERS = r"""
import http.server, socket, socketserver, struct, sys, threading

http_addresses, dns_address, answer = sys.argv[1].split(","), sys.argv[2], sys.argv[3]


class Http(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"metadata stand-in at {self.server.server_address[0]}{self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def reply(query):
    end = 12
    while query[end]:
        end += query[end] + 1
    end += 5
    header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(answer)
    return header + query[12:end] + record


class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(reply(data), self.client_address)


class Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        size = struct.unpack("!H", self.request.recv(2))[0]
        data = b""
        while len(data) < size:
            data += self.request.recv(size - len(data))
        response = reply(data)
        self.request.sendall(struct.pack("!H", len(response)) + response)


servers = [http.server.ThreadingHTTPServer((address, 80), Http) for address in http_addresses]
servers.append(socketserver.ThreadingUDPServer((dns_address, 53), Udp))
servers.append(socketserver.ThreadingTCPServer((dns_address, 53), Tcp))
for server in servers:
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# Runs the checks it is given (name -> ["http", url] or ["dns", "udp"|"tcp", server, name]) at
# once, each with the same timeout, and prints name -> result as JSON.
CLIENT = r"""
import concurrent.futures, json, socket, struct, sys, urllib.request


timeout, checks = float(sys.argv[1]), json.loads(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url):
    with opener.open(url, timeout=timeout) as response:
        return {"status": response.status, "body": response.read().decode()}


def exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def dns(proto, server, name):
    qname = b"".join(bytes([len(part)]) + part.encode() for part in name.split(".")) + b"\0"
    query = struct.pack("!HHHHHH", 0x4B4D, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    if proto == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(query, (server, 53))
            response = sock.recv(512)
    else:
        with socket.create_connection((server, 53), timeout=timeout) as sock:
            sock.sendall(struct.pack("!H", len(query)) + query)
            response = exactly(sock, struct.unpack("!H", exactly(sock, 2))[0])
    ident, flags, _, answers = struct.unpack("!HHHH", response[:8])
    assert ident == 0x4B4D and flags & 0xF == 0 and answers == 1, response
    return {"address": socket.inet_ntoa(response[-4:])}


def run(check):
    try:
        return {"ok": True, **(http(*check[1:]) if check[0] == "http" else dns(*check[1:]))}
    except Exception as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}


with concurrent.futures.ThreadPoolExecutor(len(checks)) as pool:
    results = dict(zip(checks, pool.map(run, checks.values())))
print(json.dumps(results))
"""

# The stand-ins that reach the kernel: `nft` runs Debian's nft inside the test's node namespace
# (entered through a process that sits there); `systemctl` runs the unit's own ExecStart or
# ExecReload, as systemd would, through that `nft`, and remembers which units are active.
NFT_IN_NAMESPACE = """[[ -f $state/nft-rejects && " $* " == *" --check "* ]] &&
  { echo "Error: rejected by the stand-in" >&2; exit 1; }
# Only ever in the test's namespace: never this machine's own ruleset.
[[ $(readlink /proc/HOLDER_PID/ns/net) == "NAMESPACE_ID" ]] ||
  { echo "nft stand-in: the test's namespace is gone" >&2; exit 1; }
exec nsenter --net=/proc/HOLDER_PID/ns/net NFT_BINARY "$@"
"""
SYSTEMCTL_RUNS_UNITS = """command=${1:-} unit=${2:-}
[[ -f $state/systemctl-fails-$command ]] && exit 1
case $command in
  status) echo "status of $unit" ;;
  start | restart | reload | reload-or-restart)
    [[ $command == start && -f $state/active-$unit ]] && exit 0
    key=ExecStart
    if [[ $command == reload || ($command == reload-or-restart && -f $state/active-$unit) ]]; then
      key=ExecReload
    fi
    line=$(grep -m1 "^$key=" "/etc/systemd/system/$unit") || { echo "$unit has no $key" >&2; exit 1; }
    read -r -a words <<<"${line#*=}"
    words[0]=${words[0]##*/}
    "${words[@]}" || exit 1
    touch "$state/active-$unit" ;;
esac
exit 0
"""


@dataclass
class Netns(netns.Netns):
    nft_path: str = "nft"
    holder: subprocess.Popen | None = None

    def nft(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(self.nft_path, *args, input=input, check=check)

    @property
    def id(self) -> str:
        return namespace_id(f"/run/netns/{self.name}")

    def ruleset(self) -> str:
        return self.nft("list", "ruleset").stdout

    def table(self) -> str:
        return self.nft("list", "table", "inet", METADATA_BLOCK_TABLE).stdout


def namespace_id(path: str) -> str:
    """As /proc/PID/ns/net names it: net:[INODE]."""
    try:
        return f"net:[{os.stat(path).st_ino}]"
    except FileNotFoundError:
        return ""


class Namespaces(dict[str, Netns]):
    """This test's network namespaces by role, made on demand."""

    def __init__(self, nft_path: str) -> None:
        super().__init__()
        self.nft_path = nft_path
        self.prefix = f"kmmd{os.getpid()}x{next(_names)}"

    def make(self, role: str) -> Netns:
        namespace = Netns(f"{self.prefix}-{role}", nft_path=self.nft_path)
        subprocess.run(["ip", "netns", "add", namespace.name], check=True, capture_output=True)
        self[role] = namespace
        namespace.run("ip", "link", "set", "lo", "up")
        return namespace


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    """Network namespaces of this test's own, removed (with whatever runs in them) however it ends."""
    require_sandbox()
    nft_path = require_tool("nft", "scripts/test.sh installs Debian's nftables when run as root")
    for tool in ("ip", "nsenter"):
        require_tool(tool, "iproute2 and util-linux")
    made = Namespaces(nft_path)
    try:
        node = made.make("node")
        # A process sitting in the node namespace, through which the sandbox's nft stand-in enters
        # it; `ip netns exec` enters the namespace, then becomes `sleep`.
        node.holder = node.start("sleep", "infinity")
        deadline = time.monotonic() + 10
        while namespace_id(f"/proc/{node.holder.pid}/ns/net") != node.id:
            assert time.monotonic() < deadline and node.holder.poll() is None, "the holder never entered"
            time.sleep(0.01)
        yield made
    finally:
        for namespace in made.values():
            netns.remove(namespace)


@pytest.fixture
def node_ns(namespaces: Namespaces) -> Netns:
    return namespaces["node"]


@pytest.fixture
def node(tmp_path: Path, node_ns: Netns) -> Sandbox:
    sandbox = Sandbox(tmp_path / "node")
    assert node_ns.holder is not None
    sandbox.behaviour["nft"] = (
        NFT_IN_NAMESPACE.replace("HOLDER_PID", str(node_ns.holder.pid))
        .replace("NAMESPACE_ID", node_ns.id)
        .replace("NFT_BINARY", node_ns.nft_path)
    )
    sandbox.behaviour["systemctl"] = SYSTEMCTL_RUNS_UNITS
    return sandbox


def metadata_block(**changes: str):
    step = program_step("metadata-block")
    return with_args(step, **changes) if changes else step


def systemctl_calls(result: Result) -> list[str]:
    return [c for c in result.calls if c.startswith("systemctl")]


def our_tables(ruleset: str) -> int:
    return len(re.findall(rf"^table inet {METADATA_BLOCK_TABLE} \{{", ruleset, re.MULTILINE))


def block_rules(listing: str) -> list[str]:
    return [line.strip() for line in listing.splitlines() if line.strip().startswith("ip saddr")]


def expected_rules(pod_cidr: str = POD_CIDR) -> list[str]:
    prefix = f"ip saddr {pod_cidr} ip daddr {METADATA_IP}"
    return [
        f"{prefix} udp dport 53 accept",
        f"{prefix} tcp dport 53 accept",
        f"{prefix} counter packets 0 bytes 0 drop",
    ]


# --- The step in the sandbox ------------------------------------------------------------------------


def test_the_program_passes_the_pod_cidr_and_the_metadata_address_explicitly():
    step = metadata_block()
    assert step.script == "15-metadata-block.sh"
    assert dict(step.args) == {
        "pod-cidr": POD_CIDR,
        "metadata-ip": "169.254.169.254",
        "table": "kata_mesh_metadata",
        "ruleset-path": "/etc/kata-mesh/metadata-block.nft",
        "unit-path": "/etc/systemd/system/kata-mesh-metadata-block.service",
        "packages": "nftables",
    }


def test_first_run_installs_nftables_writes_the_ruleset_and_its_unit_and_loads_it(node, node_ns):
    step = metadata_block()
    result = node.run(step)
    assert result.returncode == 0, result.stderr
    files = node.changes()

    ruleset, mode, _ = files[METADATA_BLOCK_RULESET]
    assert mode == 0o644
    lines = [line.strip() for line in ruleset.splitlines() if line.strip() and not line.startswith("#")]
    # Loading it again replaces the table whole: it exists, is deleted, is made anew.
    assert lines[:3] == [
        f"table inet {METADATA_BLOCK_TABLE}",
        f"delete table inet {METADATA_BLOCK_TABLE}",
        f"table inet {METADATA_BLOCK_TABLE} {{",
    ]
    assert "type filter hook forward priority filter - 10; policy accept;" in lines
    assert [line for line in lines if line.startswith("ip saddr")] == [
        f"ip saddr {POD_CIDR} ip daddr 169.254.169.254 udp dport 53 accept",
        f"ip saddr {POD_CIDR} ip daddr 169.254.169.254 tcp dport 53 accept",
        f"ip saddr {POD_CIDR} ip daddr 169.254.169.254 counter drop",
    ]

    unit, mode, _ = files[METADATA_BLOCK_UNIT]
    assert mode == 0o644
    assert "Type=oneshot\nRemainAfterExit=yes\n" in unit
    assert f"ExecStart=/usr/sbin/nft -f {METADATA_BLOCK_RULESET}\n" in unit
    assert f"ExecReload=/usr/sbin/nft -f {METADATA_BLOCK_RULESET}\n" in unit
    assert "ExecStop" not in unit
    assert "Before=containerd.service kubelet.service\n" in unit
    assert "After=nftables.service\n" in unit
    assert unit.endswith("WantedBy=multi-user.target\nRequiredBy=containerd.service kubelet.service\n")

    assert "apt-get -o DPkg::Lock::Timeout=600 -q install -y --no-install-recommends nftables" in result.calls
    assert systemctl_calls(result) == [
        "systemctl daemon-reload",
        f"systemctl enable --quiet {UNIT}",
        f"systemctl reload-or-restart {UNIT}",
    ]
    # Checked by the kernel before it is put in place; loaded by the unit's own ExecStart.
    nft = [c for c in result.calls if c.startswith("nft")]
    assert nft[0].startswith("nft --check --file /tmp/")
    assert f"nft -f {METADATA_BLOCK_RULESET}" in nft
    assert result.calls.index(f"nft -f {METADATA_BLOCK_RULESET}") > result.calls.index(
        f"systemctl reload-or-restart {UNIT}"
    )
    assert block_rules(node_ns.table()) == expected_rules()
    assert "pods (10.244.0.0/16) cannot reach 169.254.169.254 except for DNS" in result.stderr
    # This machine's own ruleset never saw it.
    host = subprocess.run([node_ns.nft_path, "list", "tables"], capture_output=True, text=True)
    assert METADATA_BLOCK_TABLE not in host.stdout


def test_second_run_changes_nothing_and_loads_nothing(node, node_ns):
    assert node.run(metadata_block()).returncode == 0
    before = node.changes()
    second = node.run(metadata_block())
    assert second.returncode == 0, second.stderr
    assert node.changes() == before
    assert systemctl_calls(second) == [f"systemctl enable --quiet {UNIT}", f"systemctl start {UNIT}"]
    assert f"nft -f {METADATA_BLOCK_RULESET}" not in second.calls
    assert not [c for c in second.calls if c.startswith("apt-get")]
    assert our_tables(node_ns.ruleset()) == 1
    assert block_rules(node_ns.table()) == expected_rules()


def test_a_changed_pod_cidr_rewrites_the_ruleset_and_reloads_it_in_place(node, node_ns):
    assert node.run(metadata_block()).returncode == 0
    unit = node.files()[METADATA_BLOCK_UNIT]
    result = node.run(metadata_block(pod_cidr="10.200.0.0/16"))
    assert result.returncode == 0, result.stderr
    assert (
        "ip saddr 10.200.0.0/16 ip daddr 169.254.169.254 counter drop" in node.files()[METADATA_BLOCK_RULESET]
    )
    assert node.files()[METADATA_BLOCK_UNIT] == unit
    # A reload (ExecReload), not a restart: the unit is required by containerd and kubelet.
    assert systemctl_calls(result) == [
        f"systemctl enable --quiet {UNIT}",
        f"systemctl reload-or-restart {UNIT}",
    ]
    assert f"nft -f {METADATA_BLOCK_RULESET}" in result.calls
    assert our_tables(node_ns.ruleset()) == 1
    assert block_rules(node_ns.table()) == expected_rules("10.200.0.0/16")


def test_a_table_removed_behind_the_steps_back_is_loaded_again(node, node_ns):
    assert node.run(metadata_block()).returncode == 0
    node_ns.nft("delete", "table", "inet", METADATA_BLOCK_TABLE)
    before = node.changes()
    result = node.run(metadata_block())
    assert result.returncode == 0, result.stderr
    assert node.changes() == before
    assert f"systemctl reload-or-restart {UNIT}" in result.calls
    assert block_rules(node_ns.table()) == expected_rules()


def test_a_ruleset_nft_rejects_is_not_put_in_place(node, node_ns):
    assert node.run(metadata_block()).returncode == 0
    good = node.files()[METADATA_BLOCK_RULESET]
    node.set_state("nft-rejects")
    result = node.run(metadata_block(pod_cidr="10.200.0.0/16"))
    assert result.returncode == 1
    assert "nft rejects the metadata block ruleset: Error: rejected by the stand-in" in result.stderr
    assert node.files()[METADATA_BLOCK_RULESET] == good
    assert not systemctl_calls(result)
    assert block_rules(node_ns.table()) == expected_rules()


def test_a_unit_that_cannot_load_fails_the_step_with_its_status(node):
    node.set_state("systemctl-fails-reload-or-restart")
    result = node.run(metadata_block())
    assert result.returncode == 1
    assert f"could not load the metadata block: status of {UNIT}" in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("pod_cidr", "10.244.0.0/16 ip daddr 0.0.0.0/0", "--pod-cidr must be an IPv4 prefix"),
        ("pod_cidr", "10.244.0.0", "--pod-cidr must be an IPv4 prefix"),
        ("pod_cidr", "10.244.0.0/33", "--pod-cidr must be an IPv4 prefix"),
        ("metadata_ip", "metadata.google.internal", "--metadata-ip must be an IPv4 address"),
        ("table", "kata-mesh; flush ruleset", "--table must be a plain nftables name"),
        ("unit_path", "/tmp/block.service", "--unit-path a unit in /etc/systemd/system"),
        ("ruleset_path", "/etc/kata mesh/block.nft", "--ruleset-path must be a plain absolute path"),
    ],
)
def test_the_step_refuses_values_that_are_not_what_they_claim_before_anything(tmp_path, name, value, message):
    require_sandbox()
    node = Sandbox(tmp_path / "node")
    node.behaviour["nft"] = 'echo "nft stand-in: not expected here" >&2; exit 1\n'
    result = node.run(metadata_block(**{name: value}))
    assert result.returncode == 1
    assert message in result.stderr
    assert result.calls == []
    assert node.changes() == {}


# --- The block, for real, between namespaces ------------------------------------------------------


@pytest.fixture
def lab(namespaces: Namespaces) -> Namespaces:
    """The pod and metadata namespaces wired to the node (see the module's picture), the metadata
    stand-ins listening, the node forwarding; no block yet."""
    node, pod, metadata = namespaces["node"], namespaces.make("pod"), namespaces.make("metadata")
    node.run("ip", "link", "add", "veth-pod", "type", "veth", "peer", "name", "eth0", "netns", pod.name)
    node.run("ip", "link", "add", "veth-gw", "type", "veth", "peer", "name", "eth0", "netns", metadata.name)
    for namespace, commands in (
        (
            pod,
            [f"addr add {POD_IP}/24 dev eth0", "link set eth0 up", f"route add default via {NODE_POD_SIDE}"],
        ),
        (
            node,
            [
                f"addr add {NODE_POD_SIDE}/24 dev veth-pod",
                f"addr add {NODE_IP}/24 dev veth-gw",
                "link set veth-pod up",
                "link set veth-gw up",
                f"route add default via {GATEWAY}",
                # What GCE's DHCP gives a node: the metadata server through the gateway.
                f"route add {METADATA_IP}/32 via {GATEWAY}",
            ],
        ),
        (
            metadata,
            [
                f"addr add {GATEWAY}/24 dev eth0",
                "link set eth0 up",
                *(f"addr add {address}/32 dev lo" for address in (METADATA_IP, OTHER_LINK_LOCAL, ELSEWHERE)),
            ],
        ),
    ):
        for command in commands:
            namespace.run("ip", *command.split())
    node.run("sh", "-c", "echo 1 >/proc/sys/net/ipv4/ip_forward")
    node.nft("-f", "-", input=NODE_FIXTURE_RULES)
    servers = metadata.start(
        sys.executable,
        "-I",
        "-S",
        "-c",
        METADATA_SERVERS,
        ",".join((METADATA_IP, OTHER_LINK_LOCAL, ELSEWHERE)),
        METADATA_IP,
        METADATA_IP,
    )
    assert servers.stdout is not None
    ready = servers.stdout.readline()
    assert ready == "ready\n", servers.stderr.read() if servers.stderr else ready
    return namespaces


def probe(namespace: Netns, **checks: list[str]) -> dict[str, dict]:
    result = namespace.run(
        sys.executable, "-I", "-S", "-c", CLIENT, str(BLOCKED_TIMEOUT_SECONDS), json.dumps(checks)
    )
    return json.loads(result.stdout)


def url(address: str) -> list[str]:
    return ["http", f"http://{address}/computeMetadata/v1/instance/service-accounts/default/token"]


POD_CHECKS = {
    "metadata": url(METADATA_IP),
    "service_to_metadata": url(SERVICE_IP),
    "dns_udp": ["dns", "udp", METADATA_IP, "metadata.google.internal"],
    "dns_tcp": ["dns", "tcp", METADATA_IP, "metadata.google.internal"],
    "other_link_local": url(OTHER_LINK_LOCAL),
    "elsewhere": url(ELSEWHERE),
}


def dropped_packets(node: Netns) -> int:
    match = re.search(r"counter packets (\d+) bytes \d+ drop", node.table())
    assert match, node.table()
    return int(match.group(1))


def assert_blocked(results: dict[str, dict]) -> None:
    """What the pod sees with the block in place."""
    assert not results["metadata"]["ok"], results["metadata"]
    assert "timed out" in results["metadata"]["error"], results["metadata"]
    assert not results["service_to_metadata"]["ok"], results["service_to_metadata"]
    assert results["dns_udp"] == {"ok": True, "address": METADATA_IP}
    assert results["dns_tcp"] == {"ok": True, "address": METADATA_IP}
    for name, address in (("other_link_local", OTHER_LINK_LOCAL), ("elsewhere", ELSEWHERE)):
        assert results[name]["ok"] and results[name]["status"] == 200, results[name]
        assert results[name]["body"].startswith(f"metadata stand-in at {address}/"), results[name]


def test_pods_cannot_reach_the_metadata_server_but_dns_and_everything_else_still_work(lab, node):
    pod, node_ns = lab["pod"], lab["node"]
    before = probe(pod, **POD_CHECKS)
    # Without the block the pod reaches all of it: the wiring works, what fails later is the block.
    assert all(result["ok"] for result in before.values()), before
    assert before["metadata"]["body"].startswith(f"metadata stand-in at {METADATA_IP}/")

    result = node.run(metadata_block())
    assert result.returncode == 0, result.stderr

    assert_blocked(probe(pod, **POD_CHECKS))
    assert dropped_packets(node_ns) > 0
    # The node itself (and so any host-network pod) still reaches it: kubelet, the guest agent.
    from_node = probe(node_ns, metadata=url(METADATA_IP))["metadata"]
    assert from_node["ok"] and from_node["body"].startswith(f"metadata stand-in at {METADATA_IP}/"), from_node


def test_loading_the_ruleset_again_leaves_one_table_with_the_same_rules_and_the_block_in_place(lab, node):
    assert node.run(metadata_block()).returncode == 0
    node_ns = lab["node"]
    first = node_ns.ruleset()
    # The unit's own command, as systemd runs it at boot and on reload, on the file the step wrote.
    unit = node.files()[METADATA_BLOCK_UNIT]
    command = re.search(r"^ExecStart=(.+)$", unit, re.MULTILINE)
    assert command
    words = command.group(1).replace(METADATA_BLOCK_RULESET, str(node.path(METADATA_BLOCK_RULESET))).split()
    for _ in range(2):
        node_ns.run(*words)
    again = node_ns.ruleset()
    assert our_tables(again) == 1
    assert again == first
    assert len(block_rules(node_ns.table())) == 3
    assert_blocked(probe(lab["pod"], **POD_CHECKS))


MISTAKES = {
    # Forwarded packets never reach input or output.
    "hook input": ("hook forward", "hook input"),
    "hook output": ("hook forward", "hook output"),
    # After Flannel's masquerade the source is the node's address.
    "after the masquerade": ("hook forward priority filter - 10", "hook postrouting priority srcnat + 10"),
    # Before kube-proxy's DNAT a Service's address hides the metadata server.
    "before the DNAT": ("hook forward priority filter - 10", "hook prerouting priority raw"),
    "another pod CIDR": (f"ip saddr {POD_CIDR}", "ip saddr 10.245.0.0/16"),
    "no DNS exception": ("udp dport 53 accept", "udp dport 53 counter drop"),
}


def test_the_lab_catches_each_mistake_planted_in_the_ruleset(lab, node):
    """Each mistake planted in the step's ruleset changes what the pod sees so that assert_blocked
    fails, so the tests above would: the lab can tell a working block from a misplaced one."""
    assert node.run(metadata_block()).returncode == 0
    ruleset = node.files()[METADATA_BLOCK_RULESET]
    missed = []
    for mistake, (right, wrong) in MISTAKES.items():
        assert right in ruleset, mistake
        lab["node"].nft("-f", "-", input=ruleset.replace(right, wrong))
        try:
            assert_blocked(probe(lab["pod"], **POD_CHECKS))
        except AssertionError:
            continue
        missed.append(mistake)
    assert missed == []
