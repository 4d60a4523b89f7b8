"""50-kubeadm-init.sh after 45-restore-control-plane.sh (issue 13), run as root in a sandboxed node
(tests/node_sandbox.py) as the program sends it, with the kubeadm and kubectl stand-ins of
tests/test_node_steps.py. The node is left as the restore leaves it: the shared PKI in
/etc/kubernetes/pki, an etcd member in /var/lib/etcd and the marker, `backup=`, `revision=`,
`state=` lines (what tests/test_backup_restore.py checks the restore writes).

kubeadm's side, written here from its source (cmd/kubeadm/app/preflight/checks.go): init's
preflight refuses a non-empty etcd data dir as DirAvailable--var-lib-etcd ("DirAvailable-" and the
path with / made -) unless --ignore-preflight-errors names it, case-insensitively; `kubeadm reset`
empties the data dir and the PKI folder."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from node_sandbox import Sandbox, require_sandbox
from test_node_steps import INIT_CALL, KUBEADM, KUBECTL, init_calls, init_step, run_init

from components import backup_config

MARKER = backup_config.RESTORE_MARKER
PKI_DIR = backup_config.PKI_DIR
DATA_DIR = backup_config.ETCD_DATA_DIR
BACKUP = "gs://km-test-backups/kata-mesh-test/control-plane/20261127T060000Z-cp-0/"
SHARED_PKI = (
    "ca.crt",
    "ca.key",
    "sa.key",
    "sa.pub",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
    "etcd/ca.crt",
    "etcd/ca.key",
)
ETCD_FILES = ("member/snap/db", "member/wal/0000000000000000-0000000000000000.wal")
IGNORE_DATA_DIR = "--ignore-preflight-errors=DirAvailable--var-lib-etcd"
RESTORED_INIT_CALL = f"{INIT_CALL} {IGNORE_DATA_DIR}"
AFTER_INIT = ["kubeadm token list -o json", "kubeadm token delete initid"]
# What an init that died half-way leaves behind: kubeconfigs, static pod manifests, a leaf
# certificate issued from the restored CA.
LEFTOVERS = {
    **{
        f"/etc/kubernetes/{name}.conf": f"{name} of the first try\n"
        for name in ("admin", "super-admin", "kubelet", "controller-manager", "scheduler")
    },
    **{
        f"/etc/kubernetes/manifests/{name}.yaml": f"{name} pod of the first try\n"
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
    },
}
FIRST_TRY_CERT = f"{PKI_DIR}/apiserver.crt"

# Before the test_node_steps kubeadm stand-in: on init, what kubeadm finds (the CA it keeps, what
# an earlier try left) and its preflight check on the data dir; reset empties the data dir too.
KUBEADM_AFTER_RESTORE = (
    """if [[ ${1:-} == init ]]; then
  for f in /etc/kubernetes/pki/ca.key /etc/kubernetes/pki/etcd/ca.key; do
    [[ -f $f ]] && echo "init found $f $(sha256sum <"$f" | cut -d' ' -f1)" >>/km-test/calls.log
  done
  leftovers=$(ls /etc/kubernetes/*.conf /etc/kubernetes/manifests/*.yaml 2>/dev/null | tr '\\n' ' ')
  echo "init found leftovers: ${leftovers:-none}" >>/km-test/calls.log
  args=" $* "
  if [[ -n $(ls -A /var/lib/etcd 2>/dev/null) && ${args,,} != *" --ignore-preflight-errors=diravailable--var-lib-etcd "* ]]; then
    printf '[preflight] Some fatal errors occurred:\\n\\t[ERROR DirAvailable--var-lib-etcd]: /var/lib/etcd is not empty\\n' >&2
    exit 1
  fi
fi
[[ ${1:-} == reset ]] && rm -rf /var/lib/etcd/member
"""
    + KUBEADM
)


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    require_sandbox()
    sandbox = Sandbox(tmp_path / "cp-0")
    sandbox.behaviour["kubeadm"] = KUBEADM_AFTER_RESTORE
    sandbox.behaviour["kubectl"] = KUBECTL
    # Real on a node (cri-tools); here it only records its call.
    sandbox.behaviour["crictl"] = "exit 0\n"
    return sandbox


def restore_onto(node: Sandbox, state: str = "complete") -> dict[str, bytes]:
    """The node as 45-restore-control-plane.sh leaves it; the restored files' bytes by path."""
    restored: dict[str, bytes] = {}
    for name in SHARED_PKI:
        path = f"{PKI_DIR}/{name}"
        node.seed(
            path, f"restored {name} of the backed-up cluster\n", 0o600 if name.endswith(".key") else 0o644
        )
        restored[path] = node.path(path).read_bytes()
    for name in ETCD_FILES:
        path = f"{DATA_DIR}/{name}"
        node.seed(path, f"etcd {name} restored from revision 4242\n", 0o600)
        restored[path] = node.path(path).read_bytes()
    node.seed(MARKER, f"backup={BACKUP}\nrevision=4242\nstate={state}\n")
    return restored


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def untouched(node: Sandbox, before: dict, paths) -> list[str]:
    """The paths whose content, mode or mtime changed since `before` (node.changes())."""
    after = node.changes()
    return [p for p in paths if after.get(p) != before.get(p)]


def test_the_step_passes_the_marker_path_the_restore_writes():
    assert dict(init_step().args)["restored-marker"] == MARKER == "/etc/kubernetes/.kata-mesh-restored"


@pytest.mark.parametrize(
    ("marker", "message"),
    [("", "missing required argument(s): --restored-marker"), ("relative/marker", "absolute path")],
)
def test_a_missing_or_relative_marker_path_is_refused_before_anything(node, marker, message):
    step = init_step()
    args = tuple((k, marker if k == "restored-marker" else v) for k, v in step.args)
    # An empty value: the argument left out altogether.
    result = run_init(node, dataclasses.replace(step, args=tuple((k, v) for k, v in args if v)))
    assert result.returncode == 1
    assert message in result.stderr
    assert result.calls == [] and node.changes() == {}


def test_a_restored_cluster_is_initialised_on_its_data_and_keeps_its_ca(node):
    restored = restore_onto(node)
    before = node.changes()
    result = run_init(node)
    assert result.returncode == 0, result.stderr
    assert f"bringing the cluster back from backup {BACKUP}" in result.stderr
    assert init_calls(result) == [RESTORED_INIT_CALL, *AFTER_INIT]
    # kubeadm found the restored CAs in place, and they are byte for byte what was restored, as
    # is the etcd member and the marker.
    for path in (f"{PKI_DIR}/ca.key", f"{PKI_DIR}/etcd/ca.key"):
        assert f"init found {path} {sha256(restored[path])}" in result.calls
    assert {p: node.path(p).read_bytes() for p in restored} == restored
    assert untouched(node, before, [*restored, MARKER]) == []
    # The same as any init afterwards: super-admin.conf gone, the mark set.
    files = node.changes()
    assert "/etc/kubernetes/.kata-mesh-initialized" in files
    assert not node.path("/etc/kubernetes/super-admin.conf").is_file()

    # Once initialised, a run initialises nothing again and changes nothing.
    second = run_init(node)
    assert second.returncode == 0, second.stderr
    assert init_calls(second) == ["kubeadm token list -o json"]
    assert "back from backup" not in second.stderr
    assert node.changes() == files


def test_a_restore_that_died_half_way_is_refused_before_anything_changes(node):
    restore_onto(node, state="restoring")
    before = node.changes()
    result = run_init(node)
    assert result.returncode == 1
    assert f"the restore from {BACKUP} did not finish" in result.stderr
    # It names the step to run again: the script, and the program's resource for it.
    assert (
        "Run the restore step again (45-restore-control-plane.sh, the program's cp-0-restore" in result.stderr
    )
    assert result.calls == []
    assert node.changes() == before


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("marker-without-state", f"{MARKER} holds no state=complete nor state=restoring line"),
        ("no-etcd-member", f"but an etcd member in {DATA_DIR} is missing"),
        ("no-ca-key", f"but {PKI_DIR}/ca.key is missing"),
    ],
)
def test_a_marker_init_cannot_trust_is_refused_before_anything_changes(node, broken, message):
    restore_onto(node)
    if broken == "marker-without-state":
        node.seed(MARKER, f"backup={BACKUP}\nrevision=4242\n")
    elif broken == "no-etcd-member":
        for name in ETCD_FILES:
            node.path(f"{DATA_DIR}/{name}").unlink()
        node.path(f"{DATA_DIR}/member/snap").rmdir()
        node.path(f"{DATA_DIR}/member/wal").rmdir()
        node.path(f"{DATA_DIR}/member").rmdir()
    else:
        node.path(f"{PKI_DIR}/ca.key").unlink()
    before = node.changes()
    result = run_init(node)
    assert result.returncode == 1
    assert message in result.stderr
    assert result.calls == []
    assert node.changes() == before


def test_a_half_finished_init_on_restored_data_is_tried_again_without_kubeadm_reset(node):
    restored = restore_onto(node)
    for path, content in LEFTOVERS.items():
        node.seed(path, content, 0o600)
    node.seed(FIRST_TRY_CERT, "apiserver certificate issued from the restored CA\n")
    before = node.changes()
    result = run_init(node)
    assert result.returncode == 0, result.stderr
    assert not [c for c in result.calls if c.startswith("kubeadm reset")]
    assert "an earlier kubeadm init on the restored cluster did not finish" in result.stderr
    assert init_calls(result) == [RESTORED_INIT_CALL, *AFTER_INIT]
    # The kubelet stopped and the first try's pods went before init, which found none of what the
    # first try wrote.
    calls = result.calls
    init_at = next(i for i, c in enumerate(calls) if c.startswith("kubeadm init"))
    assert calls.index("systemctl stop kubelet") < calls.index("crictl rmp --all --force") < init_at
    assert "init found leftovers: none" in calls
    # The restored PKI and data dir, and the leaf certificate of the first try, as they were.
    assert {p: node.path(p).read_bytes() for p in restored} == restored
    assert untouched(node, before, [*restored, MARKER, FIRST_TRY_CERT]) == []


def test_without_a_marker_init_runs_as_it_always_did(node):
    result = run_init(node)
    assert result.returncode == 0, result.stderr
    assert init_calls(result) == [INIT_CALL, *AFTER_INIT]
    assert "back from backup" not in result.stderr
    assert MARKER not in node.changes()


def test_without_a_marker_a_half_finished_init_is_still_reset(node):
    node.seed("/etc/kubernetes/admin.conf", "from a run that died")
    node.seed(f"{DATA_DIR}/member/snap/db", "the first try's etcd")
    result = run_init(node)
    assert result.returncode == 0, result.stderr
    assert init_calls(result) == ["kubeadm reset -f", INIT_CALL, *AFTER_INIT]
    assert not [c for c in result.calls if c.startswith(("crictl", "systemctl stop"))]


def test_without_the_marker_restored_data_stops_kubeadms_preflight(node):
    """The marker is what lets init run on a non-empty data dir: without it, kubeadm refuses."""
    restore_onto(node)
    node.path(MARKER).unlink()
    result = run_init(node)
    assert result.returncode == 1
    assert "[ERROR DirAvailable--var-lib-etcd]: /var/lib/etcd is not empty" in result.stderr
    assert init_calls(result) == [INIT_CALL]
