"""People's names in a column, judged against a name lexicon, column by column.

The lexicon is the first and last names that the Faker package ships for each of its
locales (about 30,000 first and 28,000 last names in 80-odd locales: Latin, Cyrillic,
Greek, Arabic, Han, kana, Hangul, Devanagari...). Faker is a runtime dependency for that
reason alone; its modules of names are read once per process (about 0.1 s).

One value is name-like when, after titles (Dr, Mrs, Herr...), particles (van, de, da,
bin...) and suffixes (Jr, PhD) are set aside, it has one to five words, each shaped like
a name (a capital letter, then letters, apostrophes, dots or hyphens; or a run of Han or
kana), none of them a word that names a company or a place (Ltd, Street, Lake...), and
at least half of them in the lexicon. A run of two to four Han characters is name-like
when it starts with a family name in the lexicon (one or two characters) and the rest
are characters used in given names. A column is reported as `name` when the name-like
share of its sampled values reaches the policy's `detection.name_threshold`: any one
word can be a name ("Rose", "Paris"), a column of them is not.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from functools import lru_cache


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


TITLES = _words(
    "mr mrs ms miss mx dr prof sir dame lady lord rev herr frau fr m mme mlle sr sra srta "
    "dott dottssa sig sigra ing avv arch shri smt kumari mw dhr ir drs mag med dipl mba msc "
    "bsc ba ma"
)
PARTICLES = _words(
    "van von der den de del della di da das dos do du la le les ten ter zu bin binti ibn "
    "al el y e und die op het"
)
SUFFIXES = _words("jr sr ii iii iv md phd dds dvm esq mba")
# Words that make a value a company, an institution or a place, not a person.
NOT_PERSON_WORDS = _words(
    """
    ltd llc inc plc gmbh ag kg sa sas sarl spa srl bv nv co corp company group holdings
    partners associates and & und et e y sons brothers bros industries solutions services
    systems technologies international global university college school hospital clinic
    bank street st road rd avenue ave lane drive way square city town village county lake
    port mount mt fort north south east west new saint san santa los las station park
    ltda eireli epp filhos kgaa gbr ohg stichting koninklijke royal via viale piazza corso
    vicolo contrada strada largo calle avenida plaza paseo camino carrer rua travessa praça
    rodovia estrada rue chemin allée impasse quai boulevard straße strasse weg allee platz
    gasse straat laan plein gracht kade marg nagar chowk ganj sur mer bains norte sul fils
    frères hijos s.a s.a.s s.a.r.l s.p.a s.r.l s.l b.v n.v s.c s.n.c
    """
)
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_NAME_WORD = re.compile(rf"(?:[^\W\d_](?:[^\W\d_]|['’.\-])*|[{_CJK}]+)")
# A word with a dot inside is a title or a degree (Dipl.-Ing., Univ.Prof., B.Sc., Sig.ra)
# or initials (J.R.): set aside like a title.
_DOTTED = re.compile(r"[^\W\d_]+\.[-.\w]*")
_HAN_RUN = re.compile(rf"[{_CJK}]{{2,4}}")
_SPLIT = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class Lexicon:
    words: frozenset[str]  # first and last names, case-folded
    family: frozenset[str]  # CJK family names (one or two characters)
    given_chars: frozenset[str]  # characters of CJK given names


def _provider_names(exclude: frozenset[str]) -> tuple[set[str], set[str]]:
    import faker.providers.person as person

    first: set[str] = set()
    last: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        if module.name in exclude:
            continue
        provider = getattr(
            importlib.import_module(f"faker.providers.person.{module.name}"), "Provider", None
        )
        if provider is None:
            continue
        for attribute, into in (
            ("first_names", first), ("first_names_male", first), ("first_names_female", first),
            ("last_names", last), ("last_names_male", last), ("last_names_female", last),
        ):  # fmt: skip
            names = getattr(provider, attribute, None)
            if isinstance(names, list | tuple | dict | set | frozenset):
                into.update(str(name) for name in names)
    return first, last


def build_lexicon(exclude: frozenset[str] = frozenset()) -> Lexicon:
    """The lexicon from Faker's person providers, without the locales in `exclude`
    (e.g. {"ja_JP"}; benchmarks/pii_detection.py uses this to measure recall on names
    the lexicon does not hold)."""
    first, last = _provider_names(exclude)
    words = {name.casefold() for name in first | last if name}
    words -= NOT_PERSON_WORDS | PARTICLES | TITLES | SUFFIXES
    han = re.compile(rf"[{_CJK}]+")
    family = frozenset(name for name in last if han.fullmatch(name) and len(name) <= 2)
    given_chars = frozenset(char for name in first if han.fullmatch(name) for char in name)
    return Lexicon(frozenset(words), family, given_chars)


@lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    return build_lexicon()


def _han_name(word: str, lex: Lexicon) -> bool:
    if not _HAN_RUN.fullmatch(word):
        return False
    for cut in (1, 2):
        rest = word[cut:]
        given = 1 <= len(rest) <= 2 and all(char in lex.given_chars for char in rest)
        if given and word[:cut] in lex.family:
            return True
    return False


def name_like(value: str, lex: Lexicon | None = None) -> bool:
    """Whether one value is shaped like a person's name (see the module docstring)."""
    lex = lex or lexicon()
    text = value.strip()
    if not text or len(text) > 80 or any(char.isdigit() or char in "@/\\|_=+" for char in text):
        return False
    words = []
    for raw in _SPLIT.split(text):
        word = raw.strip(".")
        folded = word.casefold()
        if folded in NOT_PERSON_WORDS:
            return False
        if (
            not word
            or folded in TITLES
            or folded in SUFFIXES
            or folded in PARTICLES
            or _DOTTED.fullmatch(word)
        ):
            continue
        if not _NAME_WORD.fullmatch(word):
            return False
        # Every part of a double name is capitalised: "Duval-sur-Mer" is a place.
        if any(part[:1].islower() and part.casefold() not in PARTICLES for part in word.split("-")):
            return False
        words.append(word)
    if not 1 <= len(words) <= 5:
        return False
    known = 0
    for word in words:
        folded = word.casefold()
        if (
            folded in lex.words
            or any(part.casefold() in lex.words for part in word.split("-") if part)
            or _han_name(word, lex)
        ):
            known += 1
    return known >= 1 and 2 * known >= len(words)


def name_share(values: list[str], lex: Lexicon | None = None) -> float:
    """The name-like share of `values`."""
    if not values:
        return 0.0
    lex = lex or lexicon()
    return sum(name_like(value, lex) for value in values) / len(values)


def mask_names(text: str, lex: Lexicon | None = None) -> str:
    """Runs of two to four capitalised words of which at least one is in the lexicon
    become <NAME> (free text: "met Jane Smith today" -> "met <NAME> today")."""
    lex = lex or lexicon()

    def replace(match: re.Match[str]) -> str:
        words = match.group(0).split()
        if any(word.casefold() in NOT_PERSON_WORDS for word in words):
            return match.group(0)
        known = sum(word.casefold() in lex.words for word in words)
        return "<NAME>" if known >= 1 and 2 * known >= len(words) else match.group(0)

    return _CAPITALISED_RUN.sub(replace, text)


_CAPITALISED_WORD = r"[A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ'’-]+"
_CAPITALISED_RUN = re.compile(rf"\b{_CAPITALISED_WORD}(?:\s+{_CAPITALISED_WORD}){{1,3}}\b")
