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
2. Regex, then checksum. Every type's shape is tested with vectorised pandas `.str`
   regular expressions on the whole sample at once (pyarrow's RE2 when the column holds
   pyarrow strings, so the patterns use no look-around or back-references). Python-level
   validation (Luhn, IBAN mod-97, MOD 11-2, SSN ranges, `ipaddress`) runs only on the
   values that matched the regex, and is skipped when the candidates alone could not
   reach the threshold.
3. Rate and threshold. `match_rate` is the fraction of sampled non-null values that are
   valid instances; a type is reported when `match_rate >= threshold` (0.8 by default).

What is looked at, by dtype:

- string/object columns (and categoricals with more than `MAX_SKIPPED_CATEGORIES`
  categories, through their categories' dtype): every value pattern below;
- integer columns, and float columns holding whole numbers: credit_card and
  cn_resident_id only (checked as decimal strings; an int64 can hold every ID without
  the 'X' check character). Numbers are never phones, SSNs or e-mail addresses: ages,
  counts and prices would be false hits;
- datetime columns: date_of_birth only;
- booleans, categoricals with few categories and other dtypes: no value detection.

`name` and `postcode` are found by column name only: value patterns for people's names
are unreliable (any word could be a name), and postcodes look like any short number.
Column-name hints are matched on tokens (split on non-alphanumerics and camelCase), never
on substrings, so "ship_date" is no IP address, "zipper" no postcode and "username" is an
identifier but not a person's name (see `detect_name`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

PII_TYPES = (
    "email",
    "phone",
    "credit_card",
    "iban",
    "ip_address",
    "us_ssn",
    "cn_resident_id",
    "date_of_birth",
    "name",
    "postcode",
)

SAMPLE_HEAD = 2_500  # first non-null values always examined
SAMPLE_SPREAD = 2_500  # evenly spaced non-null values examined after the head
# A categorical with this many categories or fewer is a code list (sex, region, grade),
# not a column of identifiers: no value detection.
MAX_SKIPPED_CATEGORIES = 50

# date_of_birth by values (see `_dob_rate`).
_EARLIEST_BIRTH = pd.Timestamp("1900-01-01")
_MAX_AGE_YEARS = 120.0
_AGE_PLAUSIBLE_SHARE = 0.8  # share of dates that must imply an age within 0..120 years
# Birth dates spread over decades; transaction, visit or shipping dates cluster in
# recent years. Without a birth-like name the 10th-90th percentile of implied ages must
# span at least this many years.
_MIN_BIRTH_SPREAD_YEARS = 10.0
_DAYS_PER_YEAR = 365.2425


@dataclass(frozen=True)
class PiiFinding:
    """One personal-identifier type found in one column."""

    column: str
    pii_type: str  # one of PII_TYPES
    source: str  # "values" or "name"
    match_rate: float  # valid share of the sampled non-null values; 0.0 for name hits
    sampled: int  # values examined; 0 for name hits


# --- checksums and validators -------------------------------------------------------------
# Patterns use [0-9], not \d: Python's \d also matches other scripts' digits.

_LUHN_PLAIN = {str(d): d for d in range(10)}
_LUHN_DOUBLED = {str(d): 2 * d if d < 5 else 2 * d - 9 for d in range(10)}
_IBAN_COMPACT = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")  # 15..34 characters
_CN_ID = re.compile(r"[0-9]{17}[0-9X]")
_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK = "10X98765432"
_SSN = re.compile(r"([0-9]{3})-([0-9]{2})-([0-9]{4})|([0-9]{3})([0-9]{2})([0-9]{4})")


def luhn_valid(number: str) -> bool:
    """True when `number` (spaces and dashes ignored) is 13..19 digits passing Luhn."""
    if not isinstance(number, str):
        return False
    digits = number.strip().replace(" ", "").replace("-", "")
    # isascii() first: str.isdigit() alone also accepts other scripts' digits and "²".
    if not (13 <= len(digits) <= 19 and digits.isascii() and digits.isdigit()):
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
_CARD_CANDIDATE_RE = r"[0-9](?:[ -]?[0-9]){12,18}"  # then Luhn
_IBAN_CANDIDATE_RE = r"[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,30}"  # then mod 97
_SSN_CANDIDATE_RE = r"[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{9}"  # then area/group/serial
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
_YMD_RE = (
    r"[0-9]{4}[-/.][0-9]{1,2}[-/.][0-9]{1,2}"
    r"(?:[T ][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
)
_DMY_RE = r"[0-9]{1,2}[-/.][0-9]{1,2}[-/.][0-9]{4}"


def _full(strings: pd.Series, pattern: str) -> np.ndarray:
    """Vectorised full match; the group keeps an alternation inside the anchors."""
    return strings.str.fullmatch(f"(?:{pattern})").to_numpy(dtype=bool, na_value=False)


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
    return pd.Series(parsed, index=strings.index)


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


def _dob_rate(dates: pd.Series, sampled: int, column: str, threshold: float) -> float | None:
    """Match rate when the sampled dates look like birth dates, None when they do not.

    Valid instances are dates between 1900-01-01 and today. The column is reported when
    that rate reaches the threshold AND either its name suggests birth (a dob, birth,
    birthdate, birthday or born token) OR its name has a "date" token and the dates look
    like birth dates: at least 80% imply an age of 0..120 years, and the implied ages
    spread over at least 10 years (10th to 90th percentile). Other names ("created_at",
    "updated") are never date_of_birth by values, however old the dates.
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
    if "date" not in tokens:
        return None
    ages = (today - dates[in_range]).dt.days.to_numpy(dtype=float) / _DAYS_PER_YEAR
    plausible = float(((ages >= 0.0) & (ages <= _MAX_AGE_YEARS)).mean())
    low, high = np.quantile(ages, [0.1, 0.9])
    if plausible >= _AGE_PLAUSIBLE_SHARE and high - low >= _MIN_BIRTH_SPREAD_YEARS:
        return count / sampled
    return None


# --- value detection ----------------------------------------------------------------------


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


def _text_rates(strings: pd.Series, column: str, threshold: float) -> dict[str, float]:
    """Match rates of every value-detected type in a sample of non-blank strings."""
    sampled = len(strings)
    needed = threshold * sampled  # fewer valid values than this cannot be reported
    values = strings.to_numpy(dtype=object)
    counts: dict[str, int] = {
        "email": int(_full(strings, _EMAIL_RE).sum()),
        "phone": int(_phone_mask(strings).sum()),
        "credit_card": _checked_count(
            values, _full(strings, _CARD_CANDIDATE_RE), luhn_valid, needed
        ),
        "iban": _checked_count(values, _full(strings, _IBAN_CANDIDATE_RE), iban_valid, needed),
        "us_ssn": _checked_count(values, _full(strings, _SSN_CANDIDATE_RE), us_ssn_valid, needed),
        "cn_resident_id": _checked_count(
            values, _full(strings, _CN_ID_CANDIDATE_RE), cn_resident_id_valid, needed
        ),
    }
    ipv4 = _full(strings, _IPV4_RE)
    ipv6 = _full(strings, _IPV6_CANDIDATE_RE) & ~ipv4
    counts["ip_address"] = int(ipv4.sum()) + _checked_count(
        values, ipv6, _ipv6_valid, needed - int(ipv4.sum())
    )
    rates = {pii_type: count / sampled for pii_type, count in counts.items()}
    dob = _dob_rate(_parse_dates(strings), sampled, column, threshold)
    if dob is not None:
        rates["date_of_birth"] = dob
    return rates


def _number_strings(sample: pd.Series) -> pd.Series:
    """Decimal strings of the whole numbers in a numeric sample; "" for fractions."""
    if ptypes.is_integer_dtype(sample.dtype):
        return sample.astype(str)
    numbers = sample.to_numpy(dtype=float, na_value=np.nan)
    whole = np.isfinite(numbers) & (numbers == np.floor(numbers)) & (np.abs(numbers) < 2.0**63)
    strings = np.full(len(numbers), "", dtype=object)
    strings[whole] = numbers[whole].astype(np.int64).astype(str)
    return pd.Series(strings, index=sample.index, dtype="str")


def _detect_values(series: pd.Series, column: str, threshold: float) -> list[PiiFinding]:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
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
    if ptypes.is_numeric_dtype(dtype) and not ptypes.is_complex_dtype(dtype):
        strings = _number_strings(sample)
        sampled = len(strings)
        if sampled == 0:
            return []
        needed = threshold * sampled
        values = strings.to_numpy(dtype=object)
        cards = _full(strings, _CARD_CANDIDATE_RE)
        ids = _full(strings, _CN_ID_CANDIDATE_RE)
        rates = {
            "credit_card": _checked_count(values, cards, luhn_valid, needed) / sampled,
            "cn_resident_id": _checked_count(values, ids, cn_resident_id_valid, needed) / sampled,
        }
    elif ptypes.is_datetime64_any_dtype(dtype):
        sampled = len(sample)
        dob = _dob_rate(sample, sampled, column, threshold) if sampled else None
        rates = {} if dob is None else {"date_of_birth": dob}
    elif ptypes.is_string_dtype(dtype) or ptypes.is_object_dtype(dtype):
        strings = sample.astype(str).str.strip()
        strings = strings[strings.str.len().to_numpy(dtype=np.int64, na_value=0) > 0]
        sampled = len(strings)
        if sampled == 0:
            return []
        rates = _text_rates(strings, column, threshold)
    else:  # timedelta, period, interval, complex...: nothing identifying by value
        return []

    return [
        PiiFinding(column, pii_type, "values", rates[pii_type], sampled)
        for pii_type in PII_TYPES
        if rates.get(pii_type, 0.0) >= threshold
    ]


def detect_values(series: pd.Series, *, threshold: float = 0.8) -> list[PiiFinding]:
    """Types whose valid share of the sampled non-null values is at least `threshold`.

    The series' name is the column name: it is reported in the findings and consulted
    by the date_of_birth rule (see `_dob_rate`). Findings come in `PII_TYPES` order.
    """
    column = "" if series.name is None else str(series.name)
    return _detect_values(series, column, threshold)


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


def scan_column(series: pd.Series, column: str, *, threshold: float = 0.8) -> list[PiiFinding]:
    """Value findings first, then name findings for the types the values did not show."""
    findings = _detect_values(series, column, threshold)
    by_values = {finding.pii_type for finding in findings}
    findings += [hit for hit in detect_name(column) if hit.pii_type not in by_values]
    return findings


def scan_frame(df: pd.DataFrame, *, threshold: float = 0.8) -> dict[str, list[PiiFinding]]:
    """Findings per column (by `str` of the label), only for columns with findings."""
    result: dict[str, list[PiiFinding]] = {}
    for label, series in df.items():  # items() also copes with duplicate labels
        column = str(label)
        findings = scan_column(series, column, threshold=threshold)
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
