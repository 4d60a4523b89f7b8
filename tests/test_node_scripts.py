"""The node scripts, run for real: shellcheck, argument handling, and the Kata step's
download-verify-install against a release served on 127.0.0.1, sent exactly as the program sends it
(lib.sh + step script on stdin to `bash -s -- ARGS`)."""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import http.server
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ROOT, STACKS, cached_images_run, cached_run, command_args, require_tool
from seed import SEED_LINKS

from components import versions
from components.node_config import KATA_DROPIN_NAME, render_kata_dropin
from components.node_image import ImageInputs, baked_node_steps, build_steps
from components.node_provisioning import SCRIPTS_DIR, NodeStep, ProvisioningSpec, node_steps
from offline.plan import script_of

SHELL_SCRIPTS = sorted([*SCRIPTS_DIR.glob("*.sh"), *ROOT.glob("scripts/*.sh"), ROOT / ".ci" / "run"])
CAPABLE = "System is capable of running Kata Containers"
CAN_CREATE = "System can currently create Kata Containers"


# scripts/test.sh runs shellcheck itself before pytest; this copy runs with the system tests.
@pytest.mark.system
def test_every_shell_script_is_shellcheck_clean():
    shellcheck = ROOT / "venv" / "bin" / "shellcheck"
    binary = str(shellcheck) if shellcheck.exists() else "shellcheck"
    result = subprocess.run(
        [binary, "--severity=style", *map(str, SHELL_SCRIPTS)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(SHELL_SCRIPTS) >= 7


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS_DIR.glob("[0-9]*.sh")))
def test_each_step_is_valid_bash_as_sent_and_starts_strict(script: str):
    step = NodeStep(script, script, ())
    code = [line for line in (SCRIPTS_DIR / script).read_text().splitlines() if not line.startswith("#")]
    assert code[0] == "set -euo pipefail"
    result = subprocess.run(["bash", "-n"], input=step.script_text, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_program_sends_every_provisioning_script():
    spec = ProvisioningSpec("1.36.4", versions.KATA_RELEASES["3.32.0"])
    stock = {s.script for s in node_steps(spec)}
    baked = {s.script for s in baked_node_steps(spec)}
    built = {s.script for s in build_steps(ImageInputs(spec.kubernetes_version, spec.kata))}
    # The control planes' own steps before init (the etcd tools, the restore) come from
    # components/backups.py.
    control_plane_only = {"45-restore-control-plane.sh", "47-etcd-tools.sh"}
    assert stock | baked | built | control_plane_only == {p.name for p in SCRIPTS_DIR.glob("[0-4]*.sh")}
    assert not (stock | baked) & control_plane_only
    # A baked node runs none of the installs: the image's build did.
    assert baked == {"00-wait-ready.sh", "12-node-image.sh", "15-metadata-block.sh"}
    assert built - stock == {"42-pull-images.sh"}


def test_every_node_script_is_sent_by_some_stack():
    """Every script in scripts/node reaches a node: as a step's stdin, or (the backup itself) as
    the file the backup-timer step installs."""
    sent: set[str] = set()
    installed: set[str] = set()
    # The stock installs reach nodes through the node image's builder (and stock nodes).
    runs = [cached_run(stack) for stack in STACKS] + [cached_images_run()]
    for program in runs:
        for command in program.of_type("command:remote:Command"):
            script = script_of(command.raw_inputs.get("stdin"))
            if script:
                sent.add(script)
            create = command.inputs.get("create")
            if isinstance(create, str) and " -- " in create:
                args = command_args(create)
                if "--script-b64" in args:
                    installed.add(base64.b64decode(args["--script-b64"]).decode())
    scripts = {p.name for p in SCRIPTS_DIR.glob("[0-9]*.sh")}
    assert scripts <= sent, scripts - sent
    assert (SCRIPTS_DIR / "kata-mesh-backup.sh").read_text() in installed


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS_DIR.glob("[0-9]*.sh")))
def test_steps_refuse_missing_and_unknown_arguments(script: str):
    missing = subprocess.run(["bash", str(SCRIPTS_DIR / script)], capture_output=True, text=True)
    assert missing.returncode == 1
    assert "missing required argument(s): --" in missing.stderr
    unknown = subprocess.run(
        ["bash", str(SCRIPTS_DIR / script), "--colour", "blue"], capture_output=True, text=True
    )
    assert unknown.returncode == 1
    assert "unknown argument: --colour" in unknown.stderr


def test_put_file_writes_once_and_reports_changes(tmp_path: Path):
    target = tmp_path / "etc" / "example.conf"
    script = f"""
        set -euo pipefail
        . {SCRIPTS_DIR / "lib.sh"}
        km_put_file {target} 0640 "a = 1"; echo "first=$km_changed"
        km_put_file {target} 0640 "a = 1"; echo "second=$km_changed"
        km_put_file {target} 0640 "a = 2"; echo "third=$km_changed"
    """
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["first=true", "second=false", "third=true"]
    assert target.read_text() == "a = 2\n"
    assert oct(target.stat().st_mode & 0o777) == "0o640"


# --- The Kata step against a release served on 127.0.0.1 ---------------------------------------


def fake_kata_release(path: Path, marker: str) -> str:
    """A kata-static tarball laid out like the real one (./opt/kata/...); returns its sha256."""
    root = path.parent / f"{path.name}.tree"
    bin_dir = root / "opt" / "kata" / "bin"
    bin_dir.mkdir(parents=True)
    for name in SEED_LINKS:
        (bin_dir / name).write_text(f"#!/bin/sh\necho {name} {marker}\n")
    (bin_dir / "kata-runtime").write_text(
        f'#!/bin/sh\necho "{CAPABLE}"\necho "{CAN_CREATE}"\necho {marker}\n'
    )
    for file in bin_dir.iterdir():
        file.chmod(0o755)
    defaults = root / "opt" / "kata" / "share" / "defaults" / "kata-containers"
    defaults.mkdir(parents=True)
    (defaults / "configuration-qemu.toml").write_text(f'# {marker}\n[hypervisor.qemu]\npath = "x"\n')
    (defaults / "configuration.toml").symlink_to("configuration-qemu.toml")
    (root / "opt" / "kata" / f"only-in-{marker}").write_text(marker)
    tar_path = path.with_suffix("")
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root, arcname=".")
    subprocess.run(["zstd", "-q", "-f", "--rm", str(tar_path), "-o", str(path)], check=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Server:
    def __init__(self, directory: Path) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        handler = functools.partial(Handler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    require_tool("zstd")
    served = tmp_path / "served"
    served.mkdir()
    srv = Server(served)
    yield srv
    srv.httpd.shutdown()


def kata_step(tmp_path: Path, mirror: str, artifact: versions.Artifact) -> NodeStep:
    """The program's own Kata step, pointed at the local server and at directories under tmp_path."""
    step = next(s for s in node_steps(ProvisioningSpec("1.36.4", artifact, mirror)) if s.name == "kata")
    local = {
        "prefix": str(tmp_path / "opt" / "kata"),
        "bin-dir": str(tmp_path / "usr-local-bin"),
        "cache-dir": str(tmp_path / "cache"),
    }
    return dataclasses.replace(step, args=tuple((k, local.get(k, v)) for k, v in step.args))


def run_step(step: NodeStep) -> subprocess.CompletedProcess[str]:
    """Runs the step the way the node does: its command line, with the script on stdin."""
    command = step.command_line.removeprefix("sudo -n ")
    env = {**os.environ, "PATH": os.environ["PATH"]}
    return subprocess.run(
        ["bash", "-c", command], input=step.script_text, capture_output=True, text=True, env=env
    )


def artifact(version: str, sha256: str) -> versions.Artifact:
    real = versions.KATA_RELEASES["3.32.0"]
    return dataclasses.replace(
        real, version=version, sha256=sha256, upstream_url=real.upstream_url.replace("3.32.0", version)
    )


def tree(path: Path) -> dict[str, tuple[str, float]]:
    """Every path under `path` with its link target or content hash and its mtime."""
    snapshot = {}
    for p in sorted(path.rglob("*")):
        if p.is_symlink():
            snapshot[str(p)] = (f"-> {os.readlink(p)}", p.lstat().st_mtime)
        elif p.is_file():
            snapshot[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime)
    return snapshot


def test_good_release_installs_links_and_dropin_and_a_second_run_changes_nothing(tmp_path, server):
    release = artifact("3.32.0", "")
    served = tmp_path / "served" / release.filename
    release = dataclasses.replace(release, sha256=fake_kata_release(served, "release-a"))
    step = kata_step(tmp_path, server.url, release)

    first = run_step(step)
    assert first.returncode == 0, first.stderr
    assert "kata-runtime check passed" in first.stderr
    prefix = tmp_path / "opt" / "kata"
    for name in SEED_LINKS:
        link = tmp_path / "usr-local-bin" / name
        assert os.readlink(link) == str(prefix / "bin" / name)
    dropin = prefix / "share" / "defaults" / "kata-containers" / "config.d" / KATA_DROPIN_NAME
    assert dropin.read_text() == render_kata_dropin().rstrip("\n") + "\n"
    assert (prefix / "only-in-release-a").exists()
    assert server.requests == [f"/{release.filename}"]

    before = tree(tmp_path / "opt") | tree(tmp_path / "usr-local-bin")
    second = run_step(step)
    assert second.returncode == 0, second.stderr
    assert tree(tmp_path / "opt") | tree(tmp_path / "usr-local-bin") == before
    assert server.requests == [f"/{release.filename}"], "the second run downloaded again"
    assert not list((tmp_path / "opt").glob(".kata-staging.*"))


def test_corrupted_download_fails_clearly_and_leaves_nothing_extracted_or_installed(tmp_path, server):
    release = artifact("3.32.0", "")
    served = tmp_path / "served" / release.filename
    good_sha = fake_kata_release(served, "release-a")
    served.write_bytes(served.read_bytes()[:-64] + b"corrupted" * 8)
    step = kata_step(tmp_path, server.url, dataclasses.replace(release, sha256=good_sha))

    result = run_step(step)
    assert result.returncode == 1
    assert (
        f"checksum mismatch for {server.url}/{release.filename}: expected sha256 {good_sha}" in result.stderr
    )
    assert "nothing was installed" in result.stderr
    assert not (tmp_path / "opt" / "kata").exists()
    assert not (tmp_path / "usr-local-bin").exists()
    assert list((tmp_path / "cache").iterdir()) == []
    assert not (tmp_path / "opt").exists()


def test_a_new_release_replaces_the_old_tree_whole(tmp_path, server):
    old = artifact("3.32.0", "")
    old = dataclasses.replace(old, sha256=fake_kata_release(tmp_path / "served" / old.filename, "release-a"))
    assert run_step(kata_step(tmp_path, server.url, old)).returncode == 0
    new = artifact("3.33.0", "")
    new = dataclasses.replace(new, sha256=fake_kata_release(tmp_path / "served" / new.filename, "release-b"))

    result = run_step(kata_step(tmp_path, server.url, new))
    assert result.returncode == 0, result.stderr
    prefix = tmp_path / "opt" / "kata"
    assert (prefix / "only-in-release-b").exists()
    assert not (prefix / "only-in-release-a").exists()
    assert (prefix / ".kata-mesh-release").read_text().strip() == new.sha256
    assert sorted(p.name for p in (tmp_path / "opt").iterdir()) == ["kata"]


def test_a_failing_kata_runtime_check_fails_the_step_with_its_output(tmp_path, server):
    release = artifact("3.32.0", "")
    served = tmp_path / "served" / release.filename
    tree_root = tmp_path / "served" / f"{served.name}.tree"
    fake_kata_release(served, "release-a")
    runtime = tree_root / "opt" / "kata" / "bin" / "kata-runtime"
    runtime.write_text(
        "#!/bin/sh\necho 'ERROR: System is not capable of running Kata Containers' >&2\nexit 1\n"
    )
    served.unlink()
    tar_path = served.with_suffix("")
    with tarfile.open(tar_path, "w") as tar:
        tar.add(tree_root, arcname=".")
    subprocess.run(["zstd", "-q", "-f", "--rm", str(tar_path), "-o", str(served)], check=True)
    release = dataclasses.replace(release, sha256=hashlib.sha256(served.read_bytes()).hexdigest())

    result = run_step(kata_step(tmp_path, server.url, release))
    assert result.returncode == 1
    assert "kata-runtime check failed (exit 1); this node cannot run Kata" in result.stderr
    assert "ERROR: System is not capable of running Kata Containers" in result.stderr
