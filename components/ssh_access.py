"""The stack's SSH identity: a per-stack ED25519 key, or the user's own key from secret config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls


@dataclass(frozen=True)
class SshAccessArgs:
    admin_user: str
    # A user-supplied OpenSSH/PEM private key; None makes a new ED25519 key.
    private_key: str | None = None


class SshAccess(pulumi.ComponentResource):
    """Holds the private half only as a secret and renders the public half for instance metadata."""

    private_key_openssh: pulumi.Output[str]
    public_key_openssh: pulumi.Output[str]
    ssh_keys_metadata: pulumi.Output[str]

    def __init__(self, name: str, args: SshAccessArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kata-mesh:ssh:SshAccess", name, None, opts)
        if args.private_key is None:
            key = tls.PrivateKey(f"{name}-key", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=self))
            private = key.private_key_openssh
            public = key.public_key_openssh
        else:
            private = pulumi.Output.secret(args.private_key)
            is_openssh = args.private_key.lstrip().startswith("-----BEGIN OPENSSH")
            derived = tls.get_public_key_output(
                private_key_openssh=private if is_openssh else None,
                private_key_pem=None if is_openssh else private,
                opts=pulumi.InvokeOutputOptions(parent=self),
            )
            # Derived from a secret, so the SDK marks it secret; the public half is not.
            public = pulumi.Output.unsecret(derived.public_key_openssh)
        self.private_key_openssh = pulumi.Output.secret(private)
        self.public_key_openssh = public.apply(lambda k: k.strip())
        # GCE's ssh-keys metadata format: "USER:KEY USER", one key per line.
        self.ssh_keys_metadata = self.public_key_openssh.apply(
            lambda k: f"{args.admin_user}:{k} {args.admin_user}"
        )
        self.register_outputs({"publicKeyOpenssh": self.public_key_openssh})


@dataclass(frozen=True)
class SshHost:
    """One machine as the user's ssh sees it: an alias (its GCE name), where it is, its host key."""

    alias: str
    address: str
    host_key: str
    # The alias of the host to jump through (the bastion), if any.
    jump: str | None = None
    port: int = 22


def render_known_hosts(hosts: Sequence[SshHost]) -> str:
    """known_hosts lines keyed by alias (each Host entry sets HostKeyAlias), so the key pinned for
    a machine is checked whatever address reaches it."""
    return "".join(f"{host.alias} {host.host_key.strip()}\n" for host in hosts)


def render_ssh_config(hosts: Sequence[SshHost], user: str, key_file: str, known_hosts_file: str) -> str:
    """An ssh_config for the stack's machines: the stack's key, only its pinned host keys, and the
    bastion as ProxyJump for private nodes. Use with `ssh -F <file> <alias>`."""
    blocks = []
    for host in hosts:
        lines = [
            f"Host {host.alias}",
            f"  HostName {host.address}",
            f"  Port {host.port}",
            f"  User {user}",
            f"  IdentityFile {key_file}",
            "  IdentitiesOnly yes",
            f"  HostKeyAlias {host.alias}",
            f"  UserKnownHostsFile {known_hosts_file}",
            "  StrictHostKeyChecking yes",
            "  HostKeyAlgorithms ssh-ed25519",
        ]
        if host.jump:
            lines.append(f"  ProxyJump {host.jump}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
