"""The CKKS key ceremony: who holds which key, and how each side checks it.

One institution's admin runs `aidmp keys init --out DIR` once. It writes
  institution.ckks   the secret context, given to every institution out of band
  coordinator.ckks   the public context (`make_context_public()`), for the coordinator
  fingerprint.txt    SHA-256 of the public context, which both sides can recompute
No Galois or relinearization keys are made: aggregation only adds ciphertexts and
multiplies them by a plaintext scalar, which needs neither.

Each side loads its file through `load_context`, which refuses the wrong kind of
key (a coordinator with a secret key; a node without one), a file others can read,
and a file that is not a TenSEAL context.

The default parameters, and why they are the smallest that work, are explained in
privacy/he/packing.py, which relies on them.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tenseal as ts
import tenseal.sealapi  # noqa: F401  (registers SEAL's types, e.g. Modulus)

from aidmp.atomic import atomic_write_bytes
from aidmp.errors import AidmpError, HeError

INSTITUTION_FILE = "institution.ckks"
COORDINATOR_FILE = "coordinator.ckks"
FINGERPRINT_FILE = "fingerprint.txt"
Role = Literal["institution", "coordinator"]

# The largest total coefficient modulus (bits) that keeps 128-bit security for each
# polynomial degree, from the HomomorphicEncryption.org standard that SEAL enforces.
MAX_MODULUS_BITS_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class CkksParams:
    """N=4096 with one 56-bit data prime and a 53-bit special prime: 109 bits, the most
    that N=4096 allows at 128-bit security. Scale 2^25. See privacy/he/packing.py."""

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (56, 53)
    scale_bits: int = 25

    def check(self) -> None:
        limit = MAX_MODULUS_BITS_128.get(self.poly_modulus_degree)
        if limit is None:
            raise AidmpError(
                f"poly modulus degree {self.poly_modulus_degree} is not one of "
                f"{sorted(MAX_MODULUS_BITS_128)}"
            )
        if sum(self.coeff_mod_bit_sizes) > limit:
            raise AidmpError(
                f"modulus chain {list(self.coeff_mod_bit_sizes)} has "
                f"{sum(self.coeff_mod_bit_sizes)} bits; N={self.poly_modulus_degree} keeps "
                f"128-bit security only up to {limit}"
            )


def public_bytes(context: ts.Context) -> bytes:
    """The public context's canonical bytes (deterministic: fingerprints rely on it)."""
    public = context.copy()
    public.make_context_public()
    # TenSEAL serializes its auto_* flags too; fix them so that only keys and
    # parameters decide the fingerprint.
    public.auto_rescale, public.auto_relin, public.auto_mod_switch = False, True, True
    return public.serialize(save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


def fingerprint(context: ts.Context) -> str:
    return hashlib.sha256(public_bytes(context)).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
    os.chmod(path, 0o600)


def key_ceremony(out_dir: Path, params: CkksParams = CkksParams()) -> str:
    """Make a fresh key pair and write the three files; returns the fingerprint."""
    params.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = [n for n in (INSTITUTION_FILE, COORDINATOR_FILE) if (out_dir / n).exists()]
    if existing:
        raise AidmpError(
            f"{out_dir} already holds {', '.join(existing)}; a new ceremony would orphan every "
            "model encrypted under them. Choose another --out, or remove them deliberately"
        )
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    context.global_scale = 2**params.scale_bits
    secret = context.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    _write_private(out_dir / INSTITUTION_FILE, secret)
    _write_private(out_dir / COORDINATOR_FILE, public_bytes(context))
    fp = fingerprint(context)
    atomic_write_bytes(out_dir / FINGERPRINT_FILE, (fp + "\n").encode())
    return fp


def simulation_keys(folder: Path) -> tuple[str, bool]:
    """A simulation's own ceremony: reuse the keys in `folder`, or make them there.
    Returns (fingerprint, whether they were made now)."""
    if (folder / INSTITUTION_FILE).is_file() and (folder / COORDINATOR_FILE).is_file():
        return fingerprint(load_context(folder / COORDINATOR_FILE, "coordinator")), False
    return key_ceremony(folder), True


def load_context(path: Path, role: Role) -> ts.Context:
    """Load a key file for `role`, refusing the wrong key kind or loose permissions."""
    if not path.is_file():
        raise HeError(f"no key file at {path}; run `aidmp keys init --out DIR` first")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise HeError(
            f"key file {path} can be read by others (mode {mode:o}); run: chmod 600 {path}"
        )
    try:
        context = ts.context_from(path.read_bytes())
    except Exception as exc:  # TenSEAL raises plain ValueError/RuntimeError on bad bytes
        raise HeError(f"{path} is not a valid CKKS key file ({exc}); redo the ceremony") from None
    # Aggregation multiplies once by a plaintext scalar and keeps the doubled scale
    # (privacy/he/packing.py): TenSEAL must not try to rescale, which needs a level.
    context.auto_rescale = False
    if role == "coordinator" and context.is_private():
        raise HeError(
            f"{path} holds a secret key; the coordinator must only ever get "
            f"{COORDINATOR_FILE} (public), never {INSTITUTION_FILE}"
        )
    if role == "institution" and not context.is_private():
        raise HeError(
            f"{path} has no secret key, so this node could not decrypt the global model; "
            f"institutions use {INSTITUTION_FILE} from the ceremony"
        )
    return context


def key_file_for(path: Path, role: Role) -> Path:
    """A key file, or the ceremony's folder holding the file for `role`."""
    return (
        path / (COORDINATOR_FILE if role == "coordinator" else INSTITUTION_FILE)
        if path.is_dir()
        else path
    )


def inspect_context(context: ts.Context) -> dict[str, object]:
    """Parameters, key kind, fingerprint and security level of a loaded context."""
    parms = context.seal_context().data.key_context_data().parms()
    n = parms.poly_modulus_degree()
    bits = [q.bit_count() for q in parms.coeff_modulus()]
    limit = MAX_MODULUS_BITS_128.get(n, 0)
    return {
        "poly_modulus_degree": n,
        "coeff_mod_bit_sizes": bits,
        "scale_bits": round(math.log2(context.global_scale)),
        "secret_key": context.is_private(),
        "galois_keys": context.has_galois_keys(),
        "fingerprint": fingerprint(context),
        "security": "128-bit"
        if sum(bits) <= limit
        else f"below 128-bit ({sum(bits)} > {limit} bits)",
    }


def inspect_key_file(path: Path) -> dict[str, object]:
    """What `aidmp keys inspect` prints: parameters, key kind, fingerprint, security."""
    try:
        context = ts.context_from(path.read_bytes())
    except Exception as exc:
        raise AidmpError(f"{path} is not a valid CKKS key file ({exc})") from None
    return {
        "file": str(path),
        **inspect_context(context),
        "mode": f"{stat.S_IMODE(path.stat().st_mode):o}",
    }
