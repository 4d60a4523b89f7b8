"""Runs __main__.py under the Pulumi SDK's own mock engine and records what it declares.

The CLI applies Pulumi.yaml defaults and the stack file before the program starts; `stack_config`
does the same here, so the program runs on exactly the config `pulumi up` would give it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import runpy
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILE = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
PROJECT = PROJECT_FILE["name"]
STACKS = sorted(
    p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml")
)
# The Pulumi SDK's marker for a secret value on the wire.
SECRET_SIG = rpc._special_sig_key
SECRET_VALUE = rpc._special_secret_sig
UNKNOWN = rpc.UNKNOWN

# What each README user adds with `pulumi config set` before the first `pulumi up`.
OPERATOR_CONFIG: dict[str, Any] = {
    "gcp:project": "kata-mesh-test",
    f"{PROJECT}:sshAllowedCidrs": ["198.51.100.7/32", "192.0.2.0/28"],
    f"{PROJECT}:apiAllowedCidrs": ["198.51.100.7/32"],
}


MOCK_TOKEN = "abcdef.0123456789abcdef"
MOCK_CA_HASH = "sha256:" + "c" * 64
MOCK_ADMIN_CONF = """apiVersion: v1
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
    client-certificate-data: Q0VSVAo=
    client-key-data: S0VZCg==
"""


SAMPLES = ROOT / "tests" / "samples" / "verification"
# The upstream charts (../shared/charts, see its README), or where KATA_MESH_CHARTS points.
CHARTS_DIR = Path(os.environ.get("KATA_MESH_CHARTS", ROOT.parent / "shared" / "charts"))


def require_charts() -> Path:
    """The folder of upstream chart archives; CI must have it, elsewhere its tests are skipped."""
    if not CHARTS_DIR.is_dir():
        reason = f"no upstream charts at {CHARTS_DIR} (a clone outside this setup; set KATA_MESH_CHARTS)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return CHARTS_DIR
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


def config_string(value: Any) -> str:
    """Renders a YAML config value the way the CLI hands it to the program."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def project_defaults() -> dict[str, str]:
    return {
        f"{PROJECT}:{key}": config_string(decl["default"]) for key, decl in PROJECT_FILE["config"].items()
    }


def stack_file_config(stack: str) -> dict[str, str]:
    data = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())
    return {key: config_string(value) for key, value in (data.get("config") or {}).items()}


def stack_config(stack: str, overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    extra = {**OPERATOR_CONFIG, **(overrides or {})}
    return {
        **project_defaults(),
        **stack_file_config(stack),
        **{k: config_string(v) for k, v in extra.items()},
    }


def _fake_ip(prefix: str, name: str) -> str:
    return f"{prefix}.{int(hashlib.sha256(name.encode()).hexdigest(), 16) % 250 + 2}"


class KataMeshMocks(pulumi_mocks.Mocks):
    """Computes the outputs the real providers would; in a preview, only inputs come back."""

    def __init__(self, preview: bool) -> None:
        self.preview = preview

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict]:
        state = dict(args.inputs)
        if self.preview:
            return "", state
        name = state.get("name", args.name)
        if args.typ == "gcp:compute/address:Address":
            state["address"] = _fake_ip("192.0.2", name)
        elif args.typ == "gcp:compute/instance:Instance":
            nics = [dict(nic) for nic in state.get("networkInterfaces", [])]
            nics[0]["networkIp"] = _fake_ip("10.10.0", name)
            state["networkInterfaces"] = nics
            state["instanceId"] = str(int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10**12)
        elif args.typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{state['accountId']}@kata-mesh-test.iam.gserviceaccount.com"
        elif args.typ == "command:remote:Command":
            state["stdout"] = self.command_stdout(state, args.name)
        elif args.typ == "tls:index/privateKey:PrivateKey":
            state["privateKeyOpenssh"] = (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nmock\n-----END OPENSSH PRIVATE KEY-----\n"
            )
            state["publicKeyOpenssh"] = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAmock\n"
        return f"{name}-id", state

    @staticmethod
    def command_stdout(state: dict[str, Any], name: str) -> str:
        """What the remote commands print that the program reads back."""

        def text(key: str) -> str:
            value = state.get(key, "")
            return value.get("value", "") if isinstance(value, dict) else value

        if "kubeadm token create" in text("stdin"):
            return f"kubeadm join 10.10.0.2:6443 --token {MOCK_TOKEN} --discovery-token-ca-cert-hash {MOCK_CA_HASH} \n"
        if text("create").endswith("cat /etc/kubernetes/admin.conf"):
            return MOCK_ADMIN_CONF
        stack = pulumi.get_stack()
        if name.endswith("-kata-evidence"):
            return json.dumps(sample_evidence(name.removesuffix("-kata-evidence")))
        if name.endswith("-mesh-facts"):
            return json.dumps(sample_facts(f"kata-mesh-{stack}-worker-0"))
        return ""

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list[tuple[str, str]]]:
        if args.token == "gcp:compute/getImage:getImage":
            image = f"{args.args['family'].removesuffix('-lts-amd64')}-amd64-v20261101"
            return {
                "family": args.args["family"],
                "name": image,
                "selfLink": f"https://www.googleapis.com/compute/v1/projects/{args.args['project']}/global/images/{image}",
            }, []
        if args.token == "tls:index/getPublicKey:getPublicKey":
            return {"publicKeyOpenssh": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAuser\n"}, []
        raise NotImplementedError(f"no mock for invoke {args.token}")


@dataclass
class Registration:
    urn: str
    type: str
    name: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    raw_inputs: dict[str, Any]
    dependencies: list[str]
    ignore_changes: list[str]
    additional_secret_outputs: list[str]
    delete_before_replace: bool
    provider: str


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's MockMonitor, also keeping what it is asked: options, dependencies, stack outputs."""

    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []
        self.resource_outputs: dict[str, dict[str, Any]] = {}

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        self.registrations.append(
            Registration(
                urn=response.urn,
                type=request.type,
                name=request.name,
                parent=request.parent,
                custom=request.custom,
                inputs=rpc.deserialize_properties(request.object, keep_unknowns=True),
                raw_inputs=json_format.MessageToDict(request.object),
                dependencies=list(request.dependencies),
                ignore_changes=list(request.ignoreChanges),
                additional_secret_outputs=list(request.additionalSecretOutputs),
                delete_before_replace=request.deleteBeforeReplace,
                provider=request.provider,
            )
        )
        return response

    def RegisterResourceOutputs(self, request):
        self.resource_outputs[request.urn] = json_format.MessageToDict(request.outputs)
        return super().RegisterResourceOutputs(request)


def plain_strings(value: Any) -> list[str]:
    """Every string in a wire-format value that is not wrapped as a secret."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == SECRET_VALUE:
            return []
        return [s for v in value.values() for s in plain_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in plain_strings(v)]
    return [value] if isinstance(value, str) else []


@dataclass
class ProgramRun:
    stack: str
    preview: bool
    registrations: list[Registration]
    raw_stack_outputs: dict[str, Any] = field(default_factory=dict)
    # What the mocks returned for each resource: its outputs, as the engine would know them.
    states: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == type_]

    def one(self, type_: str, name: str) -> Registration:
        matches = [r for r in self.of_type(type_) if r.name == name]
        assert len(matches) == 1, f"expected one {type_} named {name}, found {len(matches)}"
        return matches[0]

    def by_urn(self, urn: str) -> Registration:
        return next(r for r in self.registrations if r.urn == urn)

    def is_secret_output(self, key: str) -> bool:
        value = self.raw_stack_outputs[key]
        return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_VALUE

    def output(self, key: str) -> Any:
        value = self.raw_stack_outputs[key]
        return value["value"] if self.is_secret_output(key) else value


def run_program(
    stack: str,
    preview: bool,
    overrides: Mapping[str, Any] | None = None,
    monitor: RecordingMonitor | None = None,
) -> ProgramRun:
    """Runs __main__.py for one stack, as `pulumi preview` (preview=True) or `pulumi up` would."""
    config = stack_config(stack, overrides)
    pulumi.runtime.set_all_config(config, secret_keys=[f"{PROJECT}:sshPrivateKey"])
    monitor = monitor or RecordingMonitor(KataMeshMocks(preview))
    # set_mocks makes a root stack unless one exists; run_in_stack below makes the one the CLI
    # would, so a placeholder keeps the engine seeing exactly one stack.
    pulumi.runtime.settings.ROOT.set(object())  # type: ignore[arg-type]
    pulumi.runtime.set_mocks(monitor.mocks, project=PROJECT, stack=stack, preview=preview, monitor=monitor)
    pulumi.runtime.settings.ROOT.set(None)
    settings = pulumi.runtime.settings.SETTINGS
    settings.rpc_manager.clear()
    settings.outputs.clear()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    _sync_await(run_in_stack(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")))
    stack_urn = f"urn:pulumi:{stack}::{PROJECT}::pulumi:pulumi:Stack::{PROJECT}-{stack}"
    return ProgramRun(
        stack,
        preview,
        monitor.registrations,
        monitor.resource_outputs.get(stack_urn, {}),
        {urn: dict(resource.state) for urn, resource in monitor.resources.items()},
    )


@functools.cache
def cached_run(stack: str, preview: bool = False) -> ProgramRun:
    """One mock run per stack and mode for the whole session; tests only read it."""
    return run_program(stack, preview)


def command_args(command_line: str) -> dict[str, str]:
    """The --name value pairs after `bash -s --` in a step's command line (or stdin's first line)."""
    words = shlex.split(command_line)
    start = max(i for i, word in enumerate(words) if word in ("--", "$@")) + 1
    return dict(zip(words[start::2], words[start + 1 :: 2], strict=True))


def require_tool(name: str, provided_by: str = "scripts/test.sh installs it when run as root") -> str:
    """The tool's path; CI must have it, elsewhere its tests are skipped."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing; {provided_by}")
        pytest.skip(f"{name} is missing ({provided_by})")
    return path
