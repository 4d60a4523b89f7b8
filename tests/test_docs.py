"""The README's settings table matches what Pulumi.yaml declares."""

from __future__ import annotations

import json
import re

import yaml
from harness import ROOT


def readme_settings() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    table = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    return {m[1]: m[2] for m in re.finditer(r"^\| `([^`]+)` \| (.+?) \|", table, re.MULTILINE)}


def test_readme_lists_every_setting_with_its_default():
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    documented = readme_settings()
    for key, decl in declared.items():
        default = decl["default"]
        shown = json.dumps(default) if isinstance(default, (list, str)) and not default else str(default)
        if isinstance(default, bool):
            shown = str(default).lower()
        assert documented.get(key) == f"`{shown}`", key
    assert set(documented) - set(declared) == {"gcp:project", "gcp:region", "gcp:zone"}


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_readme_says_what_the_test_command_installs_as_root():
    """The Debian packages scripts/test.sh installs are the ones the README names."""
    script = (ROOT / "scripts" / "test.sh").read_text()
    declared = re.search(r"declare -A debian_packages=\(([^)]*)\)", script)
    assert declared is not None
    packages = set(re.findall(r"\[[^]]+\]=([a-z0-9.+-]+)", declared[1]))
    assert packages >= {"containerd", "zstd", "jq", "graphviz"}
    section = readme_section("Test (no cloud needed)")
    assert "as root" in section
    assert set(
        re.findall(r"`([a-z0-9.+-]+)`", section.split("installs the Debian packages", 1)[1].split(")", 1)[0])
    ) == (packages)


def test_readme_names_what_a_newcomer_needs_before_the_first_command():
    prerequisites = readme_section("Prerequisites")
    assert "bash 4" in prerequisites
    assert re.search(r"\d+(\.\d+)? GB of disk", prerequisites)
    assert "PULUMI_CONFIG_PASSPHRASE" in prerequisites
    deploy = readme_section("Deploy one environment")
    assert "export PULUMI_CONFIG_PASSPHRASE" in deploy
    # pulumi config set writes into the checked-in stack file: the README says how to keep
    # personal values out of git.
    assert "stacks/Pulumi.<stack>.yaml" in deploy
    assert "git update-index --skip-worktree" in deploy
    assert "GOOGLE_PROJECT" in deploy


def test_readme_describes_every_file_the_plan_writes(tmp_path):
    from offline import plan

    made = plan.make_plan("dev", tmp_path / "dev", None, offline=True)
    made.write()
    written = {p.name for p in (tmp_path / "dev").iterdir()}
    section = readme_section("Try it without a cloud: the plan")
    # Each name in backticks, or the first part of a path such as `nodes/<node>/steps.md`.
    described = set(re.findall(r"`([^`/ ]+)(?:/[^`]*)?`", section))
    assert written <= described, written - described
    assert "docs/plan-dev.svg" in section
