"""SSH host keys: every machine's key is made by the program, installed by cloud-init at first
boot and pinned by every SSH step; the user's ssh config pins the same keys.

Mock runs check the pinning; cloud-init's own JSON schema (Debian's cloud-init package) checks the
user-data; a real sshd (Debian's openssh-server), started on Debian's own sshd_config with the
image's default host keys present and the files the user-data writes in place, shows that the
pinned key is the only one offered, and real ssh connects with the rendered config (through a
second sshd as the bastion) and refuses a changed key."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml
from harness import (
    ROOT,
    STACKS,
    assert_connects_to,
    cached_run,
    is_secret,
    node_vms,
    require_tool,
    unavailable,
    unsecret_value,
)

from components.host_key import HOST_KEY_PATH, SSHD_DROPIN_PATH, render_host_key_user_data
from components.ssh_access import SshHost, render_known_hosts, render_ssh_config

COMMAND = "command:remote:Command"
INSTANCE = "gcp:compute/instance:Instance"
# Where scripts/test.sh unpacks Debian's cloud-init package (its schema is all the test reads).
CLOUD_INIT_SCHEMA = (
    ROOT
    / ".cache"
    / "cloud-init"
    / "usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json"
)


def user_data_of(instance_inputs: dict) -> dict:
    text = unsecret_value(instance_inputs["metadata"])["user-data"]
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def written(user_data: dict) -> dict[str, dict]:
    return {entry["path"]: entry for entry in user_data["write_files"]}


# --- mock runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_ssh_step_pins_the_key_its_machine_installs(stack):
    program = cached_run(stack)
    instances = {r.inputs["name"]: r for r in program.of_type(INSTANCE)}
    installed = {
        name: written(user_data_of(r.inputs))[f"{HOST_KEY_PATH}.pub"]["content"].strip()
        for name, r in instances.items()
    }
    # One key per machine: no two machines share a host key.
    assert len(set(installed.values())) == len(installed)
    by_host = {}
    for vm in node_vms(program):
        node = program.output("nodes")[vm.inputs["name"]]
        by_host[node["externalIp"] or node["internalIp"]] = vm.inputs["name"]
    bastion = f"kata-mesh-{stack}-bastion"
    commands = program.of_type(COMMAND)
    assert commands
    for command in commands:
        connection = command.inputs["connection"]["value"]
        if connection["host"] == program.raw_stack_outputs.get("bastionExternalIp"):
            assert connection["hostKey"] == installed[bastion], command.name
            continue
        machine = by_host[connection["host"]]
        assert connection["hostKey"] == installed[machine], command.name
        assert_connects_to(program, connection, machine)
        if "proxy" in connection:
            assert connection["proxy"]["hostKey"] == installed[bastion], command.name


@pytest.mark.parametrize("stack", STACKS)
def test_host_private_keys_travel_only_as_secrets(stack):
    program = cached_run(stack)
    for instance in program.of_type(INSTANCE):
        # Secret as a whole, or its user-data (the SDK marks what it can).
        raw = instance.raw_inputs["metadata"]
        assert is_secret(raw) or is_secret(raw["user-data"]), instance.name
        key = written(user_data_of(instance.inputs))[HOST_KEY_PATH]
        assert key["permissions"] == "0600" and key["owner"] == "root:root"
        assert "PRIVATE KEY" in key["content"]


@pytest.mark.parametrize("stack", STACKS)
def test_the_users_ssh_config_pins_the_same_keys_and_jumps_through_the_bastion(stack):
    program = cached_run(stack)
    known = dict(line.split(" ", 1) for line in program.output("sshKnownHosts").splitlines())
    for instance in program.of_type(INSTANCE):
        name = instance.inputs["name"]
        assert (
            known.pop(name)
            == written(user_data_of(instance.inputs))[f"{HOST_KEY_PATH}.pub"]["content"].strip()
        )
    assert known == {}
    config = program.output("sshConfig")
    private = program.raw_stack_outputs.get("bastionExternalIp") is not None
    for vm in node_vms(program):
        block = config.split(f"Host {vm.inputs['name']}\n", 1)[1].split("\n\n", 1)[0]
        assert (f"ProxyJump kata-mesh-{stack}-bastion" in block) == private


# --- cloud-init's schema ------------------------------------------------------------------------


def cloud_init_schema() -> dict:
    if not CLOUD_INIT_SCHEMA.is_file():
        unavailable(f"{CLOUD_INIT_SCHEMA} is missing (scripts/test.sh unpacks Debian's cloud-init)")
    return json.loads(CLOUD_INIT_SCHEMA.read_text())


def test_the_user_data_is_valid_cloud_config_that_writes_the_key_and_the_sshd_dropin():
    schema = cloud_init_schema()
    text = render_host_key_user_data(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA==\n-----END OPENSSH PRIVATE KEY-----\n",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== host",
        "kata-admin",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB== kata-admin\n",
    )
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    jsonschema.validate(document, schema)
    # The schema does catch a misspelt module key or a bad mode (so passing means something).
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**document, "write_files": [{"path": 7}]}, schema)
    files = written(document)
    assert files[SSHD_DROPIN_PATH]["content"].splitlines()[-1] == f"HostKey {HOST_KEY_PATH}"
    assert files[f"{HOST_KEY_PATH}.pub"]["content"] == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== host\n"
    # The admin user, made by cloud-init before sshd answers, with the stack's key and sudo.
    assert document["users"] == [
        {
            "name": "kata-admin",
            "shell": "/bin/bash",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "lock_passwd": True,
            "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB== kata-admin"],
        }
    ]


# --- real sshd and ssh --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(
        [require_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True
    )
    return path.with_suffix(".pub").read_text().strip()


def install_user_data(user_data: str, root: Path) -> None:
    """What cloud-init's write_files does with the user-data, under `root` instead of /."""
    for entry in yaml.safe_load(user_data)["write_files"]:
        target = root / entry["path"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(entry["content"])
        target.chmod(int(entry["permissions"], 8))


class Sshd:
    """Debian's sshd in a mount namespace of its own whose /etc/ssh is the machine's: Debian's
    sshd_config, the image's default host keys, and what the user-data wrote."""

    def __init__(self, tmp: Path, name: str, user_key: str) -> None:
        self.etc = tmp / name / "etc"
        (self.etc / "ssh").mkdir(parents=True)
        shutil.copy("/etc/ssh/sshd_config", self.etc / "ssh" / "sshd_config")
        (self.etc / "ssh" / "sshd_config.d").mkdir(exist_ok=True)
        # The image's own keys, as on a fresh Ubuntu VM (the guest agent makes these).
        subprocess.run([require_tool("ssh-keygen"), "-A", "-f", str(self.etc.parent)], check=True)
        self.private_key = self.etc / "generated_host_key"
        self.public_key = keygen(self.private_key)
        install_user_data(
            render_host_key_user_data(self.private_key.read_text(), self.public_key, "root", user_key),
            self.etc.parent,
        )
        self.authorized = tmp / name / "authorized_keys"
        self.authorized.write_text(user_key + "\n")
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        sshd = require_tool("sshd", "scripts/test.sh installs Debian's openssh-server when run as root")
        script = (
            f"mount --bind {self.etc / 'ssh'} /etc/ssh && mkdir -p /run/sshd && exec {sshd} -D -e "
            f"-p {self.port} -o ListenAddress=127.0.0.1 -o AuthorizedKeysFile={self.authorized} "
            "-o StrictModes=no -o UsePAM=no -o PidFile=none"
        )
        self.process = subprocess.Popen(
            [require_tool("unshare"), "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    stderr = self.process.stderr.read() if self.process.stderr else ""
                    raise AssertionError(f"sshd exited: {stderr}") from None
                time.sleep(0.05)
        raise AssertionError("sshd did not listen within 10 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[tuple[Path, Sshd, Sshd]]:
    if os.geteuid() != 0:
        unavailable("a real sshd in its own mount namespace needs root")
    user_key = tmp_path / "user_key"
    user_public = keygen(user_key)
    bastion, node = Sshd(tmp_path, "bastion", user_public), Sshd(tmp_path, "node", user_public)
    try:
        bastion.start()
        node.start()
        yield user_key, bastion, node
    finally:
        bastion.stop()
        node.stop()


def ssh_files(tmp: Path, user_key: Path, hosts: list[SshHost]) -> Path:
    known_hosts = tmp / "known_hosts"
    known_hosts.write_text(render_known_hosts(hosts))
    config = tmp / "config"
    config.write_text(render_ssh_config(hosts, "root", str(user_key), str(known_hosts)))
    return config


def ssh(config: Path, alias: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("ssh"), "-F", str(config), "-o", "BatchMode=yes", alias, "echo connected"],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.system
def test_sshd_offers_only_the_pinned_key_though_the_images_keys_exist(machines):
    _, _, node = machines
    assert (node.etc / "ssh" / "ssh_host_rsa_key").is_file()
    scan = subprocess.run(
        [require_tool("ssh-keyscan"), "-p", str(node.port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    offered = sorted(line.split(" ", 1)[1] for line in scan.stdout.splitlines() if not line.startswith("#"))
    assert offered == [node.public_key]


@pytest.mark.system
def test_the_rendered_config_reaches_a_private_node_through_the_bastion_and_refuses_a_changed_key(
    machines, tmp_path
):
    user_key, bastion, node = machines
    hosts = [
        SshHost("km-bastion", "127.0.0.1", bastion.public_key, port=bastion.port),
        SshHost("km-node", "127.0.0.1", node.public_key, jump="km-bastion", port=node.port),
    ]
    config = ssh_files(tmp_path, user_key, hosts)
    direct = ssh(config, "km-bastion")
    assert direct.returncode == 0 and direct.stdout == "connected\n", direct.stderr
    jumped = ssh(config, "km-node")
    assert jumped.returncode == 0 and jumped.stdout == "connected\n", jumped.stderr

    # The node's key pinned as the bastion's: the node answers with a key that is not the pinned one.
    swapped = [
        hosts[0],
        SshHost("km-node", "127.0.0.1", bastion.public_key, jump="km-bastion", port=node.port),
    ]
    refused = ssh(ssh_files(tmp_path, user_key, swapped), "km-node")
    assert refused.returncode == 255 and refused.stdout == ""
    assert "Host key verification failed" in refused.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_every_machine_makes_the_admin_user_with_the_stacks_key_at_first_boot(stack):
    program = cached_run(stack)
    stack_key = unsecret_value(node_vms(program)[0].inputs["metadata"])["ssh-keys"].split(":", 1)[1]
    for instance in program.of_type(INSTANCE):
        [user] = user_data_of(instance.inputs)["users"]
        assert user["name"] == "kata-admin"
        # The ssh-keys metadata's "USER:KEY USER" line, without its user prefix.
        assert f"{user['ssh_authorized_keys'][0]} kata-admin" == stack_key
