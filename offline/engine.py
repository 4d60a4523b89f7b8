"""Runs __main__.py under the Pulumi SDK's own mock engine and records what it declares.

The CLI applies Pulumi.yaml defaults and the stack file before the program starts; `stack_config`
does the same here, so the program runs on exactly the config `pulumi up` would give it.
"""

from __future__ import annotations

import json
import runpy
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILE = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
PROJECT = PROJECT_FILE["name"]
STACKS_DIR = ROOT / PROJECT_FILE.get("stackConfigDir", ".")
STACKS = sorted(
    p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in STACKS_DIR.glob("Pulumi.*.yaml")
)
SECRET_CONFIG_KEYS = (f"{PROJECT}:sshPrivateKey",)
# The Pulumi SDK's markers on the wire: a secret value, and a value known only after deploy.
SECRET_SIG = rpc._special_sig_key
SECRET_VALUE = rpc._special_secret_sig
UNKNOWN = rpc.UNKNOWN


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


def stack_file(stack: str) -> Path:
    return STACKS_DIR / f"Pulumi.{stack}.yaml"


def stack_file_values(stack: str) -> dict[str, Any]:
    """The stack file's config as written (values not yet turned into strings)."""
    data = yaml.safe_load(stack_file(stack).read_text()) or {}
    return dict(data.get("config") or {})


def stack_config(stack: str, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Pulumi.yaml defaults, then the stack file, then `extra` (what `pulumi config set` would add)."""
    return {
        **project_defaults(),
        **{key: config_string(value) for key, value in stack_file_values(stack).items()},
        **{key: config_string(value) for key, value in (extra or {}).items()},
    }


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
    # URNs whose replacement replaces this resource too.
    replace_with: list[str] = field(default_factory=list)
    # Pulumi refuses to delete it, or to replace it unless the program unprotects it in that update.
    protect: bool = False
    # Each input's own dependencies: the resources whose outputs went into it.
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    # Pulumi forgets it at deletion and leaves the cloud resource as it is.
    retain_on_delete: bool = False


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
                replace_with=list(request.replace_with),
                protect=bool(request.protect),
                retain_on_delete=bool(request.retainOnDelete),
                property_dependencies={
                    key: list(value.urns) for key, value in request.propertyDependencies.items()
                },
            )
        )
        return response

    def RegisterResourceOutputs(self, request):
        self.resource_outputs[request.urn] = json_format.MessageToDict(request.outputs)
        return super().RegisterResourceOutputs(request)


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_VALUE


def plain_strings(value: Any) -> list[str]:
    """Every string in a wire-format value that is not wrapped as a secret."""
    if is_secret(value):
        return []
    if isinstance(value, dict):
        return [s for v in value.values() for s in plain_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in plain_strings(v)]
    return [value] if isinstance(value, str) else []


def as_manifest(value: Any) -> Any:
    """Values pass through protobuf, where every number is a float; JSON and YAML want integers back."""
    if isinstance(value, dict):
        return {k: as_manifest(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_manifest(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


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
        return is_secret(self.raw_stack_outputs[key])

    def output(self, key: str) -> Any:
        value = self.raw_stack_outputs[key]
        return value["value"] if self.is_secret_output(key) else value


def run_program(
    stack: str,
    preview: bool,
    config: Mapping[str, str],
    monitor: RecordingMonitor,
    program_dir: Path = ROOT,
    project: str = PROJECT,
) -> ProgramRun:
    """Runs __main__.py for one stack, as `pulumi preview` (preview=True) or `pulumi up` would
    (the images project's with program_dir images/ and its project name).

    A SettingsError (or any other error of the program) propagates as `pulumi up` would show it.
    """
    pulumi.runtime.set_all_config(dict(config), secret_keys=list(SECRET_CONFIG_KEYS))
    # set_mocks makes a root stack unless one exists; run_in_stack below makes the one the CLI
    # would, so a placeholder keeps the engine seeing exactly one stack.
    pulumi.runtime.settings.ROOT.set(object())  # type: ignore[arg-type]
    pulumi.runtime.set_mocks(monitor.mocks, project=project, stack=stack, preview=preview, monitor=monitor)
    pulumi.runtime.settings.ROOT.set(None)
    # Context properties of the SDK's settings, which type checkers cannot see.
    settings: Any = pulumi.runtime.settings.SETTINGS
    settings.rpc_manager.clear()
    settings.outputs.clear()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    def program() -> None:
        runpy.run_path(str(program_dir / "__main__.py"), run_name="__main__")

    _sync_await(run_in_stack(program))
    stack_urn = f"urn:pulumi:{stack}::{project}::pulumi:pulumi:Stack::{project}-{stack}"
    return ProgramRun(
        stack,
        preview,
        monitor.registrations,
        monitor.resource_outputs.get(stack_urn, {}),
        {urn: dict(resource.state) for urn, resource in monitor.resources.items()},
    )


def node_images_listed(
    filter_: str, project: str | None, existing: list[str] | None = None
) -> list[dict[str, Any]]:
    """What GCE's images.list answers for a stack's lookup of its node image (by name) or for its
    family: `existing` names the images that exist, None that every image asked for by name exists,
    made and labelled by images/ (the family then lists nothing else)."""
    from components.node_image import IMAGE_FAMILY, INPUTS_LABEL

    def image(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "family": IMAGE_FAMILY,
            "labels": {INPUTS_LABEL: name.removeprefix(f"{IMAGE_FAMILY}-")},
            "selfLink": f"https://www.googleapis.com/compute/v1/projects/{project or 'kata-mesh-test'}/global/images/{name}",
        }

    key, _, value = (part.strip() for part in filter_.partition("="))
    value = value.strip('"')
    if key == "name":
        return [image(value)] if existing is None or value in existing else []
    if key == "family" and value == IMAGE_FAMILY:
        return [image(name) for name in existing or []]
    raise NotImplementedError(f"no mock for the image filter {filter_}")


def command_args(command_line: str) -> dict[str, str]:
    """The --name value pairs after `bash -s --` in a step's command line (or stdin's first line)."""
    words = shlex.split(command_line)
    start = max(i for i, word in enumerate(words) if word in ("--", "$@")) + 1
    return dict(zip(words[start::2], words[start + 1 :: 2], strict=True))
