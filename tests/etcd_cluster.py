"""Real etcd clusters for tests: N members on 127.0.0.1 (free ports), named cp-0..cp-(N-1) as
kubeadm's stacked etcd names its members after the nodes, with TLS on the client and peer sides as
kubeadm sets it up (made here by openssl: a CA, a server/peer certificate for IP 127.0.0.1, a client
certificate like kubeadm's healthcheck-client), each member's data under the given folder.

etcd refuses to add or remove an active voting member until its peers have been connected for 5
seconds (--strict-reconfig-check, on by default and in kubeadm), so a test that reconfigures a
cluster takes one the pool started ahead of time; it waits only for what is left of those seconds.

    @pytest.fixture(scope="module")
    def etcd_pool(tmp_path_factory):
        require_etcd()
        with EtcdPool(tmp_path_factory.mktemp("etcd")) as pool:
            pool.prestart(3, 3, 5)  # one for each test (shared() counts as one)
            yield pool

Leaving the `with` (or the process dying: members get SIGKILL with their parent) kills every
member the pool started, whatever the test did to them.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from harness import require_tool

STARTUP_TIMEOUT = 30.0
# etcd's HealthInterval: how long peers must have been connected before it reconfigures (plus a
# margin: its streams come up a little after the cluster answers).
RECONFIGURATION_SETTLE = 6.0
PR_SET_PDEATHSIG = 1


def require_etcd() -> None:
    """etcd and etcdctl (Debian's etcd-server and etcd-client)."""
    require_tool("etcd", "Debian's etcd-server; scripts/test.sh installs it when run as root")
    require_tool("etcdctl", "Debian's etcd-client; scripts/test.sh installs it when run as root")


@dataclass(frozen=True)
class Pki:
    """A cluster's CA and certificates (PEM files)."""

    ca_cert: Path
    member_cert: Path
    member_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_pki(folder: Path) -> Pki:
    """A CA; one certificate for every member, on its client and its peer side (IP SAN 127.0.0.1;
    server and client use, as peers are both); a client certificate for etcdctl (client use)."""
    folder.mkdir(parents=True, exist_ok=True)
    new_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca_key, ca_cert = folder / "ca.key", folder / "ca.crt"
    _openssl(
        "req", "-x509", *new_key, "-keyout", ca_key, "-out", ca_cert, "-subj", "/CN=etcd-ca", "-days", "2"
    )

    def issue(name: str, extensions: str, serial: int) -> tuple[Path, Path]:
        key, csr, cert, ext = (folder / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
        _openssl("req", "-new", *new_key, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        ext.write_text(extensions)
        _openssl(
            "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-set_serial", str(serial),
            "-days", "1", "-extfile", ext, "-out", cert,
        )  # fmt: skip
        return cert, key

    usage = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    member_cert, member_key = issue(
        "etcd-member",
        usage + "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        2,
    )
    client_cert, client_key = issue(
        "kube-etcd-healthcheck-client", usage + "extendedKeyUsage=clientAuth\n", 3
    )
    return Pki(ca_cert, member_cert, member_key, client_cert, client_key)


# Below the kernel's ephemeral range: a port the kernel hands out itself (bind to port 0) can be
# taken as the source port of any outgoing connection, etcd's own peers' included, between the
# test choosing it and etcd listening on it ("bind: address already in use").
LISTEN_PORTS_FROM = 10000


def ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on, outside the ephemeral range (held open together while chosen, so
    they are distinct)."""
    candidates = list(range(LISTEN_PORTS_FROM, ephemeral_ports_start()))
    random.shuffle(candidates)
    sockets: list[socket.socket] = []
    try:
        for port in candidates:
            if len(sockets) == count:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            sockets.append(s)
        if len(sockets) < count:
            raise RuntimeError(f"fewer than {count} free ports from {LISTEN_PORTS_FROM} on 127.0.0.1")
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    """In the member's process before exec: SIGKILL when the test process goes, however it goes."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Member:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log: Path
    process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class EtcdCluster:
    """One cluster: its members by name, the test's own etcdctl, stopping and killing members."""

    def __init__(self, base: Path, size: int, pki: Pki, etcd: str = "etcd") -> None:
        self.base = base
        self.pki = pki
        # The etcd binary: Debian's 3.4 on PATH, unless another is named.
        self.etcd = etcd
        self.size = size
        self.healthy_since: float | None = None
        ports = free_ports(2 * size)
        self.members = {
            f"cp-{i}": Member(
                f"cp-{i}",
                f"https://127.0.0.1:{ports[2 * i]}",
                f"https://127.0.0.1:{ports[2 * i + 1]}",
                base / f"cp-{i}.etcd",
                base / f"cp-{i}.log",
            )
            for i in range(size)
        }

    # --- processes ------------------------------------------------------------------------------

    def spawn(self) -> None:
        """Starts every member (a new cluster); wait_healthy() waits for them."""
        self.base.mkdir(parents=True, exist_ok=True)
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members.values())
        for member in self.members.values():
            self._spawn(member, initial)

    def _spawn(self, member: Member, initial_cluster: str) -> None:
        pki = self.pki
        command = [
            self.etcd,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial_cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.base.name}-{os.getpid()}",
            "--client-cert-auth=true",
            f"--trusted-ca-file={pki.ca_cert}",
            f"--cert-file={pki.member_cert}",
            f"--key-file={pki.member_key}",
            "--peer-client-cert-auth=true",
            f"--peer-trusted-ca-file={pki.ca_cert}",
            f"--peer-cert-file={pki.member_cert}",
            f"--peer-key-file={pki.member_key}",
            "--logger=zap",
            "--log-level=warn",
        ]
        with member.log.open("ab") as log:
            member.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def wait_healthy(self, names: list[str] | None = None, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until every named member (all: the whole cluster) answers a quorum read."""
        names = list(self.members) if names is None else names
        endpoints = ",".join(self.members[n].client_url for n in names)
        deadline = time.monotonic() + timeout
        while True:
            result = self._etcdctl(endpoints, "--command-timeout=2s", "endpoint", "health", check=False)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                logs = "".join(f"\n--- {n}:\n{self.members[n].log.read_text()[-2000:]}" for n in names)
                raise AssertionError(f"etcd members {names} are not healthy: {result.stderr[-1000:]}{logs}")
            time.sleep(0.05)
        if self.healthy_since is None:
            self.healthy_since = time.monotonic()

    def wait_reconfigurable(self) -> None:
        """Until etcd's strict reconfiguration check lets a member be added or removed."""
        self.wait_healthy()
        assert self.healthy_since is not None
        time.sleep(max(0.0, self.healthy_since + RECONFIGURATION_SETTLE - time.monotonic()))

    def stop(self, name: str) -> None:
        """Stops one member (SIGTERM, then SIGKILL) and, if the others still have a quorum, waits
        until they have a leader and answer again."""
        self._end(self.members[name])
        others = [n for n, m in self.members.items() if m.running]
        if len(others) > self.size // 2:
            self.wait_healthy(others)

    @staticmethod
    def _end(member: Member) -> None:
        process = member.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def kill(self) -> None:
        for member in self.members.values():
            if member.process is not None and member.process.poll() is None:
                member.process.kill()
                member.process.wait(timeout=10)

    # --- the test's own etcdctl -----------------------------------------------------------------

    def _etcdctl(self, endpoints: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        pki = self.pki
        return subprocess.run(
            [
                "etcdctl",
                f"--endpoints={endpoints}",
                f"--cacert={pki.ca_cert}",
                f"--cert={pki.client_cert}",
                f"--key={pki.client_key}",
                *args,
            ],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    def etcdctl(self, *args: str, via: str = "cp-0", check: bool = True) -> subprocess.CompletedProcess:
        """etcdctl ARGS as a client of one member (cp-0 unless told)."""
        return self._etcdctl(self.members[via].client_url, *args, check=check)

    def member_list(self, via: str = "cp-0") -> list[dict]:
        return json.loads(self.etcdctl("member", "list", "-w", "json", via=via).stdout)["members"]

    def membership(self, via: str = "cp-0") -> dict[str, str]:
        """Each member's name (an unstarted one has none yet: its peer URLs) and its role,
        "voter" or "learner", as etcd lists them."""
        return {
            m.get("name") or ",".join(m["peerURLs"]): "learner" if m.get("isLearner") else "voter"
            for m in self.member_list(via)
        }

    def member_ids(self) -> dict[str, str]:
        """Each named member's ID in hex, as etcdctl prints it (read here from JSON, where it is a
        64-bit integer; Python's json keeps every bit of it)."""
        return {m["name"]: f"{m['ID']:x}" for m in self.member_list() if m.get("name")}

    def add_learner(self, name: str) -> str:
        """Adds a learner that never starts (as a join that died after `member add` leaves one
        behind); its peer URL."""
        self.wait_reconfigurable()
        (port,) = free_ports(1)
        peer_url = f"https://127.0.0.1:{port}"
        self.etcdctl("member", "add", name, "--learner", f"--peer-urls={peer_url}")
        return peer_url


class EtcdPool:
    """Clusters for one test module, started ahead (prestart: they come up side by side, and have
    been connected long enough to be reconfigured by the time the tests that do so run) or on
    demand. A cluster from take() goes to one test only; shared() is one cluster for the tests
    that leave its membership as it was, checked before each. Either way a test starts from a
    known membership. Leaving the `with` kills every member of every cluster."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.pki = make_pki(base / "pki")
        self.clusters: list[EtcdCluster] = []
        self.ready: dict[int, list[EtcdCluster]] = {}
        self.watchers: dict[int, threading.Thread] = {}
        self.shared_clusters: dict[int, EtcdCluster] = {}

    def __enter__(self) -> EtcdPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()

    def _new(self, size: int) -> EtcdCluster:
        cluster = EtcdCluster(self.base / f"cluster-{len(self.clusters)}", size, self.pki)
        self.clusters.append(cluster)
        cluster.spawn()
        return cluster

    def prestart(self, *sizes: int) -> None:
        """Starts one cluster of each size now, without waiting for it (a thread notes when it is
        healthy); take() hands them out first."""
        for size in sizes:
            cluster = self._new(size)
            watcher = threading.Thread(target=cluster.wait_healthy, daemon=True)
            watcher.start()
            self.ready.setdefault(size, []).append(cluster)
            self.watchers[id(cluster)] = watcher

    def take(self, size: int, reconfigurable: bool = False) -> EtcdCluster:
        """A healthy cluster of that size that no test has had (a prestarted one while any are
        left); reconfigurable: once etcd lets it add or remove a member."""
        waiting = self.ready.get(size, [])
        cluster = waiting.pop(0) if waiting else self._new(size)
        watcher = self.watchers.pop(id(cluster), None)
        if watcher is not None:
            watcher.join()
        if reconfigurable:
            cluster.wait_reconfigurable()
        else:
            cluster.wait_healthy()
        return cluster

    def shared(self, size: int) -> EtcdCluster:
        """The pool's cluster of that size for tests that change no membership: still every
        member it started with, all voting and running (else, after a test that changed it, a
        new one)."""
        cluster = self.shared_clusters.get(size)
        if cluster is not None and not (
            all(m.running for m in cluster.members.values())
            and cluster.membership() == dict.fromkeys(cluster.members, "voter")
        ):
            cluster.kill()
            cluster = None
        if cluster is None:
            cluster = self.shared_clusters[size] = self.take(size)
        cluster.wait_healthy()
        return cluster

    def kill(self) -> None:
        for cluster in self.clusters:
            cluster.kill()
