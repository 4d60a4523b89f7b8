"""Each machine's SSH host key, known before the program first connects, so that every SSH step
(pulumi-command's `host_key`) talks to that machine and no other.

The program makes an ED25519 host key per machine (pulumi-tls, kept as a secret in the stack's
state) and cloud-init installs it at first boot from the instance's `user-data` metadata. It lives
in a directory of its own, offered through an sshd drop-in: the GCE guest agent regenerates the
image's /etc/ssh/ssh_host_* keys at first boot (its `set_host_keys`), racing anything that writes
them (cloudfoundry/bosh#1389), but it leaves other paths alone. Once one HostKey is configured sshd
offers only the configured keys, so the pinned key is the only one a client ever sees.

The private key is in instance metadata: project members who can read instances (compute
read access) can read it, and so can processes on the machine itself. Pods cannot: the
metadata block (scripts/node/15-metadata-block.sh) keeps them off the metadata server.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls
import yaml

HOST_KEY_DIR = "/etc/ssh/kata-mesh"
HOST_KEY_PATH = f"{HOST_KEY_DIR}/ssh_host_ed25519_key"
# sshd_config.d is included at the top of Ubuntu's sshd_config; HostKey accumulates over files.
SSHD_DROPIN_PATH = "/etc/ssh/sshd_config.d/00-kata-mesh-host-key.conf"


def render_sshd_dropin(host_key_path: str = HOST_KEY_PATH) -> str:
    return (
        "# kata-mesh: the host key the deploying program pins; no other host key is offered.\n"
        f"HostKey {host_key_path}\n"
    )


def render_host_key_user_data(
    private_key_openssh: str, public_key_openssh: str, admin_user: str, authorized_key: str
) -> str:
    """cloud-init user-data that installs the host key and makes the admin user with the stack's
    key, both before sshd starts (cloud-init's network stage runs before ssh.service), and reloads
    sshd should it have started earlier anyway. The user is not left to the guest agent, which
    makes it from the ssh-keys metadata only after sshd answers: a login through the bastion that
    fails once is not retried on a fresh connection (pulumi-command's proxy dial)."""
    config = {
        # Instead of the image's default user: only the admin user exists.
        "users": [
            {
                "name": admin_user,
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": [authorized_key.strip()],
            }
        ],
        "write_files": [
            {
                "path": HOST_KEY_PATH,
                "owner": "root:root",
                "permissions": "0600",
                "content": private_key_openssh.strip() + "\n",
            },
            {
                "path": f"{HOST_KEY_PATH}.pub",
                "owner": "root:root",
                "permissions": "0644",
                "content": public_key_openssh.strip() + "\n",
            },
            {
                "path": SSHD_DROPIN_PATH,
                "owner": "root:root",
                "permissions": "0644",
                "content": render_sshd_dropin(),
            },
        ],
        # Reload, not restart: a session already open (the first SSH step dials from boot on)
        # survives it. Does nothing when socket activation has not started sshd yet.
        "runcmd": [["systemctl", "try-reload-or-restart", "ssh.service"]],
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False)


def known_hosts_line(host: str, public_key_openssh: str) -> str:
    """One known_hosts line: what `ssh` checks the machine's key against."""
    return f"{host} {public_key_openssh.strip()}"


@dataclass(frozen=True)
class HostKey:
    """A machine's host key: the public half to pin, the user-data that installs it (a secret)."""

    public_key_openssh: pulumi.Output[str]
    user_data: pulumi.Output[str]


def make_host_key(
    name: str, parent: pulumi.Resource, admin_user: str, authorized_key: pulumi.Input[str]
) -> HostKey:
    key = tls.PrivateKey(f"{name}-host-key", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=parent))
    public = key.public_key_openssh.apply(lambda k: k.strip())
    user_data = pulumi.Output.secret(
        pulumi.Output.all(key.private_key_openssh, public, authorized_key).apply(
            lambda parts: render_host_key_user_data(parts[0], parts[1], admin_user, parts[2])
        )
    )
    return HostKey(public_key_openssh=public, user_data=user_data)
