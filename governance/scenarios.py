"""Governance scenarios for simulations: made-up PII and dirty rows at chosen institutions.

EVERY IDENTIFIER HERE IS INVENTED. Names come from short lists, e-mails are at
example.org, phone numbers use the 555 exchange kept for fiction, SSN-shaped
numbers come from a row counter, and dates of birth are derived from the row's age.
They exist only to show governance acting in a federation; the bundled datasets
themselves hold no personal identifiers.

A spec names what happens where, e.g. `pii:0,2;dirty:1;noconsent:3;broken:4`:
  pii        add made-up name, email, phone, ssn and date-of-birth columns
  dirty      duplicate 2% of rows, put an impossible age in 1%, a word in 1% of hours
  noconsent  30% of rows withdraw consent
  broken     the age column is missing (a schema failure: the node declines)
Every institution gets a `consent` column ("yes" unless noconsent says otherwise).

It lives in governance/, not simulations/, because the node applies it: a simulated
institution's ClientApp dirties its own rows before governing them.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd

from aidmp.errors import AidmpError

KINDS = ("pii", "dirty", "noconsent", "broken")
FIRST = ["Ada", "Ben", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Jun"]
LAST = ["Alder", "Brook", "Castell", "Dunmore", "Ellery", "Fenwick", "Garrow", "Hale"]


def parse_scenario(spec: str) -> dict[str, set[int]]:
    """`pii:0,2;dirty:1` -> {"pii": {0, 2}, "dirty": {1}}; '' -> {}."""
    out: dict[str, set[int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        kind, _, who = part.partition(":")
        if kind not in KINDS or not who:
            raise AidmpError(
                f"bad governance scenario '{part}'; write KIND:I,J;... with KIND one of "
                f"{', '.join(KINDS)}, e.g. 'pii:0,2;dirty:1'"
            )
        try:
            out.setdefault(kind, set()).update(int(i) for i in who.split(","))
        except ValueError:
            raise AidmpError(f"bad institution list in scenario '{part}'") from None
    return out


def made_up_pii(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The invented identifier columns, one value per row."""
    n = len(frame)
    first, last = rng.choice(FIRST, n), rng.choice(LAST, n)
    serial = rng.permutation(n) + 1
    today = date(2026, 1, 1)
    ages = pd.to_numeric(frame.get("age", pd.Series(40, index=frame.index)), errors="coerce")
    ages = ages.fillna(40).clip(0, 110).to_numpy()
    offsets = rng.integers(0, 365, n)
    dob = [today - timedelta(days=int(a * 365.25 + d)) for a, d in zip(ages, offsets, strict=True)]
    return pd.DataFrame(
        {
            "name": [f"{f} {s}" for f, s in zip(first, last, strict=True)],
            "email": [
                f"{f.lower()}.{s.lower()}{k}@example.org"
                for f, s, k in zip(first, last, serial, strict=True)
            ],  # fmt: skip
            "phone": [f"+1 555-01{k % 100:02d}-{k % 10000:04d}" for k in serial],
            "ssn": [f"{123 + k % 500:03d}-{12 + k % 80:02d}-{1000 + k % 8999:04d}" for k in serial],
            "date_of_birth": [d.isoformat() for d in dob],
        },
        index=frame.index,
    )


def apply_scenario(
    frame: pd.DataFrame, spec: dict[str, set[int]], institution: int, seed: int
) -> pd.DataFrame:
    """This institution's raw frame after the scenario (always with a consent column)."""
    rng = np.random.default_rng(seed * 7919 + institution)
    out = frame.copy()
    out["consent"] = "yes"
    if institution in spec.get("noconsent", set()):
        out.loc[rng.random(len(out)) < 0.3, "consent"] = "no"
    if institution in spec.get("pii", set()):
        out = pd.concat([out, made_up_pii(out, rng)], axis=1)
    if institution in spec.get("dirty", set()):
        n = len(out)
        out = out.astype({"age": "object", "hours-per-week": "object"})
        out.loc[out.index[rng.random(n) < 0.01], "age"] = 999
        out.loc[out.index[rng.random(n) < 0.01], "hours-per-week"] = "forty"
        dupes = out.sample(frac=0.02, random_state=int(rng.integers(1 << 31)))
        out = pd.concat([out, dupes], ignore_index=True)
    if institution in spec.get("broken", set()):
        out = out.drop(columns=["age"])
    return out
