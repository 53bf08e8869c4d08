"""CKKS packing: the encrypted FedAvg arithmetic matches numpy; damage is detected."""

import numpy as np
import pytest
import tenseal as ts

from aidmp.errors import HeError
from aidmp.privacy.he.keys import COORDINATOR_FILE, INSTITUTION_FILE, key_ceremony, load_context
from aidmp.privacy.he.packing import (
    EncryptedSum,
    HeRange,
    add_vectors,
    bytes_per_value,
    decrypt_vector,
    encrypt_initial_global,
    encrypt_update,
    parse,
    slot_count,
)

SIZE = 5_000  # more than two ciphertexts of 2047 values
FLARE_BYTES_PER_VALUE = 57.4  # 8192/(60,40,40)/2^40, measured here (FLOWER_NOTES.md)


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    key_ceremony(out)
    return load_context(out / INSTITUTION_FILE, "institution"), load_context(
        out / COORDINATOR_FILE, "coordinator"
    )


def _round(public, updates, weights, w0):
    """The coordinator's side of one round: G_1 = G_0 + Σ n_i·u_i / W."""
    total = EncryptedSum(public)
    for i, (u, n) in enumerate(zip(updates, weights, strict=True)):
        total.add(encrypt_update(public, u, n), f"node {i}")
    mean, check = total.mean(sum(weights))
    return add_vectors(public, encrypt_initial_global(public, w0), mean), 1.0 + check


def test_one_encrypted_round_equals_the_weighted_mean(contexts):
    secret, public = contexts
    rng = np.random.default_rng(0)
    w0 = rng.normal(scale=0.5, size=SIZE)
    updates = [rng.normal(scale=0.01, size=SIZE) for _ in range(3)]
    weights = [120, 40, 840]
    model, check = _round(public, updates, weights, w0)
    assert len(model) == -(-SIZE // (slot_count(public) - 1))
    got = decrypt_vector(secret, model, SIZE, check, "global model")
    mean = np.average(np.stack(updates), axis=0, weights=weights)
    # The coordinator's 1/W is applied as round(2^25/W)/2^25 (packing.py): exact ratio r.
    r = round(2**25 / 1000) / 2**25 * 1000
    assert np.abs(got - (w0 + r * mean)).max() < 5e-4 / 1000  # the documented 5e-4/W
    assert abs(r - 1) <= 1000 / 2**26


def test_an_update_costs_under_32_bytes_a_parameter(contexts):
    _, public = contexts
    full = 2 * (slot_count(public) - 1)  # two ciphertexts, every slot used
    chunks = encrypt_update(public, np.random.default_rng(1).normal(size=full), 10)
    per_value = bytes_per_value(chunks, full)
    assert per_value <= 32 and per_value < FLARE_BYTES_PER_VALUE / 1.8
    # A model whose size is not a multiple of 2047 pays for one partly empty ciphertext.
    padded = encrypt_update(public, np.ones(full + 1), 10)
    assert len(padded) == 3


def test_the_coordinator_cannot_decrypt(contexts):
    _, public = contexts
    chunks = encrypt_update(public, np.ones(SIZE), 3)
    with pytest.raises(ValueError, match="secret_key"):
        ts.ckks_vector_from(public, chunks[0]).decrypt()


def test_a_truncated_update_is_rejected_and_leaves_the_sum_alone(contexts):
    secret, public = contexts
    total = EncryptedSum(public)
    total.add(encrypt_update(public, np.ones(SIZE), 2), "node 0")
    bad = encrypt_update(public, np.ones(SIZE), 5)
    bad[1] = bad[1][: len(bad[1]) // 2]
    with pytest.raises(HeError, match="node 1, chunk 1: ciphertext is truncated or tampered"):
        total.add(bad, "node 1")
    mean, check = total.mean(2)
    vectors = [v.serialize() for v in mean]
    got = decrypt_vector(secret, vectors, SIZE, check, "mean")
    assert got == pytest.approx(1.0, abs=5e-4 / 2)  # only node 0 (weight 2) is in it


def _varint(blob: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        value |= (blob[pos] & 0x7F) << shift
        shift, pos = shift + 7, pos + 1
        if not blob[pos - 1] & 0x80:
            return value, pos


def _flip_classes(blob: bytes) -> dict[str, list[int]]:
    """Byte offsets of each part of a serialized CKKS vector (privacy/he/framing.py):
    TenSEAL's protobuf framing, SEAL's header, zstd's frame and block headers, the
    entropy-coded payload, the end of the zstd frame, and TenSEAL's scale field."""
    assert blob[0] == 0x0A  # field 1, the packed sizes
    length, pos = _varint(blob, 1)
    assert blob[pos + length] == 0x12  # field 2, the (one) SEAL ciphertext
    seal_size, seal = _varint(blob, pos + length + 1)
    zstd = seal + 16
    assert blob[seal : seal + 2] == b"\x5e\xa1" and blob[zstd : zstd + 4] == b"\x28\xb5\x2f\xfd"
    single_segment, content_size_flag = blob[zstd + 4] & 0x20, blob[zstd + 4] >> 6
    window = 0 if single_segment else 1
    header = 5 + window + (1 if single_segment else 0, 2, 4, 8)[content_size_flag]
    payload = zstd + header + 3  # after the first block's header
    end = seal + seal_size
    assert blob[end] == 0x19 and len(blob) == end + 9  # field 3, the scale (a double)
    rng = np.random.default_rng(11)  # the payload is sampled, at fixed relative offsets
    sampled = payload + (rng.random(48) * (end - 16 - payload)).astype(int)
    return {
        "protobuf tags, lengths, sizes": list(range(0, seal)),
        "SEAL header": list(range(seal, zstd)),
        "zstd frame and block headers": list(range(zstd, payload)),
        "compressed payload": sorted(set(sampled.tolist())),
        "end of the zstd frame": list(range(end - 16, end)),
        "scale field": list(range(end, len(blob))),
    }


def test_every_flipped_bit_in_every_part_of_a_ciphertext_is_an_he_error(contexts):
    """Every bit of the framing, the payload at 48 seeded places: each flip is refused on
    arrival (what the coordinator parses) or at decryption (the check slot), always as an
    HeError (code 104), never another exception or a crashed process."""
    secret, public = contexts
    w0 = np.random.default_rng(2).normal(size=500)
    blob = encrypt_initial_global(public, w0)[0]
    classes = _flip_classes(blob)
    outcomes = {name: {"arrival": 0, "decryption": 0, "inert": 0} for name in classes}
    for name, positions in classes.items():
        bits = range(8) if name != "compressed payload" else None
        for k, pos in enumerate(positions):
            for bit in bits if bits is not None else [k % 8]:
                damaged = bytearray(blob)
                damaged[pos] ^= 1 << bit
                try:
                    parse(public, bytes(damaged), "global model")  # what the coordinator does
                except HeError as exc:
                    assert exc.decline_code == 104
                    outcomes[name]["arrival"] += 1
                    continue
                try:
                    decrypt_vector(secret, [bytes(damaged)], 500, 1.0, "global model")
                except HeError as exc:
                    assert exc.decline_code == 104
                    outcomes[name]["decryption"] += 1
                    continue
                # Only inside zstd's entropy-coded payload may a bit be one the decoder
                # never reads (padding in its tables): then the very same ciphertext came
                # out, and there was nothing to refuse.
                assert name == "compressed payload", (name, pos, bit)
                assert parse(secret, bytes(damaged), "").serialize() == blob, (pos, bit)
                outcomes[name]["inert"] += 1
    for name, seen in outcomes.items():
        assert seen["arrival"] + seen["decryption"] > seen["inert"], (name, seen)
    assert outcomes["compressed payload"]["decryption"] > 0  # the check slot's own catches


def test_a_sum_under_other_keys_fails_the_check_slot(contexts, tmp_path):
    secret, _ = contexts
    key_ceremony(tmp_path)
    stranger = load_context(tmp_path / COORDINATOR_FILE, "coordinator")
    model = encrypt_initial_global(stranger, np.zeros(SIZE))
    with pytest.raises(HeError, match="other keys or altered"):
        decrypt_vector(secret, model, SIZE, 1.0, "global model")


def test_values_beyond_the_keys_range_are_refused(contexts):
    _, public = contexts
    limits = HeRange.of(public)
    assert limits.max_parameter == 16.0 and limits.max_weighted_update == 2.0**24
    with pytest.raises(HeError, match="holds at most"):
        encrypt_initial_global(public, np.full(10, 20.0))
    with pytest.raises(HeError, match="beyond the"):
        encrypt_update(public, np.full(10, 1.0), 2.0**25)
    with pytest.raises(HeError, match="beyond the"):
        encrypt_update(public, np.array([np.nan]), 1.0)


def test_updates_of_different_shapes_are_refused(contexts):
    _, public = contexts
    total = EncryptedSum(public)
    total.add(encrypt_update(public, np.ones(SIZE), 1.0), "node 0")
    with pytest.raises(HeError, match="another model"):
        total.add(encrypt_update(public, np.ones(100), 1.0), "node 1")
