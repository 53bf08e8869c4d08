"""Addresses, free text with identifiers inside it, and masking that free text.

Addresses. A value is address-like when it holds two of the characters Chinese and
Japanese addresses are written with (路, 号, 丁目...), or a digit and either a street word
(street, road, rue, via, calle, rua, straße, straat, marg, 路, 丁目... in English, French,
German, Dutch, Italian, Spanish, Portuguese, Indian English, Chinese and Japanese), a
compound street name (Hauptstraße, Pimweg, Nickdreef), an apartment word (Apt, Suite,
Unit, Piso, Appartamento) or a postcode in one of the common layouts (SW1A 1AA, CA 94105,
1234 AB, 12345-678), or is a house number and words ("69 Brooks Loaf", "Pimweg 947"),
or spans several lines. A column whose address-like share reaches the policy's threshold is
`address`, a direct identifier.

Free text. A column is prose when its values are long (median at least
`PROSE_MIN_CHARS` characters and `PROSE_MIN_WORDS` words, or `PROSE_MIN_CJK_CHARS`
Han, kana or Hangul characters). Prose is searched for
identifiers inside it: e-mail addresses, phone numbers, card numbers, IBANs, IP
addresses, SSN- and NINO-shaped numbers. A prose column in which the share of values
holding one reaches the policy's `detection.free_text_threshold` (any one, by default) is
`free_text`; the policy's action for it is `drop` or `mask`.

Masking (`mask_text`) replaces what it finds by its type, in this order: <EMAIL>, <IBAN>,
<CARD>, <ID> (SSN, NINO, codice fiscale), <DATE> (numeric dates), <PHONE>, <IP>, <NUMBER>
(any other run of seven or more digits), and <NAME> (two to four capitalised words, at
least half of them in the name lexicon, governance/names.py). Every pattern but the
names' runs vectorised over the whole column (pyarrow's RE2 on Arrow strings); the names
pass looks only at values with a run of capitalised words.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from aidmp.governance.names import lexicon, mask_names

PROSE_MIN_CHARS = 30
PROSE_MIN_WORDS = 5
PROSE_MIN_CJK_CHARS = 12
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"

_STREET_WORDS = (
    # English, Indian English
    "street|st|road|rd|avenue|ave|av|lane|ln|drive|dr|boulevard|blvd|court|ct|place|pl"
    "|square|sq|terrace|way|close|crescent|cres|parkway|pkwy|highway|hwy|circle|cir|trail"
    "|mews|row|walk|grove|gardens|hill|heights|wharf|quay|alley|plaza|loop|ridge|mall"
    "|apt|apartment|suite|ste|unit|flat|floor|box|studio|building|bldg|house|h\\.no"
    "|marg|nagar|chowk|ganj|path|colony|sector|zila|circle"
    # French
    "|rue|chemin|allée|allee|impasse|quai|boulevard|bd|cours|route|passage|avenue|place"
    # German, Dutch
    "|straße|strasse|str|weg|allee|platz|gasse|ring|damm|ufer|straat|laan|plein|gracht"
    "|kade|singel|dreef|hof|steeg|wijk|bus|stock|etage"
    # Italian
    "|via|viale|piazza|piazzale|corso|vicolo|contrada|strada|largo|borgo|rotonda|incrocio"
    "|canale|stretto|appartamento|piano|scala|interno"
    # Spanish, Portuguese
    "|calle|avenida|plaza|paseo|camino|carrer|carretera|pasaje|glorieta|ronda|rambla"
    "|cañada|alameda|urbanización|travesía|callejón|piso|puerta|escalera|rua|travessa"
    "|praça|rodovia|estrada|largo|viela|favela|vereda|ladeira|quadra|lote|apto|bloco|sala"
    "|jardim|conjunto|residencial|setor|morro|vila|sítio|fazenda|chácara|núcleo|trecho"
)
_STREET_RE = rf"(?i)(?:^|[^\w])(?:{_STREET_WORDS})\.?(?:$|[^\w])"
_COMPOUND_RE = (
    r"(?i)\b[A-Za-zÀ-ÿ]{2,}(?:straße|strasse|str\.|weg|allee|platz|gasse|ring|damm|ufer|straat"
    r"|laan|plein|gracht|kade|singel|dreef|hof|steeg)(?:$|[^\w])"
)
_CJK_ADDRESS_RE = r"[省市区县縣路街道号號座栋棟楼樓室丁目番地町村郡都道府県]"
_POSTCODE_RE = (
    r"[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}"  # UK
    r"|(?:^|\s)[A-Z]{2} [0-9]{5}(?:-[0-9]{4})?(?:$|\s)"  # US state + ZIP
    r"|(?:^|\n)[0-9]{4,5} [A-ZÀ-Ý]"  # 12345 Berlin, 75001 Paris (a line of its own)
    r"|[0-9]{4} ?[A-Z]{2}(?:$|\s)"  # NL
    r"|[0-9]{5}-[0-9]{3}"  # BR
    r"|-[0-9]{6}(?:$|\s)"  # IN (city-PIN)
)

# A house number and a street's words, either way round ("69 Brooks Loaf", "Pimweg 947",
# "Via Roma, 12"), the whole value.
_HOUSE_NUMBER_RE = (
    r"^[0-9]{1,5}[A-Za-z]?,? [A-ZÀ-Þ][^0-9\n]{2,40}$"
    r"|^[A-ZÀ-Þ][^0-9\n]{2,40}[ ,][ ]?[0-9]{1,5}[A-Za-z]?(?:[-/][0-9]{1,5})?$"
)

# Identifiers inside text (RE2-compatible).
EMAIL_IN_TEXT = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
IBAN_IN_TEXT = r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"
CARD_IN_TEXT = r"\b[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{4}(?:[ -]?[0-9]{1,7})?\b"
ID_IN_TEXT = (
    r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b"  # US SSN
    r"|\b[A-Za-z]{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-Da-d]\b"  # UK NINO
    r"|\b[A-Za-z]{6}[0-9]{2}[A-Za-z][0-9]{2}[A-Za-z][0-9]{3}[A-Za-z]\b"  # codice fiscale
)
DATE_IN_TEXT = (
    r"\b[0-9]{4}[-/.][0-9]{1,2}[-/.][0-9]{1,2}\b|\b[0-9]{1,2}[-/.][0-9]{1,2}[-/.][0-9]{4}\b"
)
PHONE_IN_TEXT = (
    r"(?:\+|\b00)[0-9]{1,3}[ .\-]?(?:\(0\)[ .\-]?)?(?:\([0-9]{1,5}\)[ .\-]?)?"
    r"[0-9][0-9 .\-/]{4,}[0-9]"
    r"(?:[ ]*(?:x|ext\.?)[ ]*[0-9]{1,6})?"
    r"|\(?\b0[0-9]{1,4}\)?[ .\-/]?[0-9]{2,4}[ .\-]?[0-9]{2,4}(?:[ .\-]?[0-9]{2,4})?\b"
    r"|\(?\b[0-9]{3}\)?[ .\-][0-9]{3}[ .\-][0-9]{4}\b(?:[ ]*(?:x|ext\.?)[ ]*[0-9]{1,6})?"
    r"|\([0-9]{3}\)[0-9]{3}-[0-9]{4}"
)
IP_IN_TEXT = r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b"
NUMBER_IN_TEXT = r"\b[0-9]{7,}\b"

MASKS: tuple[tuple[str, str], ...] = (
    (EMAIL_IN_TEXT, "<EMAIL>"),
    (IBAN_IN_TEXT, "<IBAN>"),
    (CARD_IN_TEXT, "<CARD>"),
    (ID_IN_TEXT, "<ID>"),
    (DATE_IN_TEXT, "<DATE>"),
    (PHONE_IN_TEXT, "<PHONE>"),
    (IP_IN_TEXT, "<IP>"),
    (NUMBER_IN_TEXT, "<NUMBER>"),
)
# What counts as an identifier inside prose, when a column is judged (names are masked,
# but a capitalised pair of words alone does not make a column free text with PII).
EMBEDDED = {
    "email": EMAIL_IN_TEXT,
    "phone": PHONE_IN_TEXT,
    "credit_card": CARD_IN_TEXT,
    "iban": IBAN_IN_TEXT,
    "ip_address": IP_IN_TEXT,
    "national_id": ID_IN_TEXT,
}
_CAPITALISED_PAIR = r"[A-ZÀ-Þ][a-zß-ÿ'’-]+\s+[A-ZÀ-Þ][a-zß-ÿ'’-]+"


def _contains(strings: pd.Series, pattern: str) -> np.ndarray:
    """Vectorised search with Arrow's RE2 (pandas' `.str` re-parses every pattern in
    Python first, which costs more than the search on a sample)."""
    values = strings.to_numpy(dtype=object)
    array = pa.array([v if isinstance(v, str) else None for v in values], type=pa.large_string())
    found = pc.match_substring_regex(array, pattern)
    return found.fill_null(False).to_numpy(zero_copy_only=False)


def address_mask(strings: pd.Series) -> np.ndarray:
    """Which values are address-like (see the module docstring)."""
    cjk = strings.str.count(_CJK_ADDRESS_RE).to_numpy(dtype=np.int64, na_value=0) >= 2
    digit = _contains(strings, r"[0-9]")
    long_enough = strings.str.len().to_numpy(dtype=np.int64, na_value=0) >= 6
    candidates = digit & long_enough & ~cjk
    found = cjk.copy()  # 梁路m座: Chinese and Japanese addresses need no digit
    if not candidates.any():
        return found
    positions = np.flatnonzero(candidates)
    some = strings.iloc[positions]
    word = _contains(some, _STREET_RE) | _contains(some, _COMPOUND_RE)
    shape = _contains(some, _HOUSE_NUMBER_RE) | _contains(some, r"\n")
    found[positions] = word | shape | _contains(some, _POSTCODE_RE)
    return found


def is_prose(strings: pd.Series) -> bool:
    """Whether a sample of non-blank strings reads as free text."""
    if strings.empty:
        return False
    chars = float(strings.str.len().median())
    words = float(strings.str.count(r"\s+").median()) + 1
    if chars >= PROSE_MIN_CHARS and words >= PROSE_MIN_WORDS:
        return True
    # Chinese and Japanese run their words together
    cjk = float(strings.str.count(rf"[{_CJK_CHARS}]").median())
    return cjk >= PROSE_MIN_CJK_CHARS


def embedded(strings: pd.Series) -> dict[str, int]:
    """How many values hold each type of identifier inside them."""
    counts = {kind: int(_contains(strings, pattern).sum()) for kind, pattern in EMBEDDED.items()}
    return {kind: n for kind, n in counts.items() if n}


def embedded_any(strings: pd.Series) -> np.ndarray:
    found = np.zeros(len(strings), dtype=bool)
    for pattern in EMBEDDED.values():
        found |= _contains(strings, pattern)
    return found


def mask_text(series: pd.Series, *, names: bool = True) -> pd.Series:
    """`series` as text with every identifier found replaced by its type; missing
    values stay missing."""
    text = series.astype("string")
    for pattern, label in MASKS:
        text = text.str.replace(pattern, label, regex=True)
    if names:
        candidates = _contains(text, _CAPITALISED_PAIR)
        if candidates.any():
            lex = lexicon()
            values = text[candidates].to_numpy(dtype=object)
            text.loc[candidates] = [mask_names(str(value), lex) for value in values]
    return text
