"""CKKS packing of model vectors, and the arithmetic of encrypted FedAvg.

Who does what (trust model in the README):
  node         w_t = decrypt(G_t); trains; u = β·M_t + η·(w_local − w_t);
               sends encrypt(n·u) with n, its example count
  coordinator  S = Σ encrypt(n_i·u_i)            (adds, public key only)
               M_{t+1} = S × (1/W), W = Σ n_i    (one plaintext scalar, no rescale)
               G_{t+1} = G_t + M_{t+1}
So M is η times FedAvgM's momentum and G the global model; with β=0, η=1 it is
FedAvg. Because each node folds β·M_t into its own update, the coordinator never
multiplies a stored ciphertext, and one multiplicative level is never used up.

Packing: a vector is split into chunks of (slots − 1) values. Slot 0 of every chunk
is a check slot: a node's weight n in an update, and a value the coordinator can
predict in plaintext in G and M. A node that decrypts compares each chunk's check
slot with the announced value, which catches a sum mixed with ciphertexts under
other keys (they decrypt to noise) and a chunk altered after it was made.

Parameters (privacy/he/keys.py CkksParams): N=4096, moduli (56, 53), scale s=2^25.
  * Size: the coordinator only needs one data prime, and N=4096 is the smallest ring
    with room for it at 128-bit security (109 bits). An update then takes 30.3 bytes
    per parameter, against 57.4 for NVIDIA FLARE's 8192/(60,40,40)/2^40.
  * Range: updates are encrypted at scale s, and the multiply by 1/W doubles it, so
    G and M live at s^2 = 2^50 inside the 56-bit prime: |parameter| < 2^5 = 32. A
    node refuses to send if a parameter passes half of that (`HeRange`), rather
    than let the global model wrap around. n·|u| must stay below 2^24 (headroom for
    the sum of 64 such nodes).
  * Error: encryption adds at most ~5e-4 absolute to Σ n_i·u_i (measured, 10 nodes),
    i.e. ≤ 5e-4/W on the mean update: 2e-8 at W=30,000, far below the DP noise
    (about 1e-3 a parameter a round on the default task). The plaintext 1/W is
    encoded as round(2^25/W)/2^25, so the coordinator's step is scaled by
    r = round(2^25/W)·W/2^25, with |r − 1| ≤ W/2^26 (4.5e-4 at W=30,000): a
    deterministic server learning rate within 0.05% of 1, not noise.
  * Large federations: at W ≈ 10^7 that step would be ~10 % off, and past 2^26 the
    multiplier rounds to 0 and the model would stop moving. So weights are pre-scaled:
    nodes send encrypt((n/m)·u), where m, the round's weight unit, is a power of two
    that the coordinator announces with the global state, chosen from the last round's
    W so that W/m ≤ 2^12 (|r − 1| ≤ 6e-5). A round whose step would still be more than
    0.1 % off (the first round of a job larger than ~67,000 examples, whose W was not
    known yet) is not aggregated; the next round uses the right unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from aidmp.errors import HeError
from aidmp.privacy.he.framing import check_framing

# A decrypted check slot must be this close (relative) to the announced value. CKKS
# noise on it is below 1e-7; garbage under other keys is spread over ±2^5.
CHECK_TOLERANCE = 1e-4
# Headroom for summing: each node's n·|u| stays 2^6 times below the prime's range.
SUM_HEADROOM_BITS = 6
# Σ n_i/m is kept at most 2^12, so that 1/W encodes with a step error ≤ 2^12/2^26.
WEIGHT_BITS = 12
# The most the coordinator's step may deviate from 1 before a round is not aggregated.
MAX_STEP_ERROR = 1e-3


def weight_unit_for(total_examples: float) -> float:
    """The power of two m (at least 1) that brings a round's W/m to at most 2^12."""
    if not total_examples > 0:
        return 1.0
    return float(2 ** max(0, math.ceil(math.log2(total_examples)) - WEIGHT_BITS))


def step_error(context: ts.Context, total_weight: float) -> float:
    """|r − 1|, r being the factor by which the encoded 1/W scales the coordinator's step."""
    scale = context.global_scale
    return abs(round(scale / total_weight) / scale * total_weight - 1.0)


def slot_count(context: ts.Context) -> int:
    return _parms(context).poly_modulus_degree() // 2


def _parms(context: ts.Context):
    return context.seal_context().data.key_context_data().parms()


def _scale_bits(context: ts.Context) -> int:
    return round(math.log2(context.global_scale))


@dataclass(frozen=True)
class HeRange:
    """What fits in the data prime without wrapping around."""

    max_weighted_update: float  # bound on n·|u| for one node's update (scale s)
    max_parameter: float  # bound on |w| in the global model G (scale s^2), with margin

    @classmethod
    def of(cls, context: ts.Context) -> HeRange:
        bits = [q.bit_count() for q in _parms(context).coeff_modulus()]
        data_bits = sum(bits[:-1])  # the last prime is the special (key-switching) one
        s = _scale_bits(context)
        return cls(
            max_weighted_update=2.0 ** (data_bits - 1 - s - SUM_HEADROOM_BITS),
            max_parameter=2.0 ** (data_bits - 2 - 2 * s),
        )


def encrypt_vector(
    context: ts.Context, values: np.ndarray, check: float, scale: float | None = None
) -> list[bytes]:
    """`values` as serialized ciphertexts of (slots − 1) values, each led by `check`."""
    values = np.asarray(values, dtype=np.float64).ravel()
    per_chunk = slot_count(context) - 1
    chunks = []
    for start in range(0, max(len(values), 1), per_chunk):
        plain = np.concatenate(([check], values[start : start + per_chunk])).tolist()
        vector = (
            ts.ckks_vector(context, plain)
            if scale is None
            else ts.ckks_vector(context, plain, scale=scale)
        )
        chunks.append(vector.serialize())
    return chunks


def encrypt_update(context: ts.Context, update: np.ndarray, weight: float) -> list[bytes]:
    """A node's weight·update with `weight` in every check slot."""
    if not weight > 0:
        raise HeError(f"an update's weight must be positive, got {weight}")
    weighted = np.asarray(update, dtype=np.float64) * weight
    limit = HeRange.of(context).max_weighted_update
    peak = float(np.abs(weighted).max(initial=0.0))
    if not peak < limit:  # also catches NaN
        raise HeError(
            f"the weighted update reaches {peak:.3g}, beyond the {limit:.3g} these CKKS keys "
            "can sum without wrapping around; lower the learning rate or make keys with a "
            "smaller scale"
        )
    return encrypt_vector(context, weighted, check=weight)


def encrypt_initial_global(context: ts.Context, params: np.ndarray) -> list[bytes]:
    """G_0 under the public key, at scale s^2 so that round updates add to it."""
    check_range(context, params, "the initial model")
    return encrypt_vector(context, params, check=1.0, scale=context.global_scale**2)


def check_range(context: ts.Context, params: np.ndarray, what: str) -> None:
    """Refuse a model whose parameters would overflow G's range."""
    limit = HeRange.of(context).max_parameter
    peak = float(np.abs(params).max(initial=0.0))
    if not peak < limit:
        raise HeError(
            f"{what} has a parameter of magnitude {peak:.3g}; the encrypted global model "
            f"holds at most ±{limit:g} under these CKKS keys (scale 2^{_scale_bits(context)}). "
            "Make keys with a smaller scale, or regularize the model"
        )


def parse(context: ts.Context, blob: bytes, where: str) -> ts.CKKSVector:
    """A ciphertext off the wire; its framing is checked before TenSEAL, which can crash
    the process on a damaged field tag, reads it (privacy/he/framing.py)."""
    try:
        scale = context.global_scale  # updates are at s, the global model at s^2
        check_framing(blob, slot_count(context), (scale, scale**2))
        return ts.ckks_vector_from(context, blob)
    except Exception as exc:  # TenSEAL raises ValueError/RuntimeError/TypeError on bad bytes
        raise HeError(f"{where}: ciphertext is truncated or tampered ({exc})") from None


class EncryptedSum:
    """Σ of updates' ciphertexts, added one update at a time: a round holds one sum in
    memory, never every node's update."""

    def __init__(self, context: ts.Context) -> None:
        self.context = context
        self.total: list[ts.CKKSVector] | None = None
        self.count = 0

    def add(self, chunks: Sequence[bytes], who: str) -> None:
        """Add one update; a damaged or mis-shaped one raises and leaves the sum unchanged."""
        vectors = [parse(self.context, b, f"{who}, chunk {i}") for i, b in enumerate(chunks)]
        if self.total is not None:
            if [v.size() for v in vectors] != [v.size() for v in self.total]:
                raise HeError(
                    f"{who} sent {len(vectors)} ciphertexts of sizes "
                    f"{[v.size() for v in vectors][:3]}..., the others "
                    f"{[v.size() for v in self.total][:3]}...: another model or other keys"
                )
            for acc, vec in zip(self.total, vectors, strict=True):
                acc += vec
        else:
            self.total = vectors
        self.count += 1

    def mean(self, total_weight: float) -> tuple[list[ts.CKKSVector], float]:
        """Σ/W as ciphertexts at scale s^2, and the value its check slots hold."""
        if self.total is None:
            raise HeError("no updates to average")
        error = step_error(self.context, total_weight)
        if error > MAX_STEP_ERROR:
            raise HeError(
                f"the weights sum to {total_weight:.6g}, too large to divide by under CKKS "
                f"scale 2^{_scale_bits(self.context)} (the step would be {error:.1%} off)"
            )
        inverse = 1.0 / total_weight
        mean = [v * inverse for v in self.total]
        # SEAL encodes a constant c at scale s as round(c·s): the exact multiplier.
        scale = self.context.global_scale
        return mean, round(inverse * scale) / scale * total_weight


def add_vectors(
    context: ts.Context, chunks: Sequence[bytes], addend: Sequence[ts.CKKSVector]
) -> list[bytes]:
    """chunks + addend, serialized (the coordinator's G_{t+1} = G_t + M_{t+1})."""
    vectors = [parse(context, b, f"global model, chunk {i}") for i, b in enumerate(chunks)]
    if len(vectors) != len(addend):
        raise HeError(
            f"the global model has {len(vectors)} ciphertexts and the round's mean "
            f"{len(addend)}: the nodes trained another model"
        )
    for acc, vec in zip(vectors, addend, strict=True):
        acc += vec
    return [v.serialize() for v in vectors]


def decrypt_vector(
    context: ts.Context, chunks: Sequence[bytes], size: int, expected_check: float, what: str
) -> np.ndarray:
    """Decrypt `size` values, verifying every chunk's check slot (secret context)."""
    parts = []
    per_chunk = slot_count(context) - 1
    for i, blob in enumerate(chunks):
        vector = parse(context, blob, f"{what}, chunk {i}")
        expected = min(per_chunk, max(size - i * per_chunk, 0)) + 1  # encrypt_vector's layout
        if vector.size() != expected:
            raise HeError(
                f"{what}, chunk {i}: holds {vector.size()} values where the model's layout has "
                f"{expected}; it was made for another model or altered"
            )
        try:
            plain = np.asarray(vector.decrypt())
        except (ValueError, RuntimeError) as exc:  # TenSEAL on a damaged body, e.g. its scale
            raise HeError(
                f"{what}, chunk {i}: does not decrypt ({exc}), so its check slot cannot be "
                "read; it was made under other keys or altered on the way"
            ) from None
        check = plain[0]
        if not abs(check - expected_check) <= CHECK_TOLERANCE * max(1.0, abs(expected_check)):
            raise HeError(
                f"{what}, chunk {i}: its check slot decrypts to {check:.6g}, not "
                f"{expected_check:.6g}; it was made under other keys or altered. "
                "Check that every node and the coordinator come from one key ceremony"
            )
        parts.append(plain[1:])
    values = np.concatenate(parts) if parts else np.empty(0)
    if len(values) < size:
        raise HeError(f"{what} holds {len(values)} values, the model has {size}")
    return values[:size]


def bytes_per_value(chunks: Sequence[bytes], size: int) -> float:
    return sum(len(b) for b in chunks) / size
