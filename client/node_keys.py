"""`aidmp node keygen`: the EC key pair that identifies a SuperNode to the SuperLink.

The private key (OpenSSH format, owner-only) stays on the node and is given to
`flower-supernode --auth-supernode-private-key`. The public key (`.pub`) goes to the
coordinator, who registers it; the SuperLink refuses nodes whose key it does not know.
ECDSA on P-384, as Flower's SuperNode authentication expects.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aidmp.atomic import atomic_write_bytes
from aidmp.errors import AidmpError


def node_keygen(out: Path, comment: str = "aidmp-node") -> tuple[Path, Path, str]:
    """Write OUT (private) and OUT.pub (public); returns both and the key's SHA-256."""
    public_path = out.with_name(out.name + ".pub")
    for path in (out, public_path):
        if path.exists():
            raise AidmpError(
                f"{path} exists; a node's identity is registered with the coordinator. "
                "Choose another --out, or remove it deliberately"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    atomic_write_bytes(out, private)
    os.chmod(out, 0o600)
    atomic_write_bytes(public_path, public + f" {comment}\n".encode())
    os.chmod(public_path, 0o644)
    return out, public_path, hashlib.sha256(public).hexdigest()


def public_key_sha256(public_path: Path) -> str:
    """The SHA-256 that `node keygen` printed for this public key (over the key itself,
    without its comment): how a site and the coordinator name one key to each other."""
    try:
        kind, blob = public_path.read_text().split()[:2]
    except (OSError, ValueError):
        return "unknown: no readable " + public_path.name
    return hashlib.sha256(f"{kind} {blob}".encode()).hexdigest()
