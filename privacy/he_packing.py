"""CKKS packing of model updates, and their sum under encryption.

A node flattens its update into one vector, multiplies it by its weight (its
example count) while still in plaintext, appends the weight itself as a check
slot, splits the result into ciphertexts of slot-count length, and serializes
them. The coordinator only adds ciphertexts (no multiplicative level, no Galois
or relinearization keys). A node that decrypts the sum divides by the total
weight, which the coordinator announces in plaintext; the check slot must decrypt
to that total, which catches a sum under other keys or a tampered ciphertext that
still parses.

Status: the building block of the HE issue. The encrypted strategy, the flags and
the wire format in Flower messages are not built yet.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tenseal as ts

from aidmp.errors import AidmpError

# The check slot must come back within this relative error (CKKS is approximate).
CHECK_TOLERANCE = 1e-4


def slot_count(context: ts.Context) -> int:
    return context.seal_context().data.key_context_data().parms().poly_modulus_degree() // 2


def encrypt_update(context: ts.Context, update: np.ndarray, weight: float) -> list[bytes]:
    """weight·update plus a check slot holding `weight`, as serialized ciphertexts."""
    if not weight > 0:
        raise AidmpError(f"an update's weight must be positive, got {weight}")
    plain = np.append(np.asarray(update, dtype=np.float64).ravel() * weight, weight)
    slots = slot_count(context)
    return [
        ts.ckks_vector(context, plain[i : i + slots].tolist()).serialize()
        for i in range(0, len(plain), slots)
    ]


def _parse(context: ts.Context, blob: bytes, where: str) -> ts.CKKSVector:
    try:
        return ts.ckks_vector_from(context, blob)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise AidmpError(f"{where}: ciphertext is truncated or tampered ({exc})") from None


def sum_encrypted(context: ts.Context, updates: Iterable[list[bytes]]) -> list[bytes]:
    """Σ of the updates' ciphertexts, accumulated one update at a time (public context)."""
    total: list[ts.CKKSVector] | None = None
    count = 0
    for count, chunks in enumerate(updates, start=1):
        vectors = [_parse(context, b, f"update {count}, chunk {i}") for i, b in enumerate(chunks)]
        if total is None:
            total = vectors
            continue
        if len(vectors) != len(total):
            raise AidmpError(
                f"update {count} has {len(vectors)} ciphertexts, the others {len(total)}: "
                "a node with another model or another key size"
            )
        for acc, vec in zip(total, vectors, strict=True):
            acc += vec
    if total is None:
        raise AidmpError("no updates to sum")
    return [v.serialize() for v in total]


def decrypt_mean(
    context: ts.Context, chunks: list[bytes], total_weight: float, size: int
) -> np.ndarray:
    """The weighted mean Σ w_i u_i / Σ w_i from an encrypted sum (secret context)."""
    plain = np.concatenate(
        [np.asarray(_parse(context, b, f"sum, chunk {i}").decrypt()) for i, b in enumerate(chunks)]
    )
    if len(plain) < size + 1:
        raise AidmpError(f"the sum holds {len(plain) - 1} values, the model has {size}")
    check = plain[size]
    if not abs(check - total_weight) <= CHECK_TOLERANCE * max(1.0, abs(total_weight)):
        raise AidmpError(
            f"the encrypted sum's check slot decrypts to {check:.6g}, not the announced total "
            f"weight {total_weight:g}: it was made under other keys or altered"
        )
    return plain[:size] / total_weight


def bytes_per_value(chunks: list[bytes], size: int) -> float:
    return sum(len(b) for b in chunks) / size
