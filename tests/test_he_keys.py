"""The CKKS key ceremony: the coordinator's file cannot decrypt; each side checks its key."""

import os

import pytest
import tenseal as ts

from aidmp.errors import AidmpError
from aidmp.privacy.he.keys import (
    COORDINATOR_FILE,
    FINGERPRINT_FILE,
    INSTITUTION_FILE,
    CkksParams,
    fingerprint,
    inspect_key_file,
    key_ceremony,
    load_context,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    return out, key_ceremony(out)


def test_coordinator_file_cannot_decrypt(keys):
    out, _ = keys
    coordinator = load_context(out / COORDINATOR_FILE, "coordinator")
    institution = load_context(out / INSTITUTION_FILE, "institution")
    assert not coordinator.is_private() and institution.is_private()
    vector = ts.ckks_vector(coordinator, [0.25, -1.5, 3.0])  # anyone may encrypt
    with pytest.raises(ValueError, match="secret_key"):
        vector.decrypt()
    back = ts.ckks_vector_from(institution, vector.serialize()).decrypt()
    assert back == pytest.approx([0.25, -1.5, 3.0], abs=1e-3)  # CKKS at scale 2^25


def test_both_sides_recompute_the_same_fingerprint(keys):
    out, fp = keys
    assert (out / FINGERPRINT_FILE).read_text().strip() == fp
    assert fingerprint(load_context(out / INSTITUTION_FILE, "institution")) == fp
    assert fingerprint(load_context(out / COORDINATOR_FILE, "coordinator")) == fp


def test_files_are_owner_only_and_hold_no_galois_keys(keys):
    out, _ = keys
    for name in (INSTITUTION_FILE, COORDINATOR_FILE):
        assert oct((out / name).stat().st_mode & 0o777) == "0o600"
        info = inspect_key_file(out / name)
        assert info["galois_keys"] is False and info["security"] == "128-bit"
        assert info["poly_modulus_degree"] == 4096 and info["coeff_mod_bit_sizes"] == [56, 53]
    assert inspect_key_file(out / INSTITUTION_FILE)["secret_key"] is True
    assert inspect_key_file(out / COORDINATOR_FILE)["secret_key"] is False


def test_each_side_refuses_the_wrong_key(keys):
    out, _ = keys
    with pytest.raises(AidmpError, match="holds a secret key; the coordinator"):
        load_context(out / INSTITUTION_FILE, "coordinator")
    with pytest.raises(AidmpError, match="no secret key"):
        load_context(out / COORDINATOR_FILE, "institution")


def test_loose_permissions_and_damaged_files_are_refused(tmp_path):
    key_ceremony(tmp_path)
    path = tmp_path / INSTITUTION_FILE
    os.chmod(path, 0o644)
    with pytest.raises(AidmpError, match="chmod 600"):
        load_context(path, "institution")
    os.chmod(path, 0o600)
    path.write_bytes(path.read_bytes()[:1000])
    os.chmod(path, 0o600)
    with pytest.raises(AidmpError, match="not a valid CKKS key file"):
        load_context(path, "institution")


def test_a_second_ceremony_will_not_overwrite_keys(keys):
    out, _ = keys
    with pytest.raises(AidmpError, match="already holds"):
        key_ceremony(out)


def test_insecure_parameters_are_refused(tmp_path):
    with pytest.raises(AidmpError, match="128-bit security only up to 109"):
        key_ceremony(tmp_path, CkksParams(4096, (60, 40, 40), 40))
