"""CKKS packing: weighted sums under encryption match numpy; damage is detected."""

import numpy as np
import pytest
import tenseal as ts

from aidmp.errors import AidmpError
from privacy.he_keys import COORDINATOR_FILE, INSTITUTION_FILE, key_ceremony, load_context
from privacy.he_packing import decrypt_mean, encrypt_update, slot_count, sum_encrypted

SIZE = 10_000  # more than one ciphertext of 4096 slots


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    key_ceremony(out)
    return load_context(out / INSTITUTION_FILE, "institution"), load_context(
        out / COORDINATOR_FILE, "coordinator"
    )


def _updates(n=3):
    rng = np.random.default_rng(0)
    return [rng.normal(scale=0.01, size=SIZE) for _ in range(n)], [120.0, 40.0, 840.0][:n]


def test_weighted_mean_under_encryption_matches_numpy(contexts):
    secret, public = contexts
    updates, weights = _updates()
    encrypted = [encrypt_update(public, u, w) for u, w in zip(updates, weights, strict=True)]
    assert len(encrypted[0]) == -(-(SIZE + 1) // slot_count(public))
    total = sum_encrypted(public, encrypted)  # the coordinator's part: public key only
    mean = decrypt_mean(secret, total, sum(weights), SIZE)
    expected = np.average(np.stack(updates), axis=0, weights=weights)
    assert np.abs(mean - expected).max() < 1e-7  # against update values of about 1e-2


def test_the_coordinator_cannot_decrypt_the_sum(contexts):
    _, public = contexts
    updates, weights = _updates()
    total = sum_encrypted(
        public, [encrypt_update(public, u, w) for u, w in zip(updates, weights, strict=True)]
    )
    with pytest.raises(ValueError, match="secret_key"):
        ts.ckks_vector_from(public, total[0]).decrypt()


def test_truncated_or_tampered_ciphertexts_are_rejected(contexts):
    _, public = contexts
    good = encrypt_update(public, np.ones(SIZE), 1.0)
    truncated = [good[0][: len(good[0]) // 2], *good[1:]]
    with pytest.raises(AidmpError, match="update 2, chunk 0: ciphertext is truncated or tampered"):
        sum_encrypted(public, [good, truncated])
    flipped = bytearray(good[1])
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(AidmpError, match="truncated or tampered"):
        sum_encrypted(public, [good, [good[0], bytes(flipped), *good[2:]]])


def test_a_sum_under_other_keys_fails_the_check_slot(contexts, tmp_path):
    secret, _ = contexts
    key_ceremony(tmp_path)
    stranger = load_context(tmp_path / COORDINATOR_FILE, "coordinator")
    total = sum_encrypted(stranger, [encrypt_update(stranger, np.ones(SIZE), 2.0)])
    with pytest.raises(AidmpError, match="other keys or altered"):
        decrypt_mean(secret, total, 2.0, SIZE)


def test_a_wrong_announced_total_is_caught(contexts):
    secret, public = contexts
    total = sum_encrypted(public, [encrypt_update(public, np.ones(SIZE), 5.0)])
    assert decrypt_mean(secret, total, 5.0, SIZE) == pytest.approx(np.ones(SIZE), abs=1e-6)
    with pytest.raises(AidmpError, match="not the announced total weight 6"):
        decrypt_mean(secret, total, 6.0, SIZE)


def test_updates_of_different_shapes_are_refused(contexts):
    _, public = contexts
    with pytest.raises(AidmpError, match="another model"):
        sum_encrypted(public, [encrypt_update(public, np.ones(SIZE), 1.0),
                               encrypt_update(public, np.ones(100), 1.0)])  # fmt: skip
