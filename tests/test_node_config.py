"""The containerd and Kata configs the nodes get: exact content, and a real containerd loads them."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest
from harness import require_tool

from components.node_config import KATA_CONFIG_PATH, render_containerd_config, render_kata_dropin

EXPECTED_RUNTIMES = {
    "runc": {"runtime_type": "io.containerd.runc.v2", "options": {"SystemdCgroup": True}},
    "kata": {
        "runtime_type": "io.containerd.kata.v2",
        "privileged_without_host_devices": True,
        # None: no pod can override Kata's config for its own sandbox (node_config says why).
        "pod_annotations": [],
        "options": {"ConfigPath": "/opt/kata/share/defaults/kata-containers/configuration.toml"},
    },
}


@pytest.mark.parametrize(
    ("major", "schema", "plugin"),
    [(1, 2, "io.containerd.grpc.v1.cri"), (2, 3, "io.containerd.cri.v1.runtime")],
)
def test_containerd_config_has_exactly_the_two_runtimes_in_the_schema_of_its_major(major, schema, plugin):
    parsed = tomllib.loads(render_containerd_config(major))
    assert parsed == {
        "version": schema,
        "plugins": {plugin: {"containerd": {"default_runtime_name": "runc", "runtimes": EXPECTED_RUNTIMES}}},
    }


def test_unsupported_containerd_major_is_refused():
    with pytest.raises(ValueError, match=r"containerd 3\.x is not supported"):
        render_containerd_config(3)


def test_kata_dropin_changes_only_the_timeouts_nested_virtualization_needs():
    assert tomllib.loads(render_kata_dropin()) == {
        "agent": {"kata": {"dial_timeout": 90}},
        "runtime": {"create_container_timeout": 120},
    }


def real_containerd(major: int = 1) -> str:
    """Debian's containerd: bookworm's 1.x installed, or sid's 2.x unpacked by scripts/test.sh."""
    if major == 1:
        return require_tool("containerd")
    return require_tool(
        os.environ.get("KATA_MESH_CONTAINERD2", "containerd-2.x"),
        "scripts/test.sh unpacks Debian sid's containerd",
    )


def dump_config(containerd: str, rendered: str, tmp_path: Path) -> dict:
    config = tmp_path / "config.toml"
    config.write_text(rendered)
    dump = subprocess.run(
        [containerd, "--config", str(config), "config", "dump"], capture_output=True, text=True, check=True
    ).stdout
    return tomllib.loads(dump)


def test_debian_containerd_loads_the_1x_config_with_both_runtimes(tmp_path: Path):
    containerd = real_containerd()
    version = subprocess.run([containerd, "--version"], capture_output=True, text=True, check=True).stdout
    assert " 1." in version, f"this test needs a 1.x containerd, found: {version}"
    cri = dump_config(containerd, render_containerd_config(1), tmp_path)["plugins"][
        "io.containerd.grpc.v1.cri"
    ]
    assert_both_runtimes(cri["containerd"])


def test_debian_containerd_2x_loads_the_2x_config_with_both_runtimes(tmp_path: Path):
    containerd = real_containerd(major=2)
    version = subprocess.run([containerd, "--version"], capture_output=True, text=True, check=True).stdout
    assert " 2." in version, f"this test needs a 2.x containerd, found: {version}"
    dumped = dump_config(containerd, render_containerd_config(2), tmp_path)
    assert dumped["version"] == 3
    assert_both_runtimes(dumped["plugins"]["io.containerd.cri.v1.runtime"]["containerd"])


def assert_both_runtimes(cri: dict) -> None:
    assert cri["default_runtime_name"] == "runc"
    runc, kata = cri["runtimes"]["runc"], cri["runtimes"]["kata"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is True
    assert kata["runtime_type"] == "io.containerd.kata.v2"
    assert kata["privileged_without_host_devices"] is True
    # containerd itself reads the list as empty: it passes no io.katacontainers.* annotation on.
    assert kata["pod_annotations"] == []
    assert kata["options"]["ConfigPath"] == KATA_CONFIG_PATH


def test_no_pod_annotation_reaches_kata_and_runc_gets_none_either():
    """Kata applies io.katacontainers.* annotations a pod carries (its runtime section, and its
    hypervisor section as far as enable_annotations lets it): with none passed, a pod in the
    sandbox cannot loosen the sandbox."""
    for major in (1, 2):
        runtimes = tomllib.loads(render_containerd_config(major))["plugins"][
            "io.containerd.grpc.v1.cri" if major == 1 else "io.containerd.cri.v1.runtime"
        ]["containerd"]["runtimes"]
        assert runtimes["kata"]["pod_annotations"] == []
        assert "pod_annotations" not in runtimes["runc"]
        assert "container_annotations" not in runtimes["kata"]


def test_debian_containerd_refuses_a_broken_config(tmp_path: Path):
    """The check above means something: a real containerd does reject what it cannot load."""
    containerd = real_containerd()
    config = tmp_path / "config.toml"
    config.write_text(render_containerd_config(1).replace("[plugins.", "[plugins", 1))
    result = subprocess.run(
        [containerd, "--config", str(config), "config", "dump"], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "failed to load TOML" in result.stderr
