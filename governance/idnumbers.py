"""National identity numbers, each with its own shape and, where it has one, its checksum.

Reported together as the PII type `national_id`, with the kind in the finding's detail.
A column is judged kind by kind: the share of its sampled values that are valid numbers
of one kind (`best_kind`), never the share valid under any kind, so digits that pass one
check by chance here and another there do not add up.

| kind | number | check |
|---|---|---|
| gb_nino | UK National Insurance number, AB 12 34 56 C | letters allowed by HMRC; no check digit |
| gb_nhs | NHS number, 943 476 5919 | mod 11 (python-stdnum) |
| fr_nir | French social security number (NIR), 15 digits | mod 97 key (python-stdnum) |
| it_codice_fiscale | Italian fiscal code, 16 characters | check letter (python-stdnum) |
| nl_bsn | Dutch citizen service number (BSN), 9 digits | 11-test (python-stdnum) |
| br_cpf | Brazilian CPF, 123.456.789-09 or 11 digits | two mod 11 digits (python-stdnum) |
| es_nif | Spanish DNI / NIE / NIF | check letter (python-stdnum) |
| es_nuss | Spanish social security number (NUSS), 12 digits | mod 97 |
| in_aadhaar | Indian Aadhaar, 12 digits | Verhoeff (python-stdnum) |
| in_pan | Indian PAN, ABCPE1234F | shape and holder type (python-stdnum) |
| de_idnr | German tax ID (Steuer-IdNr), 11 digits | ISO 7064 mod 11,10 (python-stdnum) |
| jp_my_number | Japanese individual number, 12 digits | check digit (python-stdnum) |

US SSNs and PRC resident IDs keep their own types (`us_ssn`, `cn_resident_id`) in
governance/pii.py. A candidate is first picked by a vectorised regular expression on the
compacted value (spaces, dots, dashes and slashes removed); only candidates are checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from stdnum.br import cpf
from stdnum.de import idnr
from stdnum.es import nif
from stdnum.fr import nir
from stdnum.gb import nhs
from stdnum.in_ import aadhaar, pan
from stdnum.it import codicefiscale
from stdnum.jp import in_ as jp_in
from stdnum.nl import bsn

# Characters removed before a candidate is matched and checked.
SEPARATORS_RE = r"[ ./-]"

# HMRC: the first letter is not D, F, I, Q, U or V; the second not D, F, I, O, Q, U or V;
# BG, GB, KN, NK, NT and TN are never issued. ZZ is the administrative prefix used in
# records for a number not yet known (and by test data); it is accepted with any
# final letter, the others need A-D.
_NINO = re.compile(r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z][0-9]{6}[A-D]|ZZ[0-9]{6}[A-Z]")
_NINO_NEVER = frozenset({"BG", "GB", "KN", "NK", "NT", "TN"})


def gb_nino_valid(value: str) -> bool:
    compact = re.sub(SEPARATORS_RE, "", value).upper()
    return bool(_NINO.fullmatch(compact)) and compact[:2] not in _NINO_NEVER


def es_nuss_valid(value: str) -> bool:
    """NUSS: 2-digit province (01-53, or 66), 8-digit number, 2 control digits: the first
    ten digits mod 97; for a number under 10^7, province * 10^7 + number mod 97 (the
    Seguridad Social's rule; generators often use the first reading for every number,
    so either is accepted there)."""
    compact = re.sub(SEPARATORS_RE, "", value)
    if len(compact) != 12 or not (compact.isascii() and compact.isdigit()):
        return False
    province, number, control = compact[:2], compact[2:10], int(compact[10:])
    if not ("01" <= province <= "53" or province == "66"):
        return False
    if control == int(province + number) % 97:
        return True
    return int(number) < 10**7 and control == (int(province) * 10**7 + int(number)) % 97


def _stdnum(module: object) -> Callable[[str], bool]:
    is_valid = module.is_valid  # type: ignore[attr-defined]

    def check(value: str) -> bool:
        try:
            return bool(is_valid(value))
        except Exception:  # a validator must never stop the scan
            return False

    return check


def _nir_valid(value: str) -> bool:
    compact = re.sub(SEPARATORS_RE, "", value).upper()
    return len(compact) == 15 and _stdnum(nir)(compact)


def _aadhaar_valid(value: str) -> bool:
    compact = re.sub(SEPARATORS_RE, "", value)
    return len(compact) == 12 and _stdnum(aadhaar)(compact)


# (kind, RE2-compatible full-match pattern on the compacted value, check). The pattern
# keeps Python work to the values that could be the kind.
KINDS: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("gb_nino", r"[A-Za-z]{2}[0-9]{6}[A-Za-z]", gb_nino_valid),
    ("gb_nhs", r"[0-9]{10}", _stdnum(nhs)),
    ("fr_nir", r"[12378][0-9]{4}(?:[0-9]{2}|2[ABab])[0-9]{8}", _nir_valid),
    (
        "it_codice_fiscale",
        r"[A-Za-z]{6}[0-9LMNP-Vlmnp-v]{2}[A-Za-z][0-9LMNP-Vlmnp-v]{2}"
        r"[A-Za-z][0-9LMNP-Vlmnp-v]{3}[A-Za-z]",
        _stdnum(codicefiscale),
    ),  # fmt: skip
    ("nl_bsn", r"[0-9]{9}", _stdnum(bsn)),
    ("br_cpf", r"[0-9]{11}", _stdnum(cpf)),
    ("es_nif", r"[0-9XYZKLMxyzklm][0-9]{7}[A-Za-z]", _stdnum(nif)),
    ("es_nuss", r"(?:0[1-9]|[1-4][0-9]|5[0-3]|66)[0-9]{10}", es_nuss_valid),
    ("in_aadhaar", r"[2-9][0-9]{11}", _aadhaar_valid),
    ("in_pan", r"[A-Za-z]{3}[ABCFGHJLPTabcfghjlpt][A-Za-z][0-9]{4}[A-Za-z]", _stdnum(pan)),
    ("de_idnr", r"[1-9][0-9]{10}", _stdnum(idnr)),
    ("jp_my_number", r"[0-9]{12}", _stdnum(jp_in)),
)
# Kinds whose numbers are plain digits, so they can sit in an integer column: the
# length to left-pad a number to (an integer loses leading zeros).
DIGIT_KINDS = {"gb_nhs": 10, "nl_bsn": 9, "br_cpf": 11, "es_nuss": 12, "in_aadhaar": 12,
               "de_idnr": 11, "jp_my_number": 12, "fr_nir": 15}  # fmt: skip
