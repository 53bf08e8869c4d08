"""Recall and precision of `aidmp govern init`'s tagging on generated tables in 11 locales.

For each locale (en_US en_GB de_DE fr_FR it_IT es_ES nl_NL zh_CN ja_JP pt_BR en_IN) a
table of --rows rows is generated with Faker (seeded; every identifier in it is made up):
people's names (full, first, last), e-mail, phone numbers in the locale's formats, an
MSISDN, the locale's national ID numbers, card numbers (every brand Faker has, and
12-digit Maestro), an IBAN, an IPv4 address, street and multi-line addresses, dates of
birth (ISO, YYYYMMDD, written out), and free-text notes with e-mail addresses and phone
numbers in a third of them; and benign columns of the kinds that used to be misread:
part numbers (896-8028-95), version strings (2.12.5.16), 9-digit invoice numbers,
10-digit account numbers, ISBN-10s, record and creation dates, amounts, counts,
categories, jobs and colours. The table is written to CSV and read back with
`load_table` (so phones, IDs and dates may load as integers, as a real file would), and
drafted with `draft_policy`, once with natural column names (phone, email, ...) and once
with neutral ones (col_00, col_01, ...).

A column counts as tagged when the draft gives it a PII action or the identifier tag.
Recall: tagged identifier columns over all identifier columns; precision: tagged
identifier columns over all tagged columns. The site's phone region is the locale's
country, as its policy would say (--no-region: none given, the draft infers it from
numbers written with a country code). Then `govern` applies each draft to its own file
(it must pass). --holdout also measures names with the locale's own lists taken out of
the name lexicon (which is built from Faker's lists: on Faker's names it is otherwise
measured on the names it holds).

Notes on the generated truth: Faker's en_GB NINOs use the administrative prefix ZZ;
Faker's Aadhaar numbers carry a Luhn digit, not Aadhaar's Verhoeff digit, so they are
made here with python-stdnum's Verhoeff; MSISDNs are the E.164 digits of the locale's
phone numbers (Faker's own are 13 random digits in most locales).

    python benchmarks/pii_detection.py [--rows 300] [--seed 0] [--no-region] [--holdout]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import phonenumbers
from faker import Faker
from stdnum import verhoeff
from stdnum.jp import in_ as jp_in

from aidmp.governance import names
from aidmp.governance.draft import draft_policy
from aidmp.governance.load import load_table
from aidmp.governance.pipeline import govern
from aidmp.governance.policy import Policy

LOCALES = {
    "en_US": "US", "en_GB": "GB", "de_DE": "DE", "fr_FR": "FR", "it_IT": "IT", "es_ES": "ES",
    "nl_NL": "NL", "zh_CN": "CN", "ja_JP": "JP", "pt_BR": "BR", "en_IN": "IN",
}  # fmt: skip
BENIGN = "benign"
LONG_FORMS = ("%d %B %Y", "%b %d, %Y", "%B %d, %Y", "%d-%b-%Y")


def _msisdn(fake: Faker, region: str) -> int:
    """E.164 digits of one of the locale's phone numbers that is a possible number."""
    for _ in range(100):
        try:
            number = phonenumbers.parse(fake.phone_number(), region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return int(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
    raise RuntimeError(f"no valid phone number from Faker's {region} formats")


def _national_ids(fake: Faker, locale: str, rng: random.Random) -> dict[str, tuple[str, object]]:
    """Column name -> (truth type, value) for the locale's national ID numbers."""
    if locale == "en_US":
        return {"ssn": ("us_ssn", fake.ssn())}
    if locale == "zh_CN":
        return {"resident_id": ("cn_resident_id", fake.ssn())}
    if locale in ("en_GB", "fr_FR", "it_IT", "nl_NL"):
        name = {"en_GB": "nino", "fr_FR": "nir", "it_IT": "codice_fiscale", "nl_NL": "bsn"}
        return {name[locale]: ("national_id", fake.ssn())}
    if locale == "es_ES":
        return {
            "nif": ("national_id", fake.nif()),
            "nie": ("national_id", fake.nie()),
            "nuss": ("national_id", fake.nuss()),
        }
    if locale == "pt_BR":
        return {"cpf": ("national_id", fake.ssn()), "cpf_formatted": ("national_id", fake.cpf())}
    if locale == "en_IN":
        body = str(rng.randint(2, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(10))
        aadhaar = body + verhoeff.calc_check_digit(body)
        return {"aadhaar": ("national_id", f"{aadhaar[:4]} {aadhaar[4:8]} {aadhaar[8:]}")}
    if locale == "ja_JP":
        body = "".join(str(rng.randint(0, 9)) for _ in range(11))
        return {"my_number": ("national_id", body + jp_in.calc_check_digit(body))}
    return {}


def generate(locale: str, rows: int, seed: int) -> tuple[pd.DataFrame, dict[str, str]]:
    """The table and each column's truth (a PII type, or BENIGN)."""
    fake = Faker(locale)
    fake.seed_instance(seed)
    english = Faker("en_US")
    english.seed_instance(seed + 1)
    rng = random.Random(seed)
    region = LOCALES[locale]
    records = []
    truth: dict[str, str] = {}
    for i in range(rows):
        dob = fake.date_of_birth(minimum_age=0, maximum_age=100)
        note = fake.sentence(nb_words=10)
        if i % 3 == 0:
            note += f" Contact {fake.email()} or {fake.phone_number()}."
        row: dict[str, tuple[str, object]] = {
            "full_name": ("name", fake.name()),
            "first_name": ("name", fake.first_name()),
            "last_name": ("name", fake.last_name()),
            "email": ("email", fake.email()),
            "phone": ("phone", fake.phone_number()),
            "msisdn": ("phone", _msisdn(fake, region)),
            "card_number": ("credit_card", english.credit_card_number()),
            "maestro": ("credit_card", english.credit_card_number(card_type="maestro")),
            "iban": ("iban", fake.iban()),
            "ip_address": ("ip_address", fake.ipv4_public()),
            "street_address": ("address", fake.street_address()),
            "address": ("address", fake.address()),
            "birth_date": ("date_of_birth", dob.isoformat()),
            "dob_compact": ("date_of_birth", dob.strftime("%Y%m%d")),
            "dob_long": ("date_of_birth", english.date_of_birth().strftime(LONG_FORMS[i % 4])),
            "notes": ("free_text", note),
            # benign columns
            "part_number": (BENIGN, fake.numerify("%##-####-##")),
            "version": (BENIGN, fake.numerify("#.##.#.##")),
            "invoice_number": (BENIGN, fake.numerify("%########")),
            "account_number": (BENIGN, fake.numerify("%#########")),
            "isbn10": (BENIGN, fake.isbn10(separator="")),
            "record_date": (BENIGN, fake.date_between("-8y").isoformat()),
            "created_date": (BENIGN, fake.date_this_decade().isoformat()),
            "amount": (BENIGN, round(rng.uniform(1, 5000), 2)),
            "quantity": (BENIGN, rng.randint(1, 40)),
            "category": (BENIGN, rng.choice(["A", "B", "C", "D"])),
            "job": (BENIGN, english.job()),
            "colour": (BENIGN, english.color_name()),
            "label": (BENIGN, rng.randint(0, 1)),
        }
        row |= _national_ids(fake, locale, rng)
        for column, (kind, _) in row.items():
            truth[column] = kind
        records.append({column: value for column, (_, value) in row.items()})
    frame = pd.DataFrame(records)
    label = frame.pop("label")
    frame["label"] = label
    return frame, truth


def neutral(frame: pd.DataFrame, truth: dict[str, str]) -> tuple[pd.DataFrame, dict[str, str]]:
    order = list(frame.columns[:-1])
    random.Random(7).shuffle(order)
    renamed = {column: f"col_{i:02d}" for i, column in enumerate(order)} | {"label": "label"}
    return frame[[*order, "label"]].rename(columns=renamed), {
        renamed[c]: kind for c, kind in truth.items()
    }


def tagged(rule: dict[str, object]) -> bool:
    return "pii" in rule or rule.get("tag") == "identifier"


def measure(locale: str, frame: pd.DataFrame, truth: dict[str, str], region: bool):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.csv"
        frame.to_csv(path, index=False)
        loaded = load_table(path)
    start = time.perf_counter()
    draft = draft_policy(loaded, "label", phone_regions=[LOCALES[locale]] if region else None)
    seconds = time.perf_counter() - start
    result = govern(loaded, Policy.model_validate(draft), secret=None)
    hits = {c: tagged(r) for c, r in draft["columns"].items() if c != "label"}
    return hits, result.admitted, seconds


def holdout_names(locale: str, rows: int, seed: int) -> dict[str, float]:
    """The name-like share of name columns judged with the locale's own lists left out
    of the lexicon (a column is reported from `detection.name_threshold`, 0.6)."""
    fake = Faker(locale)
    fake.seed_instance(seed)
    lexicon = names.build_lexicon(frozenset({locale}))
    return {
        kind: names.name_share([getattr(fake, kind)() for _ in range(rows)], lexicon)
        for kind in ("name", "first_name", "last_name")
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]),
    )  # fmt: skip
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--locales", default=",".join(LOCALES), help="comma-separated")
    parser.add_argument("--no-region", action="store_true", help="give the draft no region")
    parser.add_argument("--holdout", action="store_true", help="names without their locale")
    args = parser.parse_args()
    by_type: dict[tuple[str, str], list[bool]] = defaultdict(list)
    by_locale: dict[tuple[str, str], list[bool]] = defaultdict(list)
    false_pos: dict[str, list[str]] = defaultdict(list)
    tagged_count: dict[str, int] = defaultdict(int)
    passed, seconds = [], []
    for locale in args.locales.split(","):
        frame, truth = generate(locale, args.rows, args.seed)
        for naming in ("natural", "neutral"):
            table, kinds = (frame, truth) if naming == "natural" else neutral(frame, truth)
            hits, admitted, took = measure(locale, table, kinds, not args.no_region)
            passed.append(admitted)
            seconds.append(took)
            original = {v: k for k, v in neutral(frame, truth)[0].columns.to_series().items()}
            for column, hit in hits.items():
                kind = kinds[column]
                tagged_count[naming] += hit
                if kind == BENIGN:
                    if hit:
                        name = column if naming == "natural" else f"{column}"
                        false_pos[naming].append(f"{locale}:{original.get(name, name)}")
                    continue
                by_type[(kind, naming)].append(hit)
                by_locale[(locale, naming)].append(hit)
    rate = lambda hits: f"{sum(hits) / len(hits):.2f} ({sum(hits)}/{len(hits)})"  # noqa: E731
    print(f"{args.rows} rows per locale, seed {args.seed}, phone region "
          f"{'not given' if args.no_region else 'the locale country'}")  # fmt: skip
    print(f"\n{'type':16} {'natural names':>16} {'neutral names':>16}")
    for kind in sorted({k for k, _ in by_type}):
        print(f"{kind:16} {rate(by_type[(kind, 'natural')]):>16} "
              f"{rate(by_type[(kind, 'neutral')]):>16}")  # fmt: skip
    print(f"\n{'locale':16} {'natural names':>16} {'neutral names':>16}")
    for locale in args.locales.split(","):
        print(f"{locale:16} {rate(by_locale[(locale, 'natural')]):>16} "
              f"{rate(by_locale[(locale, 'neutral')]):>16}")  # fmt: skip
    for naming in ("natural", "neutral"):
        hits = [h for (_, n), v in by_type.items() if n == naming for h in v]
        fp = len(false_pos[naming])
        print(
            f"\n{naming}: recall {rate(hits)}; precision "
            f"{(tagged_count[naming] - fp) / max(tagged_count[naming], 1):.3f} "
            f"({fp} benign columns tagged{': ' + ', '.join(false_pos[naming]) if fp else ''})"
        )
    print(
        f"\ngovern check on each draft's own file: {sum(passed)}/{len(passed)} pass; "
        f"draft {sum(seconds) / len(seconds):.2f} s a table (median of {len(seconds)})"
    )
    if args.holdout:
        print("\nnames with the locale's own lists left out of the lexicon (name share):")
        for locale in args.locales.split(","):
            shares = holdout_names(locale, args.rows, args.seed)
            print(f"  {locale}: " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items()))


if __name__ == "__main__":
    main()
