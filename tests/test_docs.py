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
