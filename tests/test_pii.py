"""PII detection: validators, value patterns, column names, thresholds, sampling.

Every identifier here is made up or generated: card numbers and resident IDs are random
digits given a computed check character, IBANs are the standard documentation examples,
e-mail domains are example.com/example.org, phones use 555 numbers, IP addresses come from
the documentation ranges (192.0.2.0/24, 198.51.100.0/24, 2001:db8::/32).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from aidmp.governance.pii import (
    PII_TYPES,
    SAMPLE_HEAD,
    SAMPLE_SPREAD,
    PiiFinding,
    cn_resident_id_valid,
    detect_name,
    detect_values,
    iban_valid,
    luhn_valid,
    scan_column,
    scan_frame,
    us_ssn_valid,
)

# --- generators ---------------------------------------------------------------------------


def luhn_check_digit(payload: str) -> str:
    """The digit that makes `payload + digit` pass Luhn."""
    total = 0
    for position, char in enumerate(reversed(payload)):
        digit = int(char)
        if position % 2 == 0:  # doubled once the check digit is appended on the right
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


def make_card(rng: np.random.Generator, length: int = 16) -> str:
    payload = "4" + "".join(str(d) for d in rng.integers(0, 10, length - 2))
    return payload + luhn_check_digit(payload)


def break_last_digit(number: str) -> str:
    """Change the last digit: any change of one digit breaks Luhn and MOD 11-2."""
    last = number[-1]
    replacement = "0" if last in "9X" else str(int(last) + 1)
    return number[:-1] + replacement


CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def cn_check_char(first17: str) -> str:
    return "10X98765432"[sum(int(c) * w for c, w in zip(first17, CN_WEIGHTS, strict=True)) % 11]


def make_cn_id(birth: str, sequence: int, region: str = "110101") -> str:
    first17 = f"{region}{birth}{sequence:03d}"
    return first17 + cn_check_char(first17)


def cn_id_with_x() -> str:
    for sequence in range(1000):
        candidate = make_cn_id("19850714", sequence)
        if candidate.endswith("X"):
            return candidate
    raise AssertionError("no sequence gives an X check character")


def make_cn_ids(rng: np.random.Generator, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        birth = dt.date(1940, 1, 1) + dt.timedelta(days=int(rng.integers(0, 25_000)))
        ids.append(make_cn_id(birth.strftime("%Y%m%d"), int(rng.integers(0, 1000))))
    return ids


def make_ssns(rng: np.random.Generator, count: int) -> list[str]:
    areas = rng.integers(1, 900, count)
    areas[areas == 666] = 667
    groups = rng.integers(1, 100, count)
    serials = rng.integers(1, 10_000, count)
    return [f"{a:03d}-{g:02d}-{s:04d}" for a, g, s in zip(areas, groups, serials, strict=True)]


def make_emails(count: int) -> list[str]:
    return [f"person.{i}@example.{'com' if i % 2 else 'org'}" for i in range(count)]


def make_birth_dates(rng: np.random.Generator, count: int) -> list[str]:
    start = dt.date(1935, 1, 1)
    return [(start + dt.timedelta(days=int(d))).isoformat() for d in rng.integers(0, 30_000, count)]


def make_recent_dates(rng: np.random.Generator, count: int) -> list[str]:
    today = dt.date.today()
    return [(today - dt.timedelta(days=int(d))).isoformat() for d in rng.integers(0, 700, count)]


def types(findings: list[PiiFinding]) -> list[str]:
    return [finding.pii_type for finding in findings]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


# --- credit cards -------------------------------------------------------------------------


def test_luhn_valid_generated_cards_and_a_changed_last_digit(rng):
    for length in (13, 15, 16, 19):
        card = make_card(rng, length)
        assert luhn_valid(card)
        assert not luhn_valid(break_last_digit(card))
    card = make_card(rng)
    assert luhn_valid(f"{card[:4]} {card[4:8]} {card[8:12]} {card[12:]}")
    assert luhn_valid(f"{card[:4]}-{card[4:8]}-{card[8:12]}-{card[12:]}")


def test_luhn_rejects_wrong_lengths_and_non_digits():
    assert not luhn_valid("0" * 12)  # passes the sum, too short
    assert not luhn_valid("0" * 20)
    assert not luhn_valid("4000 0000 0000 000a")
    assert not luhn_valid("")
    assert not luhn_valid("\uff14" * 16)  # full-width digits are not ASCII digits


def test_card_column_tagged_and_broken_cards_not(rng):
    cards = [make_card(rng) for _ in range(300)]
    found = detect_values(pd.Series(cards, name="c"))
    assert types(found) == ["credit_card"]
    assert found[0].match_rate == 1.0
    assert found[0].sampled == 300
    broken = [break_last_digit(card) for card in cards]
    assert detect_values(pd.Series(broken, name="c")) == []


def test_card_numbers_in_an_integer_column_are_cards(rng):
    cards = pd.Series([int(make_card(rng)) for _ in range(200)], dtype="int64", name="n")
    assert types(detect_values(cards)) == ["credit_card"]


def test_card_numbers_in_a_float_column_are_checked_as_whole_numbers(rng):
    # 15 digits: exact in a float64. Fractions never match.
    cards = pd.Series([float(make_card(rng, 15)) for _ in range(100)], name="n")
    assert types(detect_values(cards)) == ["credit_card"]
    assert detect_values(cards + 0.5) == []


def test_random_16_digit_numbers_are_not_cards(rng):
    # About one in ten passes Luhn by chance: far below the threshold.
    numbers = ["4" + "".join(str(d) for d in rng.integers(0, 10, 15)) for _ in range(500)]
    assert "credit_card" not in types(detect_values(pd.Series(numbers, name="n")))


# --- Chinese resident IDs -----------------------------------------------------------------


def test_cn_resident_id_valid_generated_and_with_x():
    plain = make_cn_id("19900101", 123)
    with_x = cn_id_with_x()
    assert with_x.endswith("X")
    assert cn_resident_id_valid(plain)
    assert cn_resident_id_valid(with_x)
    assert cn_resident_id_valid(with_x.lower())  # a lower-case x is read as X


def test_cn_resident_id_rejects_wrong_check_and_impossible_birth_date():
    assert not cn_resident_id_valid(break_last_digit(make_cn_id("19900101", 123)))
    assert not cn_resident_id_valid(break_last_digit(cn_id_with_x()))
    # Right check character, but 30 February is no birth date.
    assert not cn_resident_id_valid(make_cn_id("19900230", 5))
    assert not cn_resident_id_valid(make_cn_id("19900101", 123)[:17])
    assert not cn_resident_id_valid("A" + make_cn_id("19900101", 123)[1:])


def test_cn_id_column_tagged_and_wrong_checks_not(rng):
    ids = make_cn_ids(rng, 300)
    found = detect_values(pd.Series(ids, name="x"))
    assert types(found) == ["cn_resident_id"]
    wrong = [break_last_digit(value) for value in ids]
    assert detect_values(pd.Series(wrong, name="x")) == []


def test_cn_ids_in_an_integer_column_are_ids(rng):
    ids = [value for value in make_cn_ids(rng, 400) if not value.endswith("X")]
    assert types(detect_values(pd.Series([int(v) for v in ids], dtype="int64"))) == [
        "cn_resident_id"
    ]


# --- IBAN ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iban",
    ["GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432", "DE89370400440532013000"],
)
def test_iban_valid(iban):
    assert iban_valid(iban)
    assert iban_valid(iban.lower())


@pytest.mark.parametrize(
    "iban",
    [
        "GB83 WEST 1234 5698 7654 32",  # altered check digits
        "DE88370400440532013000",
        "DE89370400440532013001",  # altered account number
        "DE8937040044",  # too short
        "1289370400440532013000",  # no country code
        "not an iban",
    ],
)
def test_iban_invalid(iban):
    assert not iban_valid(iban)


def test_iban_column_tagged():
    column = pd.Series(["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"] * 10)
    assert types(detect_values(column)) == ["iban"]
    altered = pd.Series(["GB83 WEST 1234 5698 7654 32", "DE88370400440532013000"] * 10)
    assert detect_values(altered) == []


# --- US SSN -------------------------------------------------------------------------------


@pytest.mark.parametrize("ssn", ["123-45-6789", "123456789", "899-99-9999", "001-01-0001"])
def test_us_ssn_valid(ssn):
    assert us_ssn_valid(ssn)


@pytest.mark.parametrize(
    "ssn",
    [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "987-65-4321",
        "123-00-4567",
        "123-45-0000",
        "12-345-6789",
        "123-456789",
        "12345678",
    ],
)
def test_us_ssn_invalid(ssn):
    assert not us_ssn_valid(ssn)


def test_ssn_column_tagged_but_not_a_nine_digit_integer_column(rng):
    ssns = make_ssns(rng, 300)
    found = detect_values(pd.Series(ssns, name="x"))
    assert types(found) == ["us_ssn"]  # and not a phone: the dashed SSN shape is excluded
    digits = pd.Series([int(s.replace("-", "")) for s in ssns], dtype="int64", name="x")
    assert detect_values(digits) == []


def test_ssn_column_of_invalid_areas_not_tagged(rng):
    areas = ["000", "666", "912"] * 100
    bad = [f"{area}-{s[4:]}" for area, s in zip(areas, make_ssns(rng, 300), strict=True)]
    assert detect_values(pd.Series(bad)) == []


# --- IP addresses -------------------------------------------------------------------------


def test_ip_addresses_tagged():
    column = pd.Series(
        ["192.0.2.1", "198.51.100.255", "0.0.0.0", "255.255.255.255", "2001:db8::1", "::1"] * 5
    )
    found = detect_values(column)
    assert types(found) == ["ip_address"]


def test_out_of_range_octets_and_look_alikes_not_ip():
    column = pd.Series(["999.1.1.1", "256.0.0.1", "1.2.3", "12:30:45", "00:1a:2b:3c:4d:5e"] * 5)
    assert detect_values(column) == []


# --- e-mail -------------------------------------------------------------------------------


def test_emails_tagged_and_text_not():
    assert types(detect_values(pd.Series(make_emails(100)))) == ["email"]
    others = pd.Series(["not an email", "a@b", "@example.com", "x@@example.com", "hi there"] * 9)
    assert detect_values(others) == []


# --- phones -------------------------------------------------------------------------------


def test_phone_formats_tagged():
    # 555-01xx are the NANP numbers kept for fiction; libphonenumber takes them as valid.
    column = pd.Series(
        [
            "(202) 555-0143",
            "202-555-0143",
            "202.555.0143",
            "+1 (202) 555-0143",
            "+44 20 7946 0958",
            "+12025550143",
            "2025550143",  # 10 digits in a string column
            "020 7946 0958",
        ]
    )
    found = detect_values(column, regions=("US", "GB"))
    assert types(found) == ["phone"]
    assert found[0].match_rate == 1.0


def test_ages_counts_and_prices_are_not_phones(rng):
    ages = pd.Series(rng.integers(0, 100, 1000), name="age")
    assert detect_values(ages) == []
    # Numbers are never phones, even with 10 digits.
    big = pd.Series(rng.integers(5_550_000_000, 5_559_999_999, 1000), name="n")
    assert detect_values(big) == []
    prices = pd.Series(rng.uniform(0, 1000, 1000).round(2), name="price")
    assert detect_values(prices) == []
    assert detect_values(ages.astype(str)) == []  # short digit strings either


def test_date_and_number_strings_are_not_phones():
    column = pd.Series(["2023-01-15", "15/01/2023", "1234.5678", "12.345.678", "123456789"] * 5)
    assert "phone" not in types(detect_values(column))


# --- date of birth ------------------------------------------------------------------------


def test_birth_dates_named_dob_tagged(rng):
    found = detect_values(pd.Series(make_birth_dates(rng, 300), name="dob"))
    assert types(found) == ["date_of_birth"]
    other_formats = [
        dt.date.fromisoformat(d).strftime(f)
        for d, f in zip(
            make_birth_dates(rng, 300), ["%d/%m/%Y", "%m/%d/%Y", "%Y/%m/%d"] * 100, strict=True
        )
    ]
    assert types(detect_values(pd.Series(other_formats, name="BirthDate"))) == ["date_of_birth"]


def test_created_at_dates_are_not_birth_dates(rng):
    column = pd.Series(make_recent_dates(rng, 300), name="created_at")
    assert detect_values(column) == []
    assert scan_column(column, "created_at") == []
    # Old dates either: without a birth or "date" token the name rules it out.
    assert detect_values(pd.Series(make_birth_dates(rng, 300), name="created_at")) == []


def test_date_named_column_needs_birth_like_spread(rng):
    # A "date" token is enough only when the dates spread over decades like birth dates.
    assert types(detect_values(pd.Series(make_birth_dates(rng, 300), name="date"))) == [
        "date_of_birth"
    ]
    assert detect_values(pd.Series(make_recent_dates(rng, 300), name="visit_date")) == []


def test_birth_named_column_with_future_dates_not_tagged():
    future = [(dt.date.today() + dt.timedelta(days=30 + i)).isoformat() for i in range(50)]
    assert detect_values(pd.Series(future, name="dob")) == []
    assert detect_values(pd.Series(["1850-01-01"] * 50, name="dob")) == []


def test_datetime_dtype_birth_column_tagged(rng):
    column = pd.Series(pd.to_datetime(make_birth_dates(rng, 200)), name="date_of_birth")
    assert types(detect_values(column)) == ["date_of_birth"]
    recent = pd.Series(pd.to_datetime(make_recent_dates(rng, 200)), name="created_at")
    assert detect_values(recent) == []


# --- column names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("email", "email"),
        ("E_Mail", "email"),
        ("e-mail", "email"),
        ("contactEmail", "email"),
        ("mail", "email"),
        ("phone", "phone"),
        ("Tel", "phone"),
        ("mobile_number", "phone"),
        ("telephone", "phone"),
        ("SSN", "us_ssn"),
        ("social_security_number", "us_ssn"),
        ("dob", "date_of_birth"),
        ("birth_date", "date_of_birth"),
        ("date_of_birth", "date_of_birth"),
        ("dateOfBirth", "date_of_birth"),
        ("birthdate", "date_of_birth"),
        ("IBAN", "iban"),
        ("card", "credit_card"),
        ("credit_card", "credit_card"),
        ("cc_number", "credit_card"),
        ("ip", "ip_address"),
        ("ip_address", "ip_address"),
        ("IPAddress", "ip_address"),
        ("client_ipv4", "ip_address"),
        ("name", "name"),
        ("first_name", "name"),
        ("lastName", "name"),
        ("surname", "name"),
        ("full_name", "name"),
        ("patient_name", "name"),
        ("zip", "postcode"),
        ("zipcode", "postcode"),
        ("ZIPCode", "postcode"),
        ("postcode", "postcode"),
        ("postal_code", "postcode"),
        ("id_card", "cn_resident_id"),
        ("resident_id", "cn_resident_id"),
        ("national_id", "cn_resident_id"),
        ("shenfenzheng", "cn_resident_id"),
    ],
)
def test_detect_name_hits(column, expected):
    found = detect_name(column)
    assert expected in types(found)
    assert all(f.source == "name" and f.match_rate == 0.0 and f.sampled == 0 for f in found)
    assert all(f.column == column for f in found)


@pytest.mark.parametrize(
    "column",
    [
        "ship_date",  # contains "ip" but no ip token
        "zipper",
        "username",  # an account identifier, not a person's name
        "user_name",
        "file_name",
        "product_name",
        "hostname",
        "recipient",
        "hotel",
        "updated_at",
        "age",
        "created_at",
        "birth_place",
    ],
)
def test_detect_name_negatives(column):
    assert detect_name(column) == []


def test_id_card_is_not_a_credit_card():
    assert types(detect_name("id_card")) == ["cn_resident_id"]


# --- scanning, thresholds, sampling -------------------------------------------------------


def test_scan_frame_mixed_columns(rng):
    n = 400
    df = pd.DataFrame(
        {
            "age": rng.integers(18, 90, n),
            "income": rng.normal(50_000, 10_000, n),
            "sex": pd.Categorical(rng.choice(["f", "m"], n)),
            "contact": make_emails(n),
            "phone": [f"(202) 555-{i:04d}" for i in range(n)],
            "card": [make_card(rng) for _ in range(n)],
            "dob": make_birth_dates(rng, n),
            "created_at": make_recent_dates(rng, n),
            "first_name": rng.choice(["Ada", "Alan", "Grace"], n),
            "zip": rng.integers(10_000, 99_999, n),
            "notes": ["made up note"] * n,
            "flag": rng.integers(0, 2, n).astype(bool),
        }
    )
    result = scan_frame(df, regions=["US"])
    assert set(result) == {"contact", "phone", "card", "dob", "first_name", "zip"}
    assert [(f.pii_type, f.source) for f in result["contact"]] == [("email", "values")]
    assert [(f.pii_type, f.source) for f in result["phone"]] == [("phone", "values")]
    assert [(f.pii_type, f.source) for f in result["card"]] == [("credit_card", "values")]
    assert [(f.pii_type, f.source) for f in result["dob"]] == [("date_of_birth", "values")]
    # Three distinct first names: too few to judge by values; the column name says it.
    assert [(f.pii_type, f.source) for f in result["first_name"]] == [("name", "name")]
    assert [(f.pii_type, f.source) for f in result["zip"]] == [("postcode", "name")]


def test_scan_column_values_first_then_name_for_other_types():
    column = pd.Series(make_emails(50))
    found = scan_column(column, "email")  # both say email: reported once, by values
    assert [(f.pii_type, f.source) for f in found] == [("email", "values")]
    found = scan_column(column, "phone")  # values say email, the name says phone
    assert [(f.pii_type, f.source) for f in found] == [("email", "values"), ("phone", "name")]
    assert found[1].match_rate == 0.0


def test_threshold_half_emails():
    column = pd.Series(make_emails(50) + ["not an email"] * 50, name="x")
    assert detect_values(column) == []
    found = detect_values(column, threshold=0.5)
    assert types(found) == ["email"]
    assert found[0].match_rate == 0.5
    assert found[0].sampled == 100


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_threshold_out_of_range_rejected(threshold):
    with pytest.raises(ValueError, match="threshold"):
        detect_values(pd.Series(["x"]), threshold=threshold)


def test_sample_is_bounded_and_deterministic():
    values = make_emails(20_000)
    values[-1] = "late.entry@example.com"
    column = pd.Series(values, name="x")
    first = detect_values(column)
    assert first == detect_values(column)
    assert first[0].sampled == SAMPLE_HEAD + SAMPLE_SPREAD


def test_sample_reaches_the_tail():
    # Emails only after the first 2,500: the evenly spaced part of the sample sees them.
    column = pd.Series(["not an email"] * SAMPLE_HEAD + make_emails(50_000), name="x")
    found = detect_values(column, threshold=0.5)
    assert types(found) == ["email"]
    assert found[0].match_rate == pytest.approx(SAMPLE_SPREAD / (SAMPLE_HEAD + SAMPLE_SPREAD))


def test_nulls_and_blanks_count_as_missing():
    column = pd.Series(make_emails(40) + [None] * 30 + ["", "  "] * 15, name="x")
    found = detect_values(column)
    assert types(found) == ["email"]
    assert found[0].sampled == 40
    assert detect_values(pd.Series([None, None], dtype=object)) == []
    assert detect_values(pd.Series([], dtype="str")) == []


def test_duplicate_index_labels_are_fine(rng):
    column = pd.Series(make_birth_dates(rng, 100), index=[0, 1] * 50, name="dob")
    assert types(detect_values(column)) == ["date_of_birth"]
    frame = pd.DataFrame({"email": make_emails(100)}, index=[7] * 100)
    assert list(scan_frame(frame)) == ["email"]


def test_booleans_and_small_categoricals_skipped():
    assert detect_values(pd.Series([True, False] * 50)) == []
    few = pd.Series(pd.Categorical(make_emails(10) * 10), name="x")
    assert detect_values(few) == []
    many = pd.Series(pd.Categorical(make_emails(200)), name="x")
    assert types(detect_values(many)) == ["email"]


def test_finding_is_frozen_and_types_known():
    finding = detect_name("email")[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.pii_type = "phone"  # type: ignore[misc]
    assert finding.pii_type in PII_TYPES
