"""The stack's SSH identity: a per-stack ED25519 key, or the user's own key from secret config."""

from __future__ import annotations

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
