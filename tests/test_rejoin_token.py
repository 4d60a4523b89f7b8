"""cp-0's new VM joins the control planes that survive it: 62-rejoin-token.sh, run on the surviving
cp-1 for cp-0, as the program sends it (its certificate key appended on stdin, as root on a
sandboxed cp-1, tests/node_sandbox.py), against a REAL etcd cluster (tests/etcd_cluster.py: etcd on
127.0.0.1 with kubeadm's TLS; cp-1's local member is the cluster's cp-1). crictl is the stand-in that
runs the real etcdctl; kubectl answers as the API server would (to a client with the admin
kubeconfig only); kubeadm keeps a copy of the config it is given and prints what kubeadm prints.
Each test reads etcd's membership afterwards with its own etcdctl, and the calls the step made, in
order.

cp-1 without a cluster has nothing to rejoin (cp-0 restores or initialises); cp-0's member that
answers is cp-0 serving already; a dead one goes (with its Node) when the rest keep a quorum, and
then the certificates are uploaded with the key (in a file only) and a join is printed. Expected
names, counts, commands and texts are etcd's and kubeadm's, written here, not read from the script.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from etcd_cluster import EtcdCluster, EtcdPool, require_etcd
from node_sandbox import Result, Sandbox, require_sandbox
from node_sandbox import etcd_steps as steps
from node_sandbox import step_error as error

from components.backups import rejoin_token_step
from components.node_provisioning import with_secret_args

ADMIN_CONF = "/etc/kubernetes/admin.conf"
THREE = {"cp-0": "voter", "cp-1": "voter", "cp-2": "voter"}
# The random 32 bytes the program makes for the rejoin, in hex (kubeadm's certificate key).
KEY = "5d41402abc4b2a76b9719d911017c5928c1f6a0e4b2d8c7f3a9e1b5d6c0f4a27"
CA_HASH = "9f2c1e7b3a5d48c6e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7"
# `kubeadm token create --print-join-command`: one line; kubeadm's join template ends each
# --discovery-token-ca-cert-hash with a space.
JOIN = f"kubeadm join 192.0.2.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:{CA_HASH} \n"

# The kubeadm-config ConfigMap's ClusterConfiguration as kubeadm (v1.31, v1beta4) stores it: its
# keys sorted, so apiVersion is not the first line (tests/samples/kubeadm).
CLUSTER_CONFIGURATION = (
    Path(__file__).parent / "samples" / "kubeadm" / "cluster-configuration.yaml"
).read_text()

# The calls, as the stand-ins log them (etcd_steps shows km_etcdctl's as `etcdctl ARGS`).
READYZ = "kubectl get --raw=/readyz --request-timeout=5s"
MEMBER_LIST = "etcdctl member list -w simple"
HEALTH = "etcdctl endpoint health --cluster -w json --command-timeout=3s"
DELETE_NODE = f"kubectl --kubeconfig {ADMIN_CONF} delete node cp-0 --ignore-not-found"
GET_CONFIG = "kubectl -n kube-system get configmap kubeadm-config -o jsonpath={.data.ClusterConfiguration}"
UPLOAD = "kubeadm init phase upload-certs --upload-certs --config /run/kata-mesh-upload-certs.TMP.yaml"
TOKEN = "kubeadm token create --ttl 1h --description kata-mesh join for cp-0 --print-join-command"

# kubectl as the API server answers it: to a client with the admin kubeconfig (--kubeconfig or
# KUBECONFIG; without one kubectl asks localhost:8080). state/api-server-down: /readyz fails.
KUBECTL = f"""if [[ " $* " != *" --kubeconfig {ADMIN_CONF} "* && ${{KUBECONFIG:-}} != {ADMIN_CONF} ]]; then
  echo "The connection to the server localhost:8080 was refused - did you specify the right host or port?" >&2
  exit 1
fi
case "$*" in
  "get --raw=/readyz --request-timeout=5s")
    [[ -f $state/api-server-down ]] && {{ echo "The connection to the server 192.0.2.10:6443 was refused - did you specify the right host or port?" >&2; exit 1; }}
    echo ok ;;
  "--kubeconfig {ADMIN_CONF} delete node "*" --ignore-not-found") echo "node \\"$5\\" deleted" ;;
  "-n kube-system get configmap kubeadm-config -o jsonpath={{.data.ClusterConfiguration}}")
    cat "$state/cluster-configuration" ;;
  *) echo "kubectl stand-in: unexpected call: kubectl $*" >&2; exit 2 ;;
esac
"""

# kubeadm: upload-certs keeps a copy of its config and its mode, notes any process that holds the
# key on its command line while it runs (in pure bash: none of its own shows the key), and prints the
# key as kubeadm does (phases/init/uploadcerts.go); state/upload-certs-fails: it fails. token create
# prints the join.
KUBEADM = """case "$*" in
  "init phase upload-certs --upload-certs --config "*)
    config=$6
    cp "$config" "$state/upload-certs-config"
    stat -c %a "$config" >"$state/upload-certs-config-mode"
    key=""
    while IFS= read -r line; do [[ $line == "certificateKey: "* ]] && key=${line#certificateKey: }; done <"$config"
    for cmdline in /proc/[0-9]*/cmdline; do
      mapfile -d '' -t words <"$cmdline" 2>/dev/null || continue
      [[ -n $key && "${words[*]}" == *"$key"* ]] && printf '%s\\n' "${words[*]}" >>"$state/key-on-a-command-line"
    done
    echo '[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system" Namespace'
    if [[ -f $state/upload-certs-fails ]]; then
      echo 'error execution phase upload-certs: error uploading certs: unable to create secret: Post "https://192.0.2.10:6443/api/v1/namespaces/kube-system/secrets": EOF' >&2
      exit 1
    fi
    printf '[upload-certs] Using certificate key:\\n%s\\n' "$key" ;;
  "token create "*) printf '%s' '@JOIN@' ;;
  *) echo "kubeadm stand-in: unexpected call: kubeadm $*" >&2; exit 2 ;;
esac
""".replace("@JOIN@", JOIN)


@pytest.fixture(scope="module")
def etcd_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdPool]:
    require_sandbox()
    require_etcd()
    with EtcdPool(tmp_path_factory.mktemp("etcd")) as pool:
        # One for each test that stops members, one shared by those that change no membership.
        pool.prestart(3, 3, 3, 3, 3)
        yield pool


@pytest.fixture
def node(tmp_path: Path) -> Sandbox:
    """cp-1, a control plane that serves the cluster: the admin kubeconfig, kubectl and kubeadm."""
    require_sandbox()
    sandbox = Sandbox(tmp_path / "cp-1")
    sandbox.seed(ADMIN_CONF, "admin")
    sandbox.behaviour["kubectl"] = KUBECTL
    sandbox.behaviour["kubeadm"] = KUBEADM
    sandbox.set_state("cluster-configuration", CLUSTER_CONFIGURATION)
    return sandbox


def on_cp1(node: Sandbox, cluster: EtcdCluster) -> Sandbox:
    """cp-1 of that cluster: its local etcd member is the cluster's cp-1."""
    pki = cluster.pki
    node.use_etcd(
        cluster.members["cp-1"].client_url,
        pki.ca_cert.read_text(),
        pki.client_cert.read_text(),
        pki.client_key.read_text(),
    )
    return node


def rejoin(node: Sandbox, key: str = KEY, api_timeout: str | None = "5") -> Result:
    """The step as the program runs it on cp-1 for cp-0: the key on stdin, after the script's args
    (the API server's wait bounded at 5 s unless told: a stand-in that stops answering ends it)."""
    step = rejoin_token_step("cp-0")
    if api_timeout is not None:
        args = tuple((k, api_timeout if k == "api-timeout-seconds" else v) for k, v in step.args)
        step = dataclasses.replace(step, args=args)
    assert KEY not in step.command_line
    return node.run(step, stdin=with_secret_args(step.script_text, (("certificate-key", key),)))


def calls(result: Result) -> list[str]:
    """etcd_steps, the upload's temporary file (mktemp's random part) shown as TMP."""
    return [
        re.sub(
            r"/run/kata-mesh-upload-certs\.[A-Za-z0-9]{6}\.yaml", "/run/kata-mesh-upload-certs.TMP.yaml", c
        )
        for c in steps(result)
    ]


def member_ids(cluster: EtcdCluster) -> dict[str, str]:
    """etcd's members as cp-1 lists them (cp-0's member may be down), each a voter: name to hex ID."""
    members = cluster.member_list(via="cp-1")
    assert not [m for m in members if m.get("isLearner")], members
    return {m.get("name", ""): f"{m['ID']:x}" for m in members}


def assert_key_kept_secret(node: Sandbox, result: Result) -> None:
    """The key travelled in a file only: on no command line, in no log, left in no file."""
    assert KEY not in result.stderr
    assert not [c for c in result.calls if KEY in c]
    assert not (node.state / "key-on-a-command-line").exists(), (
        node.state / "key-on-a-command-line"
    ).read_text()
    assert not [path for path, content in node.files().items() if KEY in content]
    assert not [path for path in node.files() if path.startswith("/run/kata-mesh-")]


# --- nothing to rejoin -----------------------------------------------------------------------------


def test_a_node_that_serves_no_cluster_has_nothing_to_rejoin(tmp_path):
    # cp-1 is new as well (or this is the stack's first `pulumi up`): no admin.conf. Every tool the
    # step could ask is a recording stand-in, crictl (etcd) included.
    require_sandbox()
    sandbox = Sandbox(tmp_path / "cp-1")
    sandbox.behaviour["crictl"] = 'echo "crictl stand-in: no etcd container on this node" >&2; exit 1\n'
    result = rejoin(sandbox)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.calls == []
    assert result.stderr == (
        f"[kata-mesh] this node serves no cluster yet (no {ADMIN_CONF}): "
        "cp-0 restores the newest backup or initialises a new cluster\n"
    )
    assert KEY not in result.stderr


@pytest.mark.system
def test_cp0_whose_member_answers_serves_already_and_nothing_changes(etcd_pool, node):
    cluster = etcd_pool.shared(3)
    ids = cluster.member_ids()
    on_cp1(node, cluster)
    result = rejoin(node)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "[kata-mesh] cp-0 serves as a control plane already: nothing to rejoin" in result.stderr
    assert calls(result) == [READYZ, GET_CONFIG, MEMBER_LIST, HEALTH], (
        "it deleted, removed, uploaded or made a token"
    )
    assert cluster.membership() == THREE
    assert cluster.member_ids() == ids
    assert_key_kept_secret(node, result)


# --- cp-0's old VM is gone: forget it, upload the certificates, print the join ---------------------


@pytest.mark.system
def test_a_dead_cp0_is_forgotten_and_a_join_with_the_uploaded_certificates_is_printed(etcd_pool, node):
    cluster = etcd_pool.take(3)
    ids = cluster.member_ids()
    cluster.stop("cp-0")  # cp-0's old VM is gone
    on_cp1(node, cluster)
    result = rejoin(node)
    assert result.returncode == 0, result.stderr
    # stdout is the join command alone (the program hands it to cp-0's new VM).
    assert result.stdout == JOIN
    # The cluster's settings read before anything changes.
    assert calls(result) == [
        READYZ,
        GET_CONFIG,
        MEMBER_LIST,
        HEALTH,
        DELETE_NODE,
        f"etcdctl member remove {ids['cp-0']}",
        UPLOAD,
        TOKEN,
    ]
    assert "without it, 2 of 2 healthy (quorum 2)" in result.stderr
    assert member_ids(cluster) == {"cp-1": ids["cp-1"], "cp-2": ids["cp-2"]}
    # kubeadm's config: an InitConfiguration of the cluster's own apiVersion with the key, then the
    # ClusterConfiguration exactly as the ConfigMap holds it; readable by the root only.
    seen = (node.state / "upload-certs-config").read_text()
    assert seen == (
        "apiVersion: kubeadm.k8s.io/v1beta4\n"
        "kind: InitConfiguration\n"
        f"certificateKey: {KEY}\n"
        "---\n" + CLUSTER_CONFIGURATION
    )
    documents = list(yaml.safe_load_all(seen))
    assert documents == [
        {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "InitConfiguration", "certificateKey": KEY},
        yaml.safe_load(CLUSTER_CONFIGURATION),
    ]
    assert (node.state / "upload-certs-config-mode").read_text().strip() == "600"
    # kubeadm prints the key; the step's log shows it hidden.
    assert "[upload-certs] Using certificate key:\n[hidden]\n" in result.stderr
    assert_key_kept_secret(node, result)


@pytest.mark.system
def test_a_key_that_is_no_certificate_key_is_refused_before_anything_then_the_run_goes_through(
    etcd_pool, node
):
    # Not 64 lowercase hex digits: refused before the API server is even asked, so cp-0's dead
    # member and its Node are still there for the next run (the next pulumi up, with the program's
    # key), which forgets them and makes the join.
    cluster = etcd_pool.take(3)
    ids = cluster.member_ids()
    cluster.stop("cp-0")
    on_cp1(node, cluster)
    bad_key = KEY.upper()
    result = rejoin(node, key=bad_key)
    assert result.returncode == 1
    assert error(result) == "--certificate-key must be 64 lowercase hex digits"
    assert result.stdout == ""
    assert bad_key not in result.stderr
    assert calls(result) == []
    assert member_ids(cluster) == ids

    again = rejoin(node)
    assert again.returncode == 0, again.stderr
    assert again.stdout == JOIN
    assert calls(again) == [
        READYZ,
        GET_CONFIG,
        MEMBER_LIST,
        HEALTH,
        DELETE_NODE,
        f"etcdctl member remove {ids['cp-0']}",
        UPLOAD,
        TOKEN,
    ]
    assert f"certificateKey: {KEY}\n" in (node.state / "upload-certs-config").read_text()
    assert member_ids(cluster) == {"cp-1": ids["cp-1"], "cp-2": ids["cp-2"]}
    assert_key_kept_secret(node, again)


@pytest.mark.system
def test_an_upload_that_fails_makes_no_join_and_leaves_the_key_nowhere(etcd_pool, node):
    # An earlier run forgot cp-0 (its member is gone: the test removes it as that run did); this
    # run's upload fails (the API server went away meanwhile).
    cluster = etcd_pool.take(3)
    ids = cluster.member_ids()
    cluster.stop("cp-0")
    cluster.etcdctl("member", "remove", ids["cp-0"], via="cp-1")
    on_cp1(node, cluster)
    node.set_state("upload-certs-fails")
    result = rejoin(node)
    assert result.returncode == 1
    assert error(result) == "could not upload the control-plane certificates; see the output above"
    assert "error execution phase upload-certs: error uploading certs" in result.stderr  # kubeadm's own
    assert result.stdout == "", "a join without the certificates it needs"
    assert calls(result) == [READYZ, GET_CONFIG, MEMBER_LIST, UPLOAD]
    assert member_ids(cluster) == {"cp-1": ids["cp-1"], "cp-2": ids["cp-2"]}
    # kubeadm had the key (its config, as the stand-in copied it); the node keeps it in no file.
    assert f"certificateKey: {KEY}\n" in (node.state / "upload-certs-config").read_text()
    assert_key_kept_secret(node, result)


# --- refused: cp-0 must neither restore nor initialise beside a cluster that may still serve -------


@pytest.mark.system
def test_a_node_whose_api_server_does_not_answer_lets_cp0_neither_restore_nor_initialise(etcd_pool, node):
    cluster = etcd_pool.shared(3)
    on_cp1(node, cluster)
    node.set_state("api-server-down")
    # bash's SECONDS follows the clock: a timeout of 1 s keeps the (instant-sleep) wait short.
    result = rejoin(node, api_timeout="1")
    assert result.returncode == 1
    assert result.stdout == ""
    message = error(result)
    assert message.startswith(
        f"this control plane holds a cluster ({ADMIN_CONF}) but its API server does not answer after 1s: "
    )
    assert "cp-0 is not let to restore a backup or make a new cluster beside it" in message
    # It asked the API server until the timeout, waiting 5 s between tries, and asked nothing else.
    assert READYZ in result.calls
    assert set(result.calls) <= {READYZ, "sleep 5"}, result.calls
    assert cluster.membership() == THREE
    assert_key_kept_secret(node, result)


@pytest.mark.system
def test_forgetting_cp0_where_the_rest_lost_quorum_is_refused_and_nothing_is_uploaded(etcd_pool, node):
    # cp-0 and cp-2 down: cp-1 alone has no quorum, so it fails its health check too (a quorum
    # read): of the 2 members that would remain, none is healthy where 2 are needed.
    cluster = etcd_pool.take(3)
    ids = cluster.member_ids()
    cluster.stop("cp-0")
    cluster.stop("cp-2")
    on_cp1(node, cluster)
    result = rejoin(node)
    assert result.returncode == 1
    assert result.stdout == ""
    message = error(result)
    assert message.startswith(
        "forgetting cp-0 would leave etcd without quorum: of the 2 members that would remain, 0 healthy where 2 are needed; unhealthy: "
    )
    unhealthy = message.split("unhealthy: ")[1].split(". Bring them back first")[0]
    assert sorted(unhealthy.split()) == ["cp-1", "cp-2"]  # in etcd's order (by member ID)
    assert message.endswith("nothing was changed")
    assert calls(result) == [READYZ, GET_CONFIG, MEMBER_LIST, HEALTH]
    assert member_ids(cluster) == ids
    assert_key_kept_secret(node, result)
