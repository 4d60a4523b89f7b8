"""km_redirect_endpoint (scripts/node/lib.sh), for real: Debian's nft in network namespaces this
test makes and wires up like two control planes behind GCE's passthrough load balancer (nothing
connects them to this machine's network, so no packet leaves them):

    node (10.200.0.2, and 10.200.0.4)  --veth--  survivor (10.200.0.3)
    192.0.2.10 local (the guest agent's          192.0.2.10 local too (also a backend)
    route), 192.0.2.11 local too;                serves 10.200.0.3:6443, answering each
    serves 192.0.2.10:6444 only                  connection with the peer address it saw

The first control plane's new VM joins through the load balancer's address, which is local to it
while its own API server is not up: the redirect must send its connections to 192.0.2.10:6443 to
the survivor, from the node's own address (the survivor would answer 192.0.2.10 to itself)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import netns
import pytest
from harness import ROOT, require_tool, unavailable

# Real nftables in network namespaces: scripts/test.sh runs these as their own stage
# (pyproject.toml, `system`).
pytestmark = pytest.mark.system

LIB = ROOT / "scripts" / "node" / "lib.sh"
TABLE = "kata_mesh_rejoin"
LB = "192.0.2.10"
# Another address local to the node (another forwarding rule's, say): not redirected.
OTHER_LOCAL = "192.0.2.11"
PORT = "6443"
OTHER_PORT = "6444"
NODE_IP = "10.200.0.2"
# A second address of the node's, for a connection of its own to the survivor from elsewhere.
NODE_SECOND_IP = "10.200.0.4"
SURVIVOR_IP = "10.200.0.3"
CONNECT_TIMEOUT_SECONDS = 1.0
_names = itertools.count()

# Serves HOST:PORT, answering each connection with NAME and the peer address it saw.
SERVER = r"""
import socketserver, sys

name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])


class Answer(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(f"{name} {self.client_address[0]}\n".encode())


socketserver.ThreadingTCPServer.allow_reuse_address = True
server = socketserver.ThreadingTCPServer((host, port), Answer)
print("ready", flush=True)
server.serve_forever()
"""

# Connects to HOST:PORT (from SOURCE if given) and prints what came of it as JSON: the answer
# and the client's own address, or the error's type.
CLIENT = r"""
import json, socket, sys

host, port, timeout, source = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
try:
    with socket.create_connection(
        (host, port), timeout=timeout, source_address=(source, 0) if source else None
    ) as sock:
        local = sock.getsockname()[0]
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(100)
            if not chunk:
                break
            answer += chunk
    print(json.dumps({"ok": True, "answer": answer.decode().strip(), "local": local}))
except OSError as error:
    print(json.dumps({"ok": False, "error": type(error).__name__}))
"""


@dataclass
class Netns(netns.Netns):
    def ip(self, command: str) -> None:
        self.run("ip", *command.split())

    def serve(self, name: str, host: str, port: str) -> None:
        process = self.start(sys.executable, "-I", "-S", "-c", SERVER, name, host, port)
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready == "ready\n", process.stderr.read() if process.stderr else ready

    def connect(
        self, host: str, port: str, source: str = "", timeout: float = CONNECT_TIMEOUT_SECONDS
    ) -> dict:
        result = self.run(sys.executable, "-I", "-S", "-c", CLIENT, host, port, str(timeout), source)
        return json.loads(result.stdout)

    def tables(self) -> list[str]:
        return self.run("nft", "list", "tables").stdout.splitlines()

    def redirect(self, *args: str) -> subprocess.CompletedProcess[str]:
        """km_redirect_endpoint ARGS, lib.sh sourced as a step sources it, in this namespace."""
        return self.run(
            "bash",
            "-c",
            'lib=$1; shift; . "$lib"; km_redirect_endpoint "$@"',
            "km_redirect_endpoint",
            str(LIB),
            *args,
            check=False,
        )


@dataclass
class Lab:
    node: Netns
    survivor: Netns


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The two namespaces of the module's picture, wired up, their servers listening; no redirect."""
    if os.geteuid() != 0:
        unavailable("network namespaces need root")
    nft = require_tool("nft", "scripts/test.sh installs Debian's nftables when run as root")
    require_tool("ip", "iproute2")
    # lib.sh calls plain `nft`.
    env = {**os.environ, "PATH": f"{Path(nft).parent}:{os.environ.get('PATH', '')}"}
    prefix = f"kmrj{os.getpid()}x{next(_names)}"
    made: list[Netns] = []
    try:
        for role in ("node", "survivor"):
            namespace = Netns(f"{prefix}-{role}", env)
            added = subprocess.run(["ip", "netns", "add", namespace.name], capture_output=True, text=True)
            if added.returncode != 0:
                unavailable(f"cannot make a network namespace: {added.stderr.strip()}")
            made.append(namespace)
            namespace.ip("link set lo up")
        node, survivor = made
        node.ip(f"link add eth0 type veth peer name eth0 netns {survivor.name}")
        for namespace, addresses, local in (
            (node, [NODE_IP, NODE_SECOND_IP], [LB, OTHER_LOCAL]),
            (survivor, [SURVIVOR_IP], [LB]),
        ):
            for address in addresses:
                namespace.ip(f"addr add {address}/24 dev eth0")
            namespace.ip("link set eth0 up")
            # What GCE's guest agent adds for a load balancer that has this VM as a backend.
            for address in local:
                namespace.ip(f"route add local {address}/32 dev eth0 proto 66 table local")
        survivor.serve("survivor", SURVIVOR_IP, PORT)
        node.serve("node", LB, OTHER_PORT)
        yield Lab(node, survivor)
    finally:
        for namespace in made:
            netns.remove(namespace)


@pytest.fixture
def node(lab: Lab) -> Iterator[Netns]:
    """The node namespace, with no ruleset at the start and again after the test."""
    assert lab.node.tables() == []
    yield lab.node
    lab.node.run("nft", "flush", "ruleset")


def refused(result: dict) -> bool:
    return result == {"ok": False, "error": "ConnectionRefusedError"}


def add(node: Netns) -> None:
    result = node.redirect("add", LB, PORT, SURVIVOR_IP)
    assert result.returncode == 0, result.stderr
    assert f"connections to {LB}:{PORT} go to {SURVIVOR_IP}:{PORT}" in result.stderr


def assert_redirected(node: Netns) -> None:
    """The node's connection to the load balancer reaches the survivor, which saw it come from the
    node's own address, not from the load balancer's (the address the node's socket has)."""
    result = node.connect(LB, PORT)
    assert result == {"ok": True, "answer": f"survivor {NODE_IP}", "local": LB}, result


def test_before_the_redirect_the_load_balancer_address_is_this_node_and_refuses(node):
    assert refused(node.connect(LB, PORT))
    # The wiring works: the survivor is there, and answers the node's own address.
    assert node.connect(SURVIVOR_IP, PORT) == {"ok": True, "answer": f"survivor {NODE_IP}", "local": NODE_IP}


def test_add_sends_the_nodes_connections_to_the_survivor_from_the_nodes_own_address(node):
    add(node)
    assert node.tables() == [f"table ip {TABLE}"]
    assert_redirected(node)


def test_adding_again_leaves_one_table_and_the_redirect_works(node):
    add(node)
    first = node.run("nft", "list", "ruleset").stdout
    add(node)
    assert node.tables() == [f"table ip {TABLE}"]
    assert node.run("nft", "list", "ruleset").stdout == first
    assert_redirected(node)


def test_remove_ends_the_redirect_and_removing_again_is_harmless(node):
    add(node)
    assert_redirected(node)
    for _ in range(2):
        result = node.redirect("remove")
        assert result.returncode == 0, result.stderr
        assert node.tables() == []
        assert refused(node.connect(LB, PORT))


def test_remove_without_a_redirect_succeeds(node):
    result = node.redirect("remove")
    assert result.returncode == 0, result.stderr
    assert node.tables() == []


def test_other_ports_and_addresses_are_left_alone(node):
    add(node)
    assert_redirected(node)
    # Another port of the load balancer's address: the node's own listener, as before.
    assert node.connect(LB, OTHER_PORT) == {"ok": True, "answer": f"node {LB}", "local": LB}
    # The same port of another local address: not sent to the survivor.
    assert refused(node.connect(OTHER_LOCAL, PORT))
    # The node's own connections to the survivor keep their source: only redirected ones are
    # masqueraded.
    direct = node.connect(SURVIVOR_IP, PORT, source=NODE_SECOND_IP)
    assert direct == {"ok": True, "answer": f"survivor {NODE_SECOND_IP}", "local": NODE_SECOND_IP}


def test_without_the_masquerade_the_survivor_would_answer_itself(node):
    """Why the postrouting chain is there: the survivor sees the load balancer's address as the
    source, which is local there too, so its reply never leaves it and the join would hang."""
    add(node)
    node.run("nft", "delete", "chain", "ip", TABLE, "postrouting")
    assert node.connect(LB, PORT) == {"ok": False, "error": "TimeoutError"}


ARGUMENTS_MESSAGE = "km_redirect_endpoint: HOST and TARGET must be IPv4 addresses and PORT a port, not: "


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "192.0.2.999", PORT, SURVIVOR_IP], f"{ARGUMENTS_MESSAGE}192.0.2.999 {PORT} {SURVIVOR_IP}"),
        (["add", LB, "http", SURVIVOR_IP], f"{ARGUMENTS_MESSAGE}{LB} http {SURVIVOR_IP}"),
        (["add", LB, PORT, "survivor.internal"], f"{ARGUMENTS_MESSAGE}{LB} {PORT} survivor.internal"),
        (["add", f"{LB} tcp dport 22", PORT, SURVIVOR_IP], ARGUMENTS_MESSAGE),
        (["add", LB, PORT], f"{ARGUMENTS_MESSAGE}{LB} {PORT} "),
        (["add", LB, "0", SURVIVOR_IP], ARGUMENTS_MESSAGE),
        # Five digits, but no port.
        (["add", LB, "65536", SURVIVOR_IP], f"{ARGUMENTS_MESSAGE}{LB} 65536 {SURVIVOR_IP}"),
        (["flush"], "km_redirect_endpoint: add or remove, not: flush"),
    ],
)
def test_bad_arguments_fail_with_the_reason_and_change_nothing(node, args, message):
    result = node.redirect(*args)
    assert result.returncode == 1, result.stderr
    assert f"[kata-mesh] ERROR: {message}" in result.stderr
    assert node.tables() == []
    assert refused(node.connect(LB, PORT))
