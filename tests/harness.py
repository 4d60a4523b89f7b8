"""The test side of the mock engine: the operator's config, mocks that compute what the real
providers would (with recorded samples for the proof's steps), and one cached run per stack."""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pulumi
import pytest
import yaml
from pulumi.runtime import mocks as pulumi_mocks

from offline.charts import find_helm
from offline.engine import (
    PROJECT,
    PROJECT_FILE,
    ROOT,
    SECRET_SIG,
    SECRET_VALUE,
    STACKS,
    UNKNOWN,
    ProgramRun,
    RecordingMonitor,
    Registration,
    as_manifest,
    command_args,
    config_string,
    is_secret,
    node_images_listed,
    plain_strings,
    project_defaults,
)
from offline.engine import run_program as run_engine
from offline.engine import stack_config as engine_stack_config

__all__ = [
    "PROJECT",
    "PROJECT_FILE",
    "ROOT",
    "SECRET_SIG",
    "SECRET_VALUE",
    "STACKS",
    "UNKNOWN",
    "ProgramRun",
    "RecordingMonitor",
    "Registration",
    "as_manifest",
    "assert_connects_to",
    "command_args",
    "config_string",
    "is_secret",
    "node_vms",
    "plain_strings",
    "project_defaults",
    "unsecret_value",
]


# What the backup bucket lists (under the cluster's prefix): two complete backups, and a newer one
# whose manifest never arrived (an upload cut short), which is not a backup to restore.
SAMPLE_BACKUP_OBJECTS = (
    "20261126T000000Z-cp-0/etcd.db",
    "20261126T000000Z-cp-0/pki.tar.gz",
    "20261126T000000Z-cp-0/manifest.json",
    "20261127T060000Z-cp-1/etcd.db",
    "20261127T060000Z-cp-1/pki.tar.gz",
    "20261127T060000Z-cp-1/manifest.json",
    "20261127T120000Z-cp-0/etcd.db",
)


def certificate_info(pem: str) -> dict[str, Any]:
    """What pulumi-tls's getCertificate says of a certificate, its dates read by openssl."""
    dates = subprocess.run(
        ["openssl", "x509", "-noout", "-startdate", "-enddate", "-subject"],
        input=pem,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = dict(line.split("=", 1) for line in dates.splitlines())

    def rfc3339(openssl_date: str) -> str:
        return datetime.datetime.strptime(openssl_date, "%b %d %H:%M:%S %Y %Z").strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "isCa": False,
        "maxPathLength": 0,
        "issuer": fields["subject"],
        "subject": fields["subject"],
        "notBefore": rfc3339(fields["notBefore"]),
        "notAfter": rfc3339(fields["notAfter"]),
        "serialNumber": "1",
        "signatureAlgorithm": "ECDSA-SHA256",
        "publicKeyAlgorithm": "ECDSA",
        "version": 3,
        "sha1Fingerprint": "",
        "certPem": pem,
    }


def backup_object(invoke_args: Mapping[str, Any], name: str) -> dict[str, str]:
    full = f"{invoke_args['prefix']}{name}"
    link = f"https://storage.googleapis.com/storage/v1/b/{invoke_args['bucket']}/o/{full.replace('/', '%2F')}"
    return {
        "contentType": "application/octet-stream",
        "mediaLink": f"{link}?alt=media",
        "name": full,
        "selfLink": link,
        "storageClass": "STANDARD",
        "updated": "2026-11-27T12:00:00Z",
    }


def node_vms(program: ProgramRun) -> list[Registration]:
    """The cluster's node VMs: every instance but the bastion."""
    return [
        r
        for r in program.of_type("gcp:compute/instance:Instance")
        if unsecret_value(r.inputs.get("labels", {})).get("role") != "bastion"
    ]


def unsecret_value(value: Any) -> Any:
    """A resource input as the provider gets it: the secret's value."""
    return value["value"] if is_secret(value) else value


def assert_connects_to(program: ProgramRun, connection: dict, node: str) -> None:
    """An SSH step's connection goes to `node` and pins that node's own host key; a private node
    is reached at its internal address through the bastion, whose host key is pinned too."""
    nodes = program.output("nodes")
    assert connection["hostKey"] == mock_ed25519_public_key(f"{node}-host-key"), node
    external = nodes[node]["externalIp"]
    if external is None:
        assert connection["host"] == nodes[node]["internalIp"], node
        proxy = connection["proxy"]
        assert proxy["host"] == program.output("bastionExternalIp"), node
        assert proxy["hostKey"] == mock_ed25519_public_key("bastion-host-key"), node
        assert (proxy["user"], proxy["privateKey"]) == (connection["user"], connection["privateKey"])
    else:
        assert connection["host"] == external, node
        assert "proxy" not in connection, node


def mock_ed25519_public_key(name: str) -> str:
    """A well-formed OpenSSH ED25519 public key of its own for each key resource (ssh-keygen reads
    it; nobody holds its private half): the key type, then 32 bytes from the resource's name."""
    blob = b"".join(
        len(part).to_bytes(4, "big") + part
        for part in (b"ssh-ed25519", hashlib.sha256(name.encode()).digest())
    )
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}"


# What each README user adds with `pulumi config set` before the first `pulumi up`.
OPERATOR_CONFIG: dict[str, Any] = {
    "gcp:project": "kata-mesh-test",
    f"{PROJECT}:sshAllowedCidrs": ["198.51.100.7/32", "192.0.2.0/28"],
    f"{PROJECT}:apiAllowedCidrs": ["198.51.100.7/32"],
    # The ingress gateway's clients (prod has the gateway on), apart from the API's admins.
    f"{PROJECT}:gatewayAllowedCidrs": ["203.0.113.0/24"],
}


MOCK_TOKEN = "abcdef.0123456789abcdef"
MOCK_CA_HASH = "sha256:" + "c" * 64
# A real client certificate (openssl, like kubeadm's admin certificate: O=kubeadm:cluster-admins), so
# the program's expiry output comes from a certificate's own notAfter.
ADMIN_CLIENT_CERT = (Path(__file__).parent / "samples" / "admin-client.crt").read_text()
MOCK_CA_FINGERPRINT = subprocess.run(
    ["openssl", "x509", "-noout", "-fingerprint", "-sha256"],
    input=ADMIN_CLIENT_CERT,
    capture_output=True,
    text=True,
    check=True,
).stdout
MOCK_ADMIN_CONF = f"""apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: Q0EK
    server: https://10.10.0.2:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
users:
- name: kubernetes-admin
  user:
    client-certificate-data: {base64.b64encode(ADMIN_CLIENT_CERT.encode()).decode()}
    client-key-data: S0VZCg==
"""


SAMPLES = ROOT / "tests" / "samples" / "verification"
# The upstream charts (../shared/charts, see its README), or where KATA_MESH_CHARTS points.
CHARTS_DIR = Path(os.environ.get("KATA_MESH_CHARTS", ROOT.parent / "shared" / "charts"))


def unavailable(reason: str) -> NoReturn:
    """What a test needs is not here: CI must have it (the test fails), elsewhere it is skipped."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def require_charts() -> Path:
    """The folder of upstream chart archives."""
    if not CHARTS_DIR.is_dir():
        unavailable(f"no upstream charts at {CHARTS_DIR} (a clone outside this setup; set KATA_MESH_CHARTS)")
    return CHARTS_DIR


def require_helm() -> str:
    """The helm scripts/setup.sh fetches (or one on PATH)."""
    helm = find_helm()
    if helm is None:
        unavailable("no helm: scripts/setup.sh fetches it (needs npm)")
    return helm


KATA_GUEST_KERNEL = "6.12.47"


def sample(name: str) -> Any:
    text = (SAMPLES / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


def split_curl_output(text: str) -> dict[str, str]:
    """What 96-mesh-facts.sh keeps of `curl -w '\\n%{http_code}'`: the body, and the status line."""
    body, _, status = text.rpartition("\n")
    return {"status": status, "body": body}


def sample_facts(node: str, pods: str = "kubectl-get-pods.json", curl: str = "curl-get-mtls.txt") -> dict:
    """The control plane's facts as 96-mesh-facts.sh assembles them, from recorded outputs."""
    pod_list = sample(pods)
    for item in pod_list["items"]:
        item["spec"]["nodeName"] = node
    kernels = {
        item["metadata"]["name"]: KATA_GUEST_KERNEL
        if item["spec"].get("runtimeClassName") == "kata-runtime"
        else "6.8.0-1017-gcp"
        for item in pod_list["items"]
    }
    return {
        "pods": pod_list,
        "nodes": sample("kubectl-get-nodes.json"),
        "podKernels": kernels,
        "request": split_curl_output(sample(curl)),
    }


def sample_evidence(node: str, processes: str = "ps-args-worker.txt") -> dict:
    """One node's evidence as 95-kata-evidence.sh assembles it, from recorded outputs."""
    pods = sample("crictl-pods.json")
    inspect = {
        item["id"]: sample(f"crictl-inspectp-{kind}.json")
        for item, kind in zip(pods["items"], ("kata", "runc", "client"), strict=True)
    }
    memory = {
        pods["items"][0]["metadata"]["uid"]: 412_000_000,
        pods["items"][1]["metadata"]["uid"]: 38_000_000,
    }
    return {
        "node": node,
        "kernel": "6.8.0-1017-gcp",
        "pods": pods,
        "inspect": inspect,
        "memory": memory,
        "processes": sample(processes),
    }


def stack_config(stack: str, overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    return engine_stack_config(stack, {**OPERATOR_CONFIG, **(overrides or {})})


def _fake_ip(prefix: str, name: str) -> str:
    return f"{prefix}.{int(hashlib.sha256(name.encode()).hexdigest(), 16) % 250 + 2}"


COMPUTE_API = "https://www.googleapis.com/compute/v1"


class KataMeshMocks(pulumi_mocks.Mocks):
    """Computes the outputs the real providers would; in a preview, only inputs come back.

    survivors: the first control plane's VM is new while the others serve, so the rejoin step on
    the second one prints a join (by default nothing survives it: a stack's first `pulumi up`)."""

    def __init__(self, preview: bool, survivors: bool = False, node_images: list[str] | None = None) -> None:
        self.preview = preview
        self.survivors = survivors
        # The node images that exist (by name); None: the one the stack asks for exists.
        self.node_images = node_images

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict]:
        state = dict(args.inputs)
        if self.preview:
            return "", state
        name = state.get("name", args.name)
        if args.typ == "gcp:compute/address:Address":
            state["address"] = _fake_ip("192.0.2", name)
            state["selfLink"] = (
                f"{COMPUTE_API}/projects/kata-mesh-test/regions/{state['region']}/addresses/{name}"
            )
        elif args.typ == "gcp:compute/instance:Instance":
            nics = [dict(nic) for nic in state.get("networkInterfaces", [])]
            nics[0]["networkIp"] = _fake_ip("10.10.0", name)
            state["networkInterfaces"] = nics
            state["instanceId"] = str(int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10**12)
            state["selfLink"] = (
                f"{COMPUTE_API}/projects/kata-mesh-test/zones/{state['zone']}/instances/{name}"
            )
        elif args.typ == "gcp:compute/instanceGroup:InstanceGroup":
            state["selfLink"] = (
                f"{COMPUTE_API}/projects/kata-mesh-test/zones/{state['zone']}/instanceGroups/{name}"
            )
        elif args.typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{state['accountId']}@kata-mesh-test.iam.gserviceaccount.com"
        elif args.typ == "gcp:compute/snapshot:Snapshot":
            state["selfLink"] = f"{COMPUTE_API}/projects/kata-mesh-test/global/snapshots/{name}"
        elif args.typ == "command:remote:Command" and args.name.endswith("-rejoin-token"):
            state["stdout"] = self.command_stdout(state, args.name) if self.survivors else ""
        elif args.typ == "command:remote:Command":
            state["stdout"] = self.command_stdout(state, args.name)
        elif args.typ == "random:index/randomId:RandomId":
            state["hex"] = hashlib.sha256(f"{name}-mock-id".encode()).hexdigest()[
                : 2 * int(state["byteLength"])
            ]
        elif args.typ == "random:index/randomBytes:RandomBytes":
            digest = hashlib.sha256(f"{name}-mock-random".encode()).digest()[: int(state["length"])]
            state["hex"] = digest.hex()
            state["base64"] = base64.b64encode(digest).decode()
        elif args.typ == "tls:index/privateKey:PrivateKey":
            state["privateKeyOpenssh"] = (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nmock\n-----END OPENSSH PRIVATE KEY-----\n"
            )
            state["publicKeyOpenssh"] = mock_ed25519_public_key(name) + "\n"
        return f"{name}-id", state

    @staticmethod
    def command_stdout(state: dict[str, Any], name: str) -> str:
        """What the remote commands print that the program reads back."""

        def text(key: str) -> str:
            value = state.get(key, "")
            return value.get("value", "") if isinstance(value, dict) else value

        if "kubeadm token create" in text("stdin"):
            # kubeadm prints the controlPlaneEndpoint: the load balancer's address.
            api = _fake_ip("192.0.2", f"kata-mesh-{pulumi.get_stack()}-api")
            return f"kubeadm join {api}:6443 --token {MOCK_TOKEN} --discovery-token-ca-cert-hash {MOCK_CA_HASH} \n"
        if text("create").endswith("cat /etc/kubernetes/admin.conf"):
            return MOCK_ADMIN_CONF
        if text("create").startswith("openssl x509 -noout -fingerprint -sha256 -in "):
            # The cluster CA's fingerprint, as openssl prints it (of the sample certificate).
            return MOCK_CA_FINGERPRINT
        stack = pulumi.get_stack()
        if name.endswith("-kata-evidence"):
            # With the first line of `kata-runtime --version`, as 95-kata-evidence.sh records it.
            evidence = sample_evidence(name.removesuffix("-kata-evidence"))
            evidence["kataRuntime"] = sample("kata-runtime-version.txt").splitlines()[0]
            return json.dumps(evidence)
        if name.endswith("-mesh-facts"):
            # With the hardening's attempts as 96-mesh-facts.sh records them on the recordings
            # (tests/test_proof_hardening.py checks the script makes exactly this document).
            facts = sample_facts(f"kata-mesh-{stack}-worker-0")
            return json.dumps({**facts, "hardening": sample("hardening-facts.json")})
        if name.endswith("-ha-facts"):
            # What 94-ha-facts.sh printed on real etcdctl output (tests/samples/ha, tests/samples/etcd),
            # its dev-stack names swapped for the stack's control planes.
            control_planes = command_args(text("create"))["--control-planes"].split()
            doc = (SAMPLES.parent / "ha" / f"ha-facts-{len(control_planes)}.json").read_text()
            for index, node in enumerate(control_planes):
                doc = doc.replace(f'"kata-mesh-dev-cp-{index}"', json.dumps(node))
            return doc
        if name.endswith("-api-probe"):
            given = command_args(text("create"))
            return json.dumps(
                {
                    "endpoint": given["--endpoint"],
                    "url": f"https://{given['--endpoint']}/readyz",
                    "status": 200,
                    "body": "ok",
                    "curlExit": 0,
                    "error": "",
                    "from": name.removesuffix("-api-probe"),
                    "throughLoadBalancer": given["--through-load-balancer"] == "true",
                    "attempts": 1,
                }
            )
        return ""

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list[tuple[str, str]]]:
        if args.token == "gcp:compute/getImage:getImage":
            image = f"{args.args['family'].removesuffix('-lts-amd64')}-amd64-v20261101"
            return {
                "family": args.args["family"],
                "name": image,
                "selfLink": f"https://www.googleapis.com/compute/v1/projects/{args.args['project']}/global/images/{image}",
            }, []
        if args.token == "gcp:compute/getImages:getImages":
            listed = node_images_listed(args.args["filter"], args.args.get("project"), self.node_images)
            return {"images": listed}, []
        if args.token == "tls:index/getPublicKey:getPublicKey":
            return {"publicKeyOpenssh": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAuser\n"}, []
        if args.token == "tls:index/getCertificate:getCertificate":
            return {"certificates": [certificate_info(args.args["content"])]}, []
        if args.token == "gcp:storage/getBucketObjects:getBucketObjects":
            return {"bucketObjects": [backup_object(args.args, name) for name in SAMPLE_BACKUP_OBJECTS]}, []
        raise NotImplementedError(f"no mock for invoke {args.token}")


def run_program(
    stack: str,
    preview: bool,
    overrides: Mapping[str, Any] | None = None,
    monitor: RecordingMonitor | None = None,
) -> ProgramRun:
    """Runs __main__.py for one stack, as `pulumi preview` (preview=True) or `pulumi up` would."""
    return run_engine(
        stack, preview, stack_config(stack, overrides), monitor or RecordingMonitor(KataMeshMocks(preview))
    )


IMAGES_DIR = ROOT / "images"
IMAGES_PROJECT_FILE = yaml.safe_load((IMAGES_DIR / "Pulumi.yaml").read_text())
IMAGES_PROJECT = IMAGES_PROJECT_FILE["name"]
# What only the operator sets in an images stack.
IMAGES_OPERATOR_CONFIG = {
    "gcp:project": "kata-mesh-test",
    f"{IMAGES_PROJECT}:sshAllowedCidrs": ["198.51.100.7/32"],
}


def images_config(stack: str = "shared", overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """images/Pulumi.yaml's defaults, then images/Pulumi.STACK.yaml, then the operator's and `overrides`."""
    stack_values = yaml.safe_load((IMAGES_DIR / f"Pulumi.{stack}.yaml").read_text())["config"]
    return {
        **{
            f"{IMAGES_PROJECT}:{key}": config_string(decl["default"])
            for key, decl in IMAGES_PROJECT_FILE["config"].items()
        },
        **{
            key: config_string(value)
            for key, value in {**stack_values, **IMAGES_OPERATOR_CONFIG, **(overrides or {})}.items()
        },
    }


def run_images_program(
    stack: str = "shared", preview: bool = False, overrides: Mapping[str, Any] | None = None
) -> ProgramRun:
    """Runs images/__main__.py, the node images project, as `pulumi up -C images` would."""
    return run_engine(
        stack,
        preview,
        images_config(stack, overrides),
        RecordingMonitor(KataMeshMocks(preview)),
        program_dir=IMAGES_DIR,
        project=IMAGES_PROJECT,
    )


@functools.cache
def cached_run(stack: str, preview: bool = False) -> ProgramRun:
    """One mock run per stack and mode for the whole session; tests only read it."""
    return run_program(stack, preview)


# nodeImage: baked (the default, nodes boot from the node image) or stock (Ubuntu, installs at boot).
NODE_IMAGE_MODES = ("baked", "stock")
# A node's last provisioning step (what joining waits for), and the one that marks its rollout.
LAST_PROVISIONING_STEP = {"baked": "metadata-block", "stock": "kubernetes"}
ROLLOUT_MARKER_STEP = {"baked": "node-image", "stock": "kubernetes"}


@functools.cache
def cached_images_run(preview: bool = False) -> ProgramRun:
    """The images project's example stack (images/Pulumi.shared.yaml), once per session."""
    return run_images_program("shared", preview)


def built_image_names(stack: str) -> list[str]:
    """The node images the images project builds for a cluster stack (by its own reading of the
    stack's file), from its `images` output."""
    images = cached_images_run().output("images")
    return [name for name, image in images.items() if stack in image["stacks"]]


@functools.cache
def cached_mode_run(stack: str, node_image: str, preview: bool = False) -> ProgramRun:
    """As cached_run, with nodeImage set to `node_image`."""
    if node_image == "baked":
        return cached_run(stack, preview)
    return run_program(stack, preview, {f"{PROJECT}:nodeImage": node_image})


def stack_modes(stacks: Sequence[str] = STACKS) -> list[Any]:
    """(stack, nodeImage) parameters: every stack in both modes; stock in the system stage (each
    is one more run of the program, and the plain stage has a time budget)."""
    return [
        pytest.param(
            stack,
            mode,
            id=f"{stack}-{mode}",
            marks=[pytest.mark.system] if mode == "stock" else [],
        )
        for stack in stacks
        for mode in NODE_IMAGE_MODES
    ]


def require_tool(name: str, provided_by: str = "scripts/test.sh installs it when run as root") -> str:
    """The tool's path."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is missing ({provided_by})")
    return path
