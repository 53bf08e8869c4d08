"""Phone numbers, judged with Google's libphonenumber (the `phonenumbers` package).

A number written with its country code (`+44 113 496 0156`, `0044 113...`, `+1-912-490-4047
x96669`) is a phone when it is a possible number for that country: the right length for
its numbering plan. A number written without one is judged in the site's region(s) (the
policy's `detection.phone_regions`; otherwise the regions of the international numbers in
the same table). Each value gets one of three grades:

- strong: international and possible; or national and valid (libphonenumber's number
  ranges); or national, possible and written as people write phones in that region:
  with separators or brackets, or with the trunk prefix ("0") where the region's own
  format writes one. A number that the region writes with its trunk prefix and that
  comes without it is never strong: French part numbers `896-8028-95` are not phones;
- weak: national and possible, but not strong (`62-3286-0129` in Japan);
- no: anything else.

A column's phone share counts weak values only when at least `EVIDENCE_SHARE` of its
values show a phone's marks (a country code, a trunk prefix, a bracketed area code):
ten-digit account numbers in India are possible phone numbers too, but none of them is
written `+91 ...` or `0...`.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers as pn

EVIDENCE_SHARE = 0.25
STRONG, WEAK, NO = 2, 1, 0

# What a phone may look like before libphonenumber is asked (RE2-compatible): digits with
# separators, an optional leading + or bracket, an optional extension.
CANDIDATE_RE = (
    r"(?:\+|00)?[ ]?(?:\([0-9]{1,5}\)|[0-9])[0-9 ().\-/]*[0-9]"
    r"(?:[ ]*(?:x|ext\.?|extension|#)[ ]*[0-9]{1,6})?"
)
# Shapes that the candidate pattern also takes and that are not phones: ISO and day-first
# dates, dashed SSNs, dotted quads and version strings, dot-grouped thousands.
NOT_PHONE_RE = (
    r"[0-9]{4}[-/.][0-9]{1,2}[-/.][0-9]{1,2}|[0-9]{1,2}[-/.][0-9]{1,2}[-/.][0-9]{4}"
    r"|[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{1,3}(?:\.[0-9]{1,3}){2,}|[0-9]{1,3}(?:\.[0-9]{3}){2,}"
)
MIN_DIGITS, MAX_DIGITS = 7, 15  # E.164 allows at most 15; shorter than 7 is no phone

_EXTENSION = re.compile(r"\s*(?:x|ext\.?|extension|#)\s*[0-9]{1,6}$", re.IGNORECASE)
_TRUNK_IN_BRACKETS = re.compile(r"^(\+[0-9]{1,3})\s*\(0\)\s*")


def _normalise(value: str) -> str:
    text = value.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    return _TRUNK_IN_BRACKETS.sub(r"\1 ", text)  # +44(0)113 ... -> +44 113 ...


@lru_cache(maxsize=512)
def _trunk_prefix(region: str) -> str | None:
    metadata = pn.PhoneMetadata.metadata_for_region(region)
    return None if metadata is None else metadata.national_prefix


def _parse(text: str, region: str | None) -> pn.PhoneNumber | None:
    try:
        return pn.parse(text, region)
    except pn.NumberParseException:
        return None


@lru_cache(maxsize=512)
def _writes_trunk_prefix(region: str) -> bool:
    """Whether the region's own national format writes its trunk prefix (GB 0113...;
    not US, whose "1" is left out), judged on its example fixed-line number."""
    prefix = _trunk_prefix(region)
    example = pn.example_number(region)
    if not prefix or example is None:
        return False
    return pn.format_number(example, pn.PhoneNumberFormat.NATIONAL).lstrip("(").startswith(prefix)


def _groups_fit(core: str, number: pn.PhoneNumber, prefix: str | None) -> bool:
    """A value's digit groups are the region's own grouping of the number (the trunk
    prefix may be left out), or an area code and the rest, or one run of digits."""
    groups = re.findall(r"[0-9]+", core)
    if len(groups) == 1:
        return True
    bare = pn.PhoneNumber(
        country_code=number.country_code,
        national_number=number.national_number,
        italian_leading_zero=number.italian_leading_zero,
        number_of_leading_zeros=number.number_of_leading_zeros,
    )  # without its extension
    canon = re.findall(r"[0-9]+", pn.format_number(bare, pn.PhoneNumberFormat.NATIONAL))
    if prefix and canon and canon[0].startswith(prefix) and not groups[0].startswith(prefix):
        canon[0] = canon[0][len(prefix) :]
        canon = [group for group in canon if group]
    return groups == canon or (len(groups) == 2 and bool(canon) and groups[0] == canon[0])


def grade(value: str, regions: tuple[str, ...]) -> tuple[int, bool]:
    """(STRONG, WEAK or NO, whether the value shows a phone's marks: a country code, a
    trunk prefix that its region writes, a bracketed area code)."""
    text = _normalise(value)
    core = _EXTENSION.sub("", text)
    digits = sum(char.isdigit() for char in core)
    if not MIN_DIGITS <= digits <= MAX_DIGITS + 3:  # + a trunk prefix or IDD left in
        return NO, False
    if text.startswith("+"):
        number = _parse(text, None)
        if number is None or pn.region_code_for_country_code(number.country_code or 0) == "ZZ":
            return NO, False
        return (STRONG if pn.is_possible_number(number) else NO), True
    bracketed = core.startswith("(")
    best, evidence = NO, bracketed
    for region in regions:
        number = _parse(text, region)
        if number is None or not pn.is_possible_number(number):
            continue
        valid = pn.is_valid_number(number)
        prefix = _trunk_prefix(region)
        has_prefix = bool(prefix) and core.lstrip("(").startswith(prefix)  # type: ignore[arg-type]
        if valid and prefix:
            national = pn.format_number(number, pn.PhoneNumberFormat.NATIONAL)
            writes_prefix = national.lstrip("(").startswith(prefix)
        else:
            writes_prefix = _writes_trunk_prefix(region)
        if has_prefix and writes_prefix:
            evidence = True
        if writes_prefix and not has_prefix:
            best = WEAK  # French "896-8028-95": a French phone is written "0..."
            continue
        if (has_prefix and writes_prefix) or bracketed:
            return STRONG, evidence
        if valid and _groups_fit(core, number, prefix):
            return STRONG, evidence
        best = WEAK
    return best, evidence


def grade_digits(digits: str, regions: tuple[str, ...]) -> tuple[int, bool]:
    """A number held as an integer: no separators, and a leading 0 (a trunk prefix or an
    international prefix) lost. STRONG: a valid number in one of the regions whose own
    format writes no trunk prefix (a Chinese mobile), or a valid international number
    without its "+" (an MSISDN such as 919876543210). WEAK: a possible number otherwise
    (a German 301234567 was "030 1234567"; so is many an account number). The second
    value: whether it reads as an international number of one of the regions, a phone's
    mark in a column of integers."""
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        return NO, False
    best = NO
    codes = {pn.country_code_for_region(region) for region in regions}
    if len(digits) >= 10:
        number = _parse("+" + digits, None)
        if number is not None and pn.is_possible_number(number):
            marked = number.country_code in codes
            if pn.is_valid_number(number):
                return STRONG, marked
            if marked:
                return WEAK, True
    for region in regions:
        number = _parse(digits, region)
        if number is None or not pn.is_possible_number(number):
            continue
        if pn.is_valid_number(number):
            prefix = _trunk_prefix(region)
            national = pn.format_number(number, pn.PhoneNumberFormat.NATIONAL)
            if not (prefix and national.lstrip("(").startswith(prefix)):
                return STRONG, False
        best = WEAK
    return best, False


def region_of(value: str) -> str | None:
    """The region of an international number (`+44 ...`, `0044 ...`), or None."""
    text = _normalise(value)
    if not text.startswith("+"):
        return None
    number = _parse(text, None)
    if number is None or not pn.is_possible_number(number):
        return None
    region = pn.region_code_for_number(number) or pn.region_code_for_country_code(
        number.country_code or 0
    )
    return None if region in (None, "ZZ", "001") else region
