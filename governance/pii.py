"""Personal identifiers in tabular columns, found by value patterns and by column names.

Run before every federated round, on up to about 1M rows x 20 columns, so it must cost
milliseconds per column, not seconds. The approach:

1. Sampling. A column is never scanned in full. Classification looks at a deterministic
   sample of its non-null values: all of them when there are at most 5,000; otherwise the
   first 2,500 plus 2,500 evenly spaced over the rest (`SAMPLE_HEAD`, `SAMPLE_SPREAD`).
   The head catches what a reader sees first; the even spread reaches the tail of a file
   sorted or grouped by source. Blank strings in the sample count as missing, so a column
   that is half empty and half e-mail addresses is still an e-mail column. The same
   column always gives the same sample, so the answer is reproducible.
2. Distinct values. The sample is reduced to its distinct values and their counts; every
   test runs once per distinct value and counts with its weight. Python-level checks
   (checksums, libphonenumber, the name lexicon) look at no more than `VALIDATE_MAX`
   distinct candidates, evenly spread, and extrapolate: the cost of a column does not
   grow with its rows.
3. Regex, then checksum. Every type's shape is tested with vectorised pandas `.str`
   regular expressions on the distinct values at once (pyarrow's RE2 when the column
   holds pyarrow strings, so the patterns use no look-around or back-references). The
   validation (Luhn, IBAN mod-97, MOD 11-2, national ID checksums, libphonenumber, the
   name lexicon) runs only on the values that matched, and is skipped when the
   candidates alone could not reach the threshold.
4. Rate and threshold. `match_rate` is the share of sampled non-null values that are
   valid instances; a type is reported when `match_rate >= threshold` (the policy's
   `detection.threshold`, 0.8 by default; `name_threshold` for names,
   `free_text_threshold` for identifiers inside free text).

What is looked at, by dtype:

- string/object columns (and categoricals with more than `MAX_SKIPPED_CATEGORIES`
  categories, through their categories' dtype): every type below;
- integer columns, and float columns holding whole numbers: credit_card,
  cn_resident_id, national_id (the all-digit kinds, left-padded), phone (only numbers
  valid in the site's regions, or valid international numbers without their "+") and
  date_of_birth (YYYYMMDD). Never e-mail or SSN: ages, counts and prices would be false
  hits;
- datetime columns: date_of_birth only;
- booleans, categoricals with few categories and other dtypes: no value detection.

The types:

- email; iban (mod 97); ip_address (IPv4 only when the column's addresses are not all
  small numbers: "2.12.5.16" is a version string; IPv6 by `ipaddress`);
- credit_card: 12 to 19 digits, Luhn, and an issuer's leading digit (2-6; 12 digits only
  for Maestro, 50 and 56-69);
- phone: governance/phones.py (libphonenumber with the site's regions);
- us_ssn: NNN-NN-NNNN (or spaced) with valid area, group and serial; nine bare digits
  only under an SSN-like column name, since invoice numbers look the same;
- cn_resident_id (MOD 11-2 and the birth date); national_id: UK NINO and NHS, French
  NIR, Italian codice fiscale, Dutch BSN, Brazilian CPF, Spanish DNI/NIE and NUSS, Indian
  Aadhaar and PAN, German Steuer-IdNr, Japanese My Number (governance/idnumbers.py);
- date_of_birth: ISO, day- or month-first, YYYYMMDD, "30 August 1992", "Aug 30, 1992",
  "30 de agosto de 1992", "1992年8月30日" (see `_dob_rate` for when dates are births);
- address: street addresses, one line or several (governance/textscan.py);
- name: people's names, by a lexicon, decided per column (governance/names.py);
- free_text: prose holding identifiers (governance/textscan.py); the policy's action
  masks them (`mask`) or drops the column.

`postcode` is found by column name only: postcodes look like any short number. Column-
name hints are matched on tokens (split on non-alphanumerics and camelCase), never on
substrings, so "ship_date" is no IP address, "zipper" no postcode and "username" is an
identifier but not a person's name (see `detect_name`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
from pandas.api import types as ptypes
from stdnum import isbn

from aidmp.governance import idnumbers, names, phones, textscan

PII_TYPES = (
    "email",
    "phone",
    "credit_card",
    "iban",
    "ip_address",
    "us_ssn",
    "cn_resident_id",
    "national_id",
    "date_of_birth",
    "address",
    "name",
    "free_text",
    "postcode",
)

SAMPLE_HEAD = 2_500  # first non-null values always examined
SAMPLE_SPREAD = 2_500  # evenly spaced non-null values examined after the head
# A categorical with this many categories or fewer is a code list (sex, region, grade),
# not a column of identifiers: no value detection.
MAX_SKIPPED_CATEGORIES = 50
# Distinct candidates given to a Python-level check per column and type (evenly spread).
VALIDATE_MAX = 400
PHONE_VALIDATE_MAX = 250  # libphonenumber: about 0.1 ms a value
EARLY_STOP_MARGIN = 0.25  # see `_phone_share`
MAX_SCAN_CHARS = 2_000
# A name column has at least this many distinct values (or one for every second row).
NAME_MIN_DISTINCT = 20
# Phones written with a country code reveal a site's regions when its policy names none.
REGION_MIN_SHARE = 0.1
MAX_INFERRED_REGIONS = 5

# date_of_birth by values (see `_dob_rate`).
_EARLIEST_BIRTH = pd.Timestamp("1900-01-01")
_MAX_AGE_YEARS = 120.0
_AGE_PLAUSIBLE_SHARE = 0.8  # share of dates that must imply an age within 0..120 years
# Birth dates spread over decades; transaction, visit or shipping dates cluster in
# recent years. Without a birth-like name the 10th-90th percentile of implied ages must
# span at least this many years.
_MIN_BIRTH_SPREAD_YEARS = 10.0
# ... and the median implied age must be at least this: events (records, visits, orders)
# are mostly recent.
_MIN_MEDIAN_AGE_YEARS = 15.0
_DAYS_PER_YEAR = 365.2425


@dataclass(frozen=True)
class PiiFinding:
    """One personal-identifier type found in one column."""

    column: str
    pii_type: str  # one of PII_TYPES
    source: str  # "values" or "name"
    match_rate: float  # valid share of the sampled non-null values; 0.0 for name hits
    sampled: int  # values examined; 0 for name hits
    # national_id: the kind (fr_nir...); free_text: the embedded types; phone: regions
    detail: str = ""


# --- checksums and validators -------------------------------------------------------------
# Patterns use [0-9], not \d: Python's \d also matches other scripts' digits.

_LUHN_PLAIN = {str(d): d for d in range(10)}
_LUHN_DOUBLED = {str(d): 2 * d if d < 5 else 2 * d - 9 for d in range(10)}
_MAESTRO_12 = re.compile(r"50|5[6-9]|6")
_IBAN_COMPACT = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")  # 15..34 characters
_CN_ID = re.compile(r"[0-9]{17}[0-9X]")
_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK = "10X98765432"
_SSN = re.compile(r"([0-9]{3})-([0-9]{2})-([0-9]{4})|([0-9]{3})([0-9]{2})([0-9]{4})")


def luhn_valid(number: str) -> bool:
    """True when `number` (spaces and dashes ignored) is a payment card number: 12..19
    digits passing Luhn, starting with an issuer's digit (2-6: Mastercard, Amex, JCB,
    Diners, Visa, Discover, UnionPay, Maestro); 12 digits only as Maestro (50, 56-69)."""
    if not isinstance(number, str):
        return False
    digits = number.strip().replace(" ", "").replace("-", "")
    # isascii() first: str.isdigit() alone also accepts other scripts' digits and "²".
    if not (12 <= len(digits) <= 19 and digits.isascii() and digits.isdigit()):
        return False
    if digits[0] not in "23456" or (len(digits) == 12 and not _MAESTRO_12.match(digits)):
        return False
    # From the right: odd positions count as they are, even ones doubled (minus 9 past 9).
    # Plain loops over lookup tables: this runs on every candidate, about 2 µs each.
    total = 0
    for char in digits[-1::-2]:
        total += _LUHN_PLAIN[char]
    for char in digits[-2::-2]:
        total += _LUHN_DOUBLED[char]
    return total % 10 == 0


def iban_valid(value: str) -> bool:
    """ISO 13616: country code, 2 check digits, 11..30 alphanumerics; mod 97 == 1.

    Spaces are allowed anywhere; letters are accepted in either case (data entry often
    lower-cases them) and compared upper-cased.
    """
    if not isinstance(value, str):
        return False
    compact = value.replace(" ", "").upper()
    if not _IBAN_COMPACT.fullmatch(compact):
        return False
    # Move the country code and check digits to the end, letters become 10..35.
    rearranged = compact[4:] + compact[:4]
    numeric = "".join(str(int(char, 36)) for char in rearranged)
    return int(numeric) % 97 == 1


def cn_resident_id_valid(value: str) -> bool:
    """18-character PRC resident ID: ISO 7064 MOD 11-2 check character, real birth date.

    A lower-case 'x' check character is accepted as 'X'.
    """
    if not isinstance(value, str):
        return False
    candidate = value.strip().upper()
    if not _CN_ID.fullmatch(candidate):
        return False
    total = sum(int(char) * weight for char, weight in zip(candidate, _CN_WEIGHTS, strict=False))
    if _CN_CHECK[total % 11] != candidate[17]:
        return False
    try:  # positions 7-14 (1-based) are the birth date, YYYYMMDD
        dt.date(int(candidate[6:10]), int(candidate[10:12]), int(candidate[12:14]))
    except ValueError:
        return False
    return True


def us_ssn_valid(value: str) -> bool:
    """NNN-NN-NNNN or 9 digits; area not 000, 666 or 900-999, group not 00, serial not 0000."""
    if not isinstance(value, str):
        return False
    match = _SSN.fullmatch(value.strip())
    if match is None:
        return False
    area, group, serial = (part for part in match.groups() if part is not None)
    if area in ("000", "666") or area[0] == "9":
        return False
    return group != "00" and serial != "0000"


def _ipv6_valid(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


# --- value patterns (RE2- and Python-compatible) ------------------------------------------

_EMAIL_RE = (
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4_RE = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV6_CANDIDATE_RE = r"[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*"  # then `ipaddress` decides
_CARD_CANDIDATE_RE = r"[2-6](?:[ -]?[0-9]){11,18}"  # then Luhn
_IBAN_CANDIDATE_RE = r"[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,30}"  # then mod 97
_SSN_CANDIDATE_RE = r"[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{9}"  # then area/group/serial
# By value alone an SSN is written with its dashes (or spaces): nine bare digits are as
# often an invoice or order number, and count only under an SSN-like column name.
_SSN_WRITTEN_RE = r"[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4}"
_SSN_NAME_TOKENS = frozenset({"ssn", "socialsecurity", "social"})
# An IPv4 column holds an octet of 100 or more in most values (a random address: 98%;
# 10.0.0.x, 192.168.x.y: most or all); "2.12.5.16" and "3.30.4.13" are versions.
_IPV4_BIG_OCTET_RE = r"(?:^|\.)[12][0-9]{2}(?:\.|$)"
_IPV4_BIG_SHARE = 0.5
_CN_ID_CANDIDATE_RE = r"[0-9]{17}[0-9Xx]"  # then MOD 11-2 and the birth date

# Phones. International: E.164 ("+" and 8-15 digits) or "+" country code with separated
# groups, e.g. "+44 20 7946 0958", "+1 (555) 123-4567". National: a parenthesised area
# code or at least three separated digit groups, e.g. "(555) 123-4567", "555-123-4567";
# a single separator is not enough, or "1234.5678" would be a phone. Plain digit strings
# count only with exactly 10-11 digits (and only in string columns).
_PHONE_INTL_RE = (
    r"\+[1-9][0-9]{7,14}"
    r"|\+[0-9]{1,3}(?:[ .-]?\([0-9]{1,5}\)[ .-]?[0-9]{1,8}|[ .-][0-9]{1,8})(?:[ .-][0-9]{1,8})*"
)
_PHONE_NATIONAL_RE = (
    r"\([0-9]{1,5}\)[ .-]?[0-9]{1,8}(?:[ .-][0-9]{1,8})*|[0-9]{1,8}(?:[ .-][0-9]{1,8}){2,}"
)
_PHONE_PLAIN_RE = r"[0-9]{10,11}"
# Shapes of other things that the national pattern would also accept: dates, dashed SSNs,
# dotted quads, dot-grouped thousands ("12.345.678").
_NOT_PHONE_RE = (
    r"[0-9]{4}[-/.][0-9]{1,2}[-/.][0-9]{1,2}|[0-9]{1,2}[-/.][0-9]{1,2}[-/.][0-9]{4}"
    r"|[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9]{1,3}(?:\.[0-9]{3}){2,}"
)
_PHONE_INTL_DIGITS = (8, 15)
_PHONE_NATIONAL_DIGITS = (8, 12)  # more is a card or account number, not a national phone

# Dates: ISO YYYY-MM-DD (optionally with a time, as pandas writes datetimes to CSV) and
# YYYY/MM/DD; DD/MM/YYYY and MM/DD/YYYY. "-", "/" and "." are accepted as separators.
# Then YYYYMMDD, and dates written with a month's name (see `_MONTHS`).
_YMD_RE = (
    r"[0-9]{4}[-/.][0-9]{1,2}[-/.][0-9]{1,2}"
    r"(?:[T ][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
)
_DMY_RE = r"[0-9]{1,2}[-/.][0-9]{1,2}[-/.][0-9]{4}"
_COMPACT_RE = r"(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
_MONTHS: dict[str, int] = {}
for _number, _words in enumerate(
    (
        "january jan januar jän janvier janv gennaio gen enero ene januari janeiro",
        "february feb februar février fevrier févr fevr febbraio febrero februari fevereiro fev",
        "march mar märz maerz mär mars marzo maart mrt março marco",
        "april apr avril avr aprile abril",
        "may mai maggio mag mayo mei maio",
        "june jun juni juin giugno giu junio junho",
        "july jul juli juillet juil luglio lug julio julho",
        "august aug août aout agosto ago augustus",
        "september sep sept septembre settembre set septiembre setiembre setembro",
        "october oct oktober okt octobre ottobre ott octubre outubro out",
        "november nov novembre noviembre novembro",
        "december dec dezember dez décembre decembre déc dicembre dic diciembre dezembro",
    ),
    start=1,
):
    _MONTHS.update(dict.fromkeys(_words.split(), _number))
# "30 August 1992", "30. August 1992", "30-Aug-1992", "30 de agosto de 1992", "1er mai 1990"
_DAY_MONTH_YEAR = re.compile(
    r"([0-9]{1,2})(?:st|nd|rd|th|er|º|°)?\.?[\s/-]*(?:de\s+)?([^\W\d_]{3,10})\.?,?[\s/-]*"
    r"(?:de\s+)?([0-9]{4})",
    re.IGNORECASE,
)
# "Aug 30, 1992", "August 30th 1992"
_MONTH_DAY_YEAR = re.compile(
    r"([^\W\d_]{3,10})\.?\s+([0-9]{1,2})(?:st|nd|rd|th)?,?\s+([0-9]{4})", re.IGNORECASE
)
_CJK_DATE = re.compile(r"([0-9]{4})\s*年\s*([0-9]{1,2})\s*月\s*([0-9]{1,2})\s*日")
_WORDED_DATE_RE = (
    r"[0-9]{1,2}[^0-9]*[0-9]{4}|[^\W\d_]{3,10}\.? [0-9]{1,2}[^0-9]*[0-9]{4}"
    r"|[0-9]{4} *年 *[0-9]{1,2} *月 *[0-9]{1,2} *日"
)


def _full(strings: pd.Series | pa.Array, pattern: str) -> np.ndarray:
    """Vectorised full match; the group keeps an alternation inside the anchors.

    Arrow's RE2 on the values at once (pandas' own `.str` re-parses every pattern with
    Python's parser on each call, which cost more than the matching); Python's `re` for
    the patterns whose classes must be Unicode-aware (\\w, \\W: month names with
    accents)."""
    array = strings if isinstance(strings, pa.Array) else _to_arrow(strings)
    if "\\w" in pattern or "\\W" in pattern:
        compiled = _compiled(pattern)
        return np.fromiter(
            (v is not None and compiled.fullmatch(v) is not None for v in array.to_pylist()),
            dtype=bool,
            count=len(array),
        )
    found = pc.match_substring_regex(array, f"^(?:{pattern})$")
    return found.fill_null(False).to_numpy(zero_copy_only=False)


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(f"(?:{pattern})")


def _to_arrow(strings: pd.Series) -> pa.Array:
    values = strings.to_numpy(dtype=object)
    return pa.array([v if isinstance(v, str) else None for v in values], type=pa.large_string())


def _checked_count(
    values: np.ndarray, candidates: np.ndarray, check: Callable[[str], bool], needed: float
) -> int:
    """How many regex candidates pass `check`; Python-level work on candidates only.

    When the candidates alone cannot reach `needed`, the candidate count (an upper bound,
    still below the threshold) is returned without validating anything.
    """
    count = int(candidates.sum())
    if count == 0 or count < needed:
        return count
    return sum(1 for value in values[candidates] if check(value))


def _phone_mask(strings: pd.Series) -> np.ndarray:
    digits = strings.str.count("[0-9]").to_numpy(dtype=np.int64, na_value=0)
    intl_digits = (digits >= _PHONE_INTL_DIGITS[0]) & (digits <= _PHONE_INTL_DIGITS[1])
    national_digits = (digits >= _PHONE_NATIONAL_DIGITS[0]) & (digits <= _PHONE_NATIONAL_DIGITS[1])
    intl = _full(strings, _PHONE_INTL_RE) & intl_digits
    national = _full(strings, _PHONE_NATIONAL_RE) & national_digits
    plain = _full(strings, _PHONE_PLAIN_RE)
    return (intl | national | plain) & ~_full(strings, _NOT_PHONE_RE)


def _parse_dates(strings: pd.Series) -> pd.Series:
    """Datetimes for the values in one of the accepted date formats, NaT elsewhere.

    The shapes are found by regex; only those values are parsed, with fixed formats
    (pandas' C parser, not `str.extract`, which runs Python's re value by value), and
    impossible dates such as 31/02 become NaT. Day-first is tried before month-first: a
    value valid either way is a date, and the choice moves an implied age by months.
    """
    parsed = np.full(len(strings), np.datetime64("NaT"), dtype="datetime64[us]")
    ymd = _full(strings, _YMD_RE)
    if ymd.any():
        day_part = strings[ymd].str.replace(r"[T ].*", "", regex=True)
        day_part = day_part.str.replace(r"[/.]", "-", regex=True)
        found = pd.to_datetime(day_part, format="%Y-%m-%d", errors="coerce")
        parsed[ymd] = found.to_numpy(dtype="datetime64[us]")
    dmy = _full(strings, _DMY_RE)
    if dmy.any():
        candidates = strings[dmy].str.replace(r"[-.]", "/", regex=True)
        day_first = pd.to_datetime(candidates, format="%d/%m/%Y", errors="coerce")
        month_first = pd.to_datetime(candidates, format="%m/%d/%Y", errors="coerce")
        found = day_first.fillna(month_first)
        parsed[dmy] = found.to_numpy(dtype="datetime64[us]")
    compact = _full(strings, _COMPACT_RE)
    if compact.any():
        found = pd.to_datetime(strings[compact], format="%Y%m%d", errors="coerce")
        parsed[compact] = found.to_numpy(dtype="datetime64[us]")
    worded = ~(ymd | dmy | compact) & _full(strings, _WORDED_DATE_RE)
    if worded.any():
        positions = np.flatnonzero(worded)
        values = strings.to_numpy(dtype=object)[positions]
        parts = [_worded_date(str(value)) for value in values]
        found = pd.to_datetime(
            pd.DataFrame([p or (0, 0, 0) for p in parts], columns=["year", "month", "day"]).replace(
                0, np.nan
            ),
            errors="coerce",
        )
        parsed[positions] = found.to_numpy(dtype="datetime64[us]")
    return pd.Series(parsed, index=strings.index)


def _worded_date(text: str) -> tuple[int, int, int] | None:
    """(year, month, day) of a date written with its month's name, or None."""
    text = text.strip()
    match = _DAY_MONTH_YEAR.fullmatch(text)
    if match:
        day, month_word, year = match.groups()
    else:
        match = _MONTH_DAY_YEAR.fullmatch(text)
        if match:
            month_word, day, year = match.groups()
        else:
            match = _CJK_DATE.fullmatch(text)
            if match is None:
                return None
            return int(match.group(1)), int(match.group(2)), int(match.group(3))
    month = _MONTHS.get(month_word.casefold())
    if month is None:
        return None
    return int(year), month, int(day)


def _name_tokens(column: str) -> list[tuple[str, ...]]:
    """Lower-case token sequences of a column name: camelCase split, and not split.

    Both, because camelCase splitting breaks "IPv4" into "I", "Pv", "4" while plain
    splitting leaves "dateOfBirth" whole.
    """
    chunks = [chunk for chunk in re.split(r"[^0-9A-Za-z]+", str(column)) if chunk]
    plain = tuple(chunk.lower() for chunk in chunks)
    camel = tuple(
        token.lower()
        for chunk in chunks
        for token in re.findall(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+", chunk)
    )
    return [plain] if camel == plain else [plain, camel]


_BIRTH_TOKENS = frozenset({"dob", "birth", "birthdate", "birthday", "born"})
# Names of events, which are never birth dates however old: records, visits, orders.
_EVENT_TOKENS = frozenset(
    str.split(
        """
    created creation updated modified changed deleted record recorded visit visited admission
    admitted admit discharge discharged order ordered ship shipped shipping delivery delivered
    transaction payment paid invoice invoiced start started end ended due issue issued expiry
    expires expiration expired valid event registration registered signup join joined last
    login logged timestamp time ts at on since until effective death died deceased
    diagnosis diagnosed onset test tested sample sampled collected enrolment enrollment
    enrolled consent consented hire hired release released publish published
    """
    )
)


def _dob_rate(dates: pd.Series, sampled: int, column: str, threshold: float) -> float | None:
    """Match rate when the sampled dates look like birth dates, None when they do not.

    Valid instances are dates between 1900-01-01 and today. The column is reported when
    that rate reaches the threshold AND either its name suggests birth (a dob, birth,
    birthdate, birthday or born token) OR its name names no event (created, record,
    visit, updated, ...: those are never birth dates) and the dates look like birth
    dates: at least 80% imply an age of 0..120 years, the implied ages spread over at
    least 10 years (10th to 90th percentile), and their median is at least 15 years.
    A neutral name ("col_07") is judged by the dates alone.
    """
    if dates.dt.tz is not None:
        dates = dates.dt.tz_convert(None)
    today = pd.Timestamp.today().normalize()
    in_range = dates.notna() & (dates >= _EARLIEST_BIRTH) & (dates <= today)
    count = int(in_range.sum())
    if sampled == 0 or count == 0 or count / sampled < threshold:
        return None
    tokens = {token for sequence in _name_tokens(column) for token in sequence}
    if tokens & _BIRTH_TOKENS:
        return count / sampled
    if tokens & _EVENT_TOKENS:
        return None
    ages = (today - dates[in_range]).dt.days.to_numpy(dtype=float) / _DAYS_PER_YEAR
    plausible = float(((ages >= 0.0) & (ages <= _MAX_AGE_YEARS)).mean())
    low, median, high = np.quantile(ages, [0.1, 0.5, 0.9])
    if (
        plausible >= _AGE_PLAUSIBLE_SHARE
        and high - low >= _MIN_BIRTH_SPREAD_YEARS
        and median >= _MIN_MEDIAN_AGE_YEARS
    ):
        return count / sampled
    return None


# --- value detection ----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The policy's detection settings (governance/policy.py, `detection`)."""

    threshold: float = 0.8
    name_threshold: float = 0.6
    free_text_threshold: float = 0.0
    regions: tuple[str, ...] = ()


def _sample(series: pd.Series) -> pd.Series:
    """The deterministic sample of non-null values (see the module docstring)."""
    notna = series.notna().to_numpy(dtype=bool)
    available = int(notna.sum())
    if available <= SAMPLE_HEAD + SAMPLE_SPREAD:
        take = np.arange(available)
    else:
        # Over the values after the head; with more than 5,000 of them the steps exceed 1,
        # so these positions are distinct from each other and from the head.
        spread = np.linspace(SAMPLE_HEAD, available - 1, SAMPLE_SPREAD).astype(np.int64)
        take = np.concatenate([np.arange(SAMPLE_HEAD), spread])
    positions = take if available == len(series) else np.flatnonzero(notna)[take]
    # A fresh RangeIndex: later masks and assignments are positional, even when the
    # frame's index has duplicate labels.
    return series.iloc[positions].reset_index(drop=True)


class _Distinct:
    """The distinct values of a sample, their counts, and weighted shares."""

    def __init__(self, strings: pd.Series) -> None:
        counts = strings.value_counts(sort=False, dropna=True)
        self.strings = pd.Series(counts.index.to_numpy(dtype=object), dtype=strings.dtype)
        self.values = self.strings.to_numpy(dtype=object)
        self.weights = counts.to_numpy(dtype=np.int64)
        self.sampled = int(self.weights.sum())
        self.arrow = _to_arrow(self.strings)

    def weight(self, mask: np.ndarray) -> int:
        return int(self.weights[mask].sum())

    def full(self, pattern: str) -> np.ndarray:
        return _full(self.arrow, pattern)

    def checked(
        self,
        candidates: np.ndarray,
        check: Callable[[str], bool],
        needed: float,
        cap: int = VALIDATE_MAX,
        values: np.ndarray | None = None,
    ) -> float:
        """Weight of the candidates that pass `check`, estimated from at most `cap`
        distinct candidates evenly spread. When the candidates alone cannot reach
        `needed`, their weight (an upper bound, still below it) is returned unchecked.
        `values`: what `check` is given, position by position (default: the values)."""
        total = self.weight(candidates)
        if total == 0 or total < needed:
            return float(total)
        given = self.values if values is None else values
        positions = _spread(np.flatnonzero(candidates), cap)
        # A first fifth; a type far from the threshold there is not checked further.
        first = positions[::5]
        passed = np.fromiter((check(given[i]) for i in first), bool, len(first))
        estimate = total * int(self.weights[first][passed].sum()) / int(self.weights[first].sum())
        if len(first) == len(positions) or estimate < needed - EARLY_STOP_MARGIN * self.sampled:
            return estimate
        passed = np.fromiter((check(given[i]) for i in positions), bool, len(positions))
        examined = int(self.weights[positions].sum())
        return total * int(self.weights[positions][passed].sum()) / examined


def _spread(positions: np.ndarray, cap: int) -> np.ndarray:
    if len(positions) <= cap:
        return positions
    return positions[np.linspace(0, len(positions) - 1, cap).astype(np.int64)]


def _name_has(column: str, wanted: frozenset[str]) -> bool:
    return any(set(tokens) & wanted for tokens in _name_tokens(column))


def _phone_share(
    distinct: _Distinct,
    candidates: np.ndarray,
    regions: tuple[str, ...],
    threshold: float,
    judge: Callable[[str, tuple[str, ...]], tuple[int, bool]] = phones.grade,
) -> float:
    """The phone share of a column's distinct values (governance/phones.py): strong
    values, and weak ones too when enough of the values show a phone's marks.

    A first fifth of the candidates is judged first; a column whose phones and
    look-alikes together stay far under the threshold there is not judged further."""
    positions = _spread(np.flatnonzero(candidates), PHONE_VALIDATE_MAX)
    if len(positions) == 0:
        return 0.0
    share_of_sample = distinct.weight(candidates) / distinct.sampled
    order = np.concatenate([positions[::5], np.delete(positions, np.s_[::5])])
    strong = weak = marked = examined = 0
    for count, i in enumerate(order, start=1):
        grade, mark = judge(str(distinct.values[i]), regions)
        weight = int(distinct.weights[i])
        examined += weight
        strong += weight * (grade == phones.STRONG)
        weak += weight * (grade == phones.WEAK)
        marked += weight * mark
        first_fifth_done = count == len(positions[::5]) and count < len(order)
        reach = (strong + weak) / examined * share_of_sample
        if first_fifth_done and reach < threshold - EARLY_STOP_MARGIN:
            break
    if marked / examined >= phones.EVIDENCE_SHARE:
        return (strong + weak) / examined * share_of_sample
    return strong / examined * share_of_sample


def _national_id(
    distinct: _Distinct, compact: pa.Array, needed: float, skip: tuple[str, ...] = ()
) -> tuple[float, str]:
    """The best national ID kind's valid weight, and the kind."""
    best, best_kind = 0.0, ""
    for kind, pattern, check in idnumbers.KINDS:
        if kind in skip:
            continue
        candidates = _full(compact, pattern)
        if distinct.weight(candidates) < max(needed, best, 1):
            continue
        count = distinct.checked(candidates, check, max(needed, best))
        if count > best:
            best, best_kind = count, kind
    return best, best_kind


def _text_rates(
    strings: pd.Series, column: str, settings: Settings
) -> tuple[dict[str, float], dict[str, str], int]:
    """Match rates of every value-detected type in a sample of non-blank strings, the
    findings' details, and the number of values sampled."""
    distinct = _Distinct(strings)
    sampled = distinct.sampled
    needed = settings.threshold * sampled  # fewer valid values than this cannot be reported
    full = distinct.full
    counts: dict[str, float] = {
        "email": distinct.weight(full(_EMAIL_RE)),
        "credit_card": distinct.checked(full(_CARD_CANDIDATE_RE), luhn_valid, needed),
        "iban": distinct.checked(full(_IBAN_CANDIDATE_RE), iban_valid, needed),
        "cn_resident_id": distinct.checked(full(_CN_ID_CANDIDATE_RE), cn_resident_id_valid, needed),
    }
    ssn_shape = _SSN_CANDIDATE_RE if _name_has(column, _SSN_NAME_TOKENS) else _SSN_WRITTEN_RE
    counts["us_ssn"] = distinct.checked(
        full(ssn_shape), lambda v: us_ssn_valid(v.replace(" ", "-")), needed
    )
    ipv4 = full(_IPV4_RE)
    ipv4_weight = distinct.weight(ipv4)
    if ipv4_weight:
        big = full(rf".*(?:{_IPV4_BIG_OCTET_RE}).*") & ipv4
        if distinct.weight(big) < _IPV4_BIG_SHARE * ipv4_weight:
            ipv4_weight = 0  # version strings such as 2.12.5.16
    ipv6 = full(_IPV6_CANDIDATE_RE) & ~ipv4
    counts["ip_address"] = ipv4_weight + distinct.checked(ipv6, _ipv6_valid, needed - ipv4_weight)
    details: dict[str, str] = {}
    compact = pc.replace_substring_regex(distinct.arrow, idnumbers.SEPARATORS_RE, "")
    # ISBN-10s share NHS numbers' mod 11 check; only an ISBN ends in X, and a column of
    # them holds some (one in eleven): such a column is books, not people.
    books = _full(compact, r"[0-9]{9}[Xx]")
    books_found = books.any() and distinct.checked(books, isbn.is_valid, 1, cap=20) > 0
    skip = ("gb_nhs",) if books_found else ()
    counts["national_id"], details["national_id"] = _national_id(distinct, compact, needed, skip)
    rates = {pii_type: count / sampled for pii_type, count in counts.items()}
    dob = _dob_rate(
        pd.Series(np.repeat(_parse_dates(distinct.strings).to_numpy(), distinct.weights)),
        sampled,
        column,
        settings.threshold,
    )
    if dob is not None:
        rates["date_of_birth"] = dob
    # Phones cost most to judge (libphonenumber): only for a column no other type took.
    phone_candidates = full(phones.CANDIDATE_RE) & ~full(phones.NOT_PHONE_RE)
    if (
        max(rates.values(), default=0.0) < settings.threshold
        and distinct.weight(phone_candidates) >= needed
        and not books_found
    ):
        share = _phone_share(distinct, phone_candidates, settings.regions, settings.threshold)
        rates["phone"] = share
    if max(rates.values(), default=0.0) >= settings.threshold:
        return rates, details, sampled  # a column of one kind: no need to look further
    addresses = textscan.address_mask(distinct.strings)
    rates["address"] = distinct.weight(addresses) / sampled
    if rates["address"] >= settings.threshold:
        return rates, details, sampled
    shaped = full(r"[^0-9@/\\|_=+<>{}\[\]]{1,80}")
    # People's names are many: a code list ("White", "Black"; "Male") is not a name column.
    many = len(distinct.values) >= min(NAME_MIN_DISTINCT, sampled / 2)
    if many and distinct.weight(shaped) >= settings.name_threshold * sampled:
        lex = names.lexicon()
        rates["name"] = (
            distinct.checked(
                shaped,
                lambda v: names.name_like(v, lex),
                settings.name_threshold * sampled,
            )
            / sampled
        )
        if rates["name"] >= settings.name_threshold:
            return rates, details, sampled
    if textscan.is_prose(strings):
        hits = textscan.embedded_any(distinct.strings)
        if hits.any():
            rate = distinct.weight(hits) / sampled
            if rate >= settings.free_text_threshold:
                rates["free_text"] = rate
                kinds = textscan.embedded(distinct.strings[hits])
                details["free_text"] = ",".join(sorted(kinds))
    return rates, details, sampled


def _number_strings(sample: pd.Series) -> pd.Series:
    """Decimal strings of the whole numbers in a numeric sample; "" for fractions."""
    if ptypes.is_integer_dtype(sample.dtype):
        return sample.astype(str)
    numbers = sample.to_numpy(dtype=float, na_value=np.nan)
    whole = np.isfinite(numbers) & (numbers == np.floor(numbers)) & (np.abs(numbers) < 2.0**63)
    strings = np.full(len(numbers), "", dtype=object)
    strings[whole] = numbers[whole].astype(np.int64).astype(str)
    return pd.Series(strings, index=sample.index, dtype="str")


def _number_rates(
    strings: pd.Series, column: str, settings: Settings
) -> tuple[dict[str, float], dict[str, str], int]:
    """Rates for a numeric column, as decimal strings of its whole numbers."""
    distinct = _Distinct(strings)
    sampled = distinct.sampled
    needed = settings.threshold * sampled
    lengths = distinct.strings.str.len().to_numpy(dtype=np.int64, na_value=0)
    if distinct.weight(lengths >= 7) < needed:  # ages, counts, prices: nothing to see
        return {}, {}, sampled
    full = distinct.full
    rates: dict[str, float] = {
        "credit_card": distinct.checked(full(_CARD_CANDIDATE_RE), luhn_valid, needed) / sampled,
        "cn_resident_id": distinct.checked(full(_CN_ID_CANDIDATE_RE), cn_resident_id_valid, needed)
        / sampled,
    }
    details: dict[str, str] = {}
    best, best_kind = 0.0, ""
    for kind, pattern, check in idnumbers.KINDS:
        width = idnumbers.DIGIT_KINDS.get(kind)
        if width is None:
            continue
        padded = distinct.strings.str.zfill(width)
        candidates = (lengths <= width) & _full(padded, pattern)
        if distinct.weight(candidates) < max(needed, best, 1):
            continue
        count = distinct.checked(
            candidates, check, max(needed, best), values=padded.to_numpy(dtype=object)
        )
        if count > best:
            best, best_kind = count, kind
    rates["national_id"], details["national_id"] = best / sampled, best_kind
    compact = full(_COMPACT_RE)
    if distinct.weight(compact) >= needed:
        dates = _parse_dates(distinct.strings.where(compact, ""))
        dob = _dob_rate(
            pd.Series(np.repeat(dates.to_numpy(), distinct.weights)),
            sampled,
            column,
            settings.threshold,
        )
        if dob is not None:
            rates["date_of_birth"] = dob
    phone_candidates = (lengths >= phones.MIN_DIGITS) & (lengths <= phones.MAX_DIGITS)
    taken = max(rates.values(), default=0.0) >= settings.threshold
    if not taken and distinct.weight(phone_candidates) >= needed:
        rates["phone"] = _phone_share(
            distinct, phone_candidates, settings.regions, settings.threshold, phones.grade_digits
        )
    return rates, details, sampled


def _detect_values(series: pd.Series, column: str, settings: Settings) -> list[PiiFinding]:
    for name, value in (("threshold", settings.threshold),
                        ("name_threshold", settings.name_threshold)):  # fmt: skip
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {value}")
    dtype = series.dtype
    if ptypes.is_bool_dtype(dtype):
        return []
    categorical = isinstance(dtype, pd.CategoricalDtype)
    if categorical and len(dtype.categories) <= MAX_SKIPPED_CATEGORIES:
        return []
    sample = _sample(series)
    if categorical:  # judge the values by the dtype of the categories
        sample = sample.astype(dtype.categories.dtype)
        dtype = sample.dtype
        if ptypes.is_bool_dtype(dtype):
            return []

    rates: dict[str, float]
    details: dict[str, str] = {}
    if ptypes.is_numeric_dtype(dtype) and not ptypes.is_complex_dtype(dtype):
        strings = _number_strings(sample)
        strings = strings[strings.str.len().to_numpy(dtype=np.int64, na_value=0) > 0]
        if strings.empty:
            return []
        rates, details, sampled = _number_rates(strings, column, settings)
    elif ptypes.is_datetime64_any_dtype(dtype):
        sampled = len(sample)
        dob = _dob_rate(sample, sampled, column, settings.threshold) if sampled else None
        rates = {} if dob is None else {"date_of_birth": dob}
    elif ptypes.is_string_dtype(dtype) or ptypes.is_object_dtype(dtype):
        # A value is judged by its first MAX_SCAN_CHARS characters: a ten-megabyte cell
        # costs no more than a long note.
        strings = sample.astype(str).str.slice(0, MAX_SCAN_CHARS).str.strip()
        strings = strings[strings.str.len().to_numpy(dtype=np.int64, na_value=0) > 0]
        if strings.empty:
            return []
        rates, details, sampled = _text_rates(strings, column, settings)
    else:  # timedelta, period, interval, complex...: nothing identifying by value
        return []

    limits = {"name": settings.name_threshold, "free_text": settings.free_text_threshold}
    found = [
        PiiFinding(column, pii_type, "values", rates[pii_type], sampled, details.get(pii_type, ""))
        for pii_type in PII_TYPES
        if pii_type in rates
        and rates[pii_type] >= limits.get(pii_type, settings.threshold)
        and (pii_type != "free_text" or rates[pii_type] > 0)
    ]
    return found


def detect_values(
    series: pd.Series,
    *,
    threshold: float = 0.8,
    name_threshold: float = 0.6,
    free_text_threshold: float = 0.0,
    regions: tuple[str, ...] | list[str] = (),
) -> list[PiiFinding]:
    """Types whose valid share of the sampled non-null values is at least `threshold`
    (`name_threshold` for names; free text: any share above `free_text_threshold`).

    The series' name is the column name: it is reported in the findings and consulted
    by the date_of_birth and SSN rules. `regions`: ISO codes for phone numbers written
    without a country code. Findings come in `PII_TYPES` order.
    """
    column = "" if series.name is None else str(series.name)
    settings = Settings(threshold, name_threshold, free_text_threshold, tuple(regions))
    return _detect_values(series, column, settings)


# --- column names -------------------------------------------------------------------------

# (token sequence, type). Sequences are matched as contiguous runs of the name's tokens,
# longest first, and tokens used by one hint are not reused: "id_card" is a resident ID,
# not a credit card.
_NAME_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("email",), "email"),
    (("e", "mail"), "email"),
    (("mail",), "email"),
    (("emailaddress",), "email"),
    (("phone",), "phone"),
    (("tel",), "phone"),
    (("telephone",), "phone"),
    (("mobile",), "phone"),
    (("phonenumber",), "phone"),
    (("cellphone",), "phone"),
    (("fax",), "phone"),
    (("msisdn",), "phone"),
    (("ssn",), "us_ssn"),
    (("social", "security"), "us_ssn"),
    (("socialsecurity",), "us_ssn"),
    (("dob",), "date_of_birth"),
    (("birth", "date"), "date_of_birth"),
    (("date", "of", "birth"), "date_of_birth"),
    (("birthdate",), "date_of_birth"),
    (("birthday",), "date_of_birth"),
    (("birth", "day"), "date_of_birth"),
    # Year of birth is a partial date of birth and as identifying in combination.
    (("birth", "year"), "date_of_birth"),
    (("year", "of", "birth"), "date_of_birth"),
    (("birthyear",), "date_of_birth"),
    (("yob",), "date_of_birth"),
    (("iban",), "iban"),
    (("card",), "credit_card"),
    (("credit", "card"), "credit_card"),
    (("creditcard",), "credit_card"),
    (("cardnumber",), "credit_card"),
    (("cc", "number"), "credit_card"),
    (("cc", "num"), "credit_card"),
    (("cc", "no"), "credit_card"),
    (("ccnumber",), "credit_card"),
    (("ccn",), "credit_card"),
    (("ip",), "ip_address"),
    (("ip", "address"), "ip_address"),
    (("ipaddress",), "ip_address"),
    (("ipaddr",), "ip_address"),
    (("ipv4",), "ip_address"),
    (("ipv6",), "ip_address"),
    (("zip",), "postcode"),
    (("zipcode",), "postcode"),
    (("zip", "code"), "postcode"),
    (("postcode",), "postcode"),
    (("post", "code"), "postcode"),
    (("postal", "code"), "postcode"),
    (("postalcode",), "postcode"),
    (("id", "card"), "cn_resident_id"),
    (("idcard",), "cn_resident_id"),
    (("identity", "card"), "cn_resident_id"),
    (("resident", "id"), "cn_resident_id"),
    (("residentid",), "cn_resident_id"),
    (("national", "id"), "cn_resident_id"),
    (("nationalid",), "cn_resident_id"),
    (("shenfenzheng",), "cn_resident_id"),
    (("sfz",), "cn_resident_id"),
    (("nino",), "national_id"),
    (("national", "insurance"), "national_id"),
    (("nhs", "number"), "national_id"),
    (("nir",), "national_id"),
    (("codice", "fiscale"), "national_id"),
    (("codicefiscale",), "national_id"),
    (("bsn",), "national_id"),
    (("cpf",), "national_id"),
    (("nif",), "national_id"),
    (("nie",), "national_id"),
    (("dni",), "national_id"),
    (("nuss",), "national_id"),
    (("aadhaar",), "national_id"),
    (("aadhar",), "national_id"),
    (("pan", "number"), "national_id"),
    (("steuer", "id"), "national_id"),
    (("idnr",), "national_id"),
    (("my", "number"), "national_id"),
    (("passport",), "national_id"),
    (("address",), "address"),
    (("street",), "address"),
    (("street", "address"), "address"),
    (("addr",), "address"),
    (("home", "address"), "address"),
)
_HINTS_LONGEST_FIRST = sorted(_NAME_HINTS, key=lambda hint: -len(hint[0]))

# One-word names of a person's name; "username", "hostname", "filename" are not among them.
_PERSON_NAME_WORDS = frozenset(
    {
        "firstname",
        "lastname",
        "surname",
        "surnames",
        "fullname",
        "forename",
        "forenames",
        "givenname",
        "familyname",
        "middlename",
        "maidenname",
        "patientname",
    }
)
# A "name" token right after one of these names a thing or an account, not a person:
# "user_name" (an identifier, but not a person's name), "file_name", "product_name".
_NOT_PERSON_QUALIFIERS = frozenset(
    {
        "account",
        "app",
        "application",
        "attr",
        "attribute",
        "brand",
        "bucket",
        "category",
        "city",
        "class",
        "column",
        "company",
        "country",
        "course",
        "data",
        "database",
        "dataset",
        "db",
        "department",
        "dept",
        "device",
        "domain",
        "drug",
        "event",
        "feature",
        "field",
        "file",
        "function",
        "group",
        "host",
        "hospital",
        "image",
        "institution",
        "item",
        "job",
        "key",
        "label",
        "login",
        "method",
        "metric",
        "model",
        "module",
        "node",
        "org",
        "organisation",
        "organization",
        "package",
        "product",
        "project",
        "role",
        "schema",
        "screen",
        "server",
        "service",
        "site",
        "state",
        "street",
        "table",
        "task",
        "team",
        "test",
        "unit",
        "user",
        "var",
        "variable",
    }
)


def _hint_types(tokens: tuple[str, ...]) -> set[str]:
    found: set[str] = set()
    used = [False] * len(tokens)
    for hint, pii_type in _HINTS_LONGEST_FIRST:
        width = len(hint)
        for start in range(len(tokens) - width + 1):
            if tokens[start : start + width] == hint and not any(used[start : start + width]):
                found.add(pii_type)
                used[start : start + width] = [True] * width
    if _PERSON_NAME_WORDS.intersection(tokens):
        found.add("name")
    for index, token in enumerate(tokens):
        if token in ("name", "names") and (
            index == 0 or tokens[index - 1] not in _NOT_PERSON_QUALIFIERS
        ):
            found.add("name")
    return found


def detect_name(column: str) -> list[PiiFinding]:
    """Types hinted by a column name, matched on tokens, case- and separator-insensitive.

    The name is split on non-alphanumerics and on camelCase ("dateOfBirth", "IPAddress",
    "e-mail"), and hints are matched on whole tokens, so "ship_date" is no "ip" and
    "zipper" no "zip". `name` is a person's name: "name", "first_name", "surname",
    "patient_name"..., but not "username", "user_name", "file_name" or "product_name":
    a username identifies an account, and is not a person's name. Name hits carry
    match_rate 0.0 and sampled 0; findings come in `PII_TYPES` order.
    """
    found: set[str] = set()
    for tokens in _name_tokens(column):
        found |= _hint_types(tokens)
    return [
        PiiFinding(column, pii_type, "name", 0.0, 0) for pii_type in PII_TYPES if pii_type in found
    ]


def scan_column(
    series: pd.Series,
    column: str,
    *,
    threshold: float = 0.8,
    settings: Settings | None = None,
) -> list[PiiFinding]:
    """Value findings first, then name findings for the types the values did not show."""
    settings = settings or Settings(threshold)
    findings = _detect_values(series, column, settings)
    by_values = {finding.pii_type for finding in findings}
    findings += [hit for hit in detect_name(column) if hit.pii_type not in by_values]
    return findings


# "+44 ...", or "0044 ..." with a separator: bare "0042319..." is as often a padded code.
_INTERNATIONAL_RE = (
    r"(?:\+[1-9][0-9 ().\-/]{6,20}|00[1-9][0-9]{0,3}[ ().\-/][0-9 ().\-/]{5,20})"
    r"(?:[ ]*(?:x|ext\.?)[ ]*[0-9]{1,6})?"
)
# A column counts when this share of its values is written with a country code.
REGION_COLUMN_SHARE = 0.2


def infer_phone_regions(df: pd.DataFrame) -> tuple[str, ...]:
    """The regions of the phone numbers written with a country code in `df`'s text
    columns (+44 ..., 0044 ...) that hold at least `REGION_COLUMN_SHARE` of them: each
    region holding at least `REGION_MIN_SHARE` of those numbers, most frequent first,
    at most `MAX_INFERRED_REGIONS`. A site whose numbers are all national (no country
    code) must name its region in the policy."""
    found: dict[str, int] = {}
    for _, series in df.items():
        if not (ptypes.is_string_dtype(series.dtype) or ptypes.is_object_dtype(series.dtype)):
            continue
        head = series.dropna().head(SAMPLE_HEAD).astype(str).str.strip()
        international = head[_full(head, _INTERNATIONAL_RE)]
        if len(international) < max(REGION_COLUMN_SHARE * len(head), 1):
            continue  # not a column of phone numbers
        for value in _spread(np.arange(len(international)), 200):
            region = phones.region_of(str(international.iloc[value]))
            if region is not None:
                found[region] = found.get(region, 0) + 1
    total = sum(found.values())
    ranked = sorted(found, key=lambda region: (-found[region], region))
    return tuple(r for r in ranked if found[r] >= REGION_MIN_SHARE * total)[:MAX_INFERRED_REGIONS]


def scan_frame(
    df: pd.DataFrame,
    *,
    threshold: float = 0.8,
    name_threshold: float = 0.6,
    free_text_threshold: float = 0.0,
    regions: tuple[str, ...] | list[str] | None = None,
) -> dict[str, list[PiiFinding]]:
    """Findings per column (by `str` of the label), only for columns with findings.

    `regions`: the site's phone regions; None or empty: those of `infer_phone_regions`.
    """
    regions = tuple(regions or ()) or infer_phone_regions(df)
    settings = Settings(threshold, name_threshold, free_text_threshold, regions)
    result: dict[str, list[PiiFinding]] = {}
    for label, series in df.items():  # items() also copes with duplicate labels
        column = str(label)
        findings = scan_column(series, column, settings=settings)
        if findings:
            result.setdefault(column, []).extend(findings)
    return result


# --- header cells -------------------------------------------------------------------------

_NUMBER_RE = r"[+-]?(?:[0-9]+(?:[.,][0-9]*)?|[.,][0-9]+)(?:[eE][+-]?[0-9]+)?"


def value_kinds(texts: list[str]) -> list[str | None]:
    """For each text, the kind of value it is by its shape alone ("number", "date", or a
    type of personal data: "email", "phone", "credit_card", "iban", "ip_address",
    "us_ssn", "cn_resident_id"), or None when it could be a column name.

    It tells a header line from a line of data: no header names a column
    "jane@example.org", "555-0100-0000" or "1987-04-12". Vectorised over all the texts.
    """
    strings = pd.Series([str(t).strip() for t in texts], dtype=object)
    kinds: list[str | None] = [None] * len(strings)
    if strings.empty:
        return kinds
    values = strings.to_numpy(dtype=object)

    def checked(pattern: str, check: Callable[[str], bool]) -> np.ndarray:
        mask = _full(strings, pattern).copy()
        for i in np.flatnonzero(mask):
            mask[i] = check(values[i])
        return mask

    ipv4 = _full(strings, _IPV4_RE)
    masks = {
        "number": _full(strings, _NUMBER_RE),
        "date": _parse_dates(strings).notna().to_numpy(dtype=bool),
        "email": _full(strings, _EMAIL_RE),
        "phone": _phone_mask(strings),
        "credit_card": checked(_CARD_CANDIDATE_RE, luhn_valid),
        "iban": checked(_IBAN_CANDIDATE_RE, iban_valid),
        "ip_address": ipv4 | (checked(_IPV6_CANDIDATE_RE, _ipv6_valid) & ~ipv4),
        "us_ssn": checked(_SSN_CANDIDATE_RE, us_ssn_valid),
        "cn_resident_id": checked(_CN_ID_CANDIDATE_RE, cn_resident_id_valid),
    }
    for kind, mask in reversed(masks.items()):  # the first kind in `masks` wins
        for i in np.flatnonzero(mask):
            kinds[i] = kind
    return kinds
