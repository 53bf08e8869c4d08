"""`aidmp govern init DATA --out policy.yaml`: a first policy, inferred from the data.

It is a draft for the admin to review and edit, never a policy applied unread: it
infers each column's type, range or categories, finds personal data by value
patterns and column names, and tags each column identifier, quasi-identifier,
sensitive or public. The header of the file says so.

Values copied from the data into the draft (category lists) must be inert: a column
with a value that a spreadsheet would run as a formula, or one longer than a cell
may be (governance/cells.py), is drafted as plain text, without its values.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from aidmp.governance.cells import needs_escape
from aidmp.governance.load import check_column_names
from aidmp.governance.pii import scan_frame
from aidmp.governance.policy import DEFAULT_PII_ACTIONS, DIRECT_IDENTIFIERS, Policy

MAX_CATEGORIES = 50
# Columns that single people out in combination (Sweeney's classic triple and kin).
QUASI_NAMES = re.compile(r"(^|_)(age|sex|gender|race|ethnicity|zip|postcode|birth|dob)($|_)")
SENSITIVE_NAMES = re.compile(r"(diagnos|disease|health|income|salary|religio|sexual|hiv|icd)")
CONSENT_NAMES = re.compile(r"consent")


def _column_rule(series: pd.Series, name: str) -> dict[str, Any]:
    present = series.dropna()
    numeric = pd.to_numeric(present, errors="coerce")
    if len(present) and numeric.notna().all():
        is_int = bool((numeric == numeric.round()).all())
        rule: dict[str, Any] = {"type": "int" if is_int else "float"}
        rule["min"], rule["max"] = float(numeric.min()), float(numeric.max())
        if is_int:
            rule["min"], rule["max"] = int(rule["min"]), int(rule["max"])
    else:
        text = present.astype("string").str.strip()
        distinct = text.nunique()
        values = sorted(text.unique().tolist()) if distinct <= MAX_CATEGORIES else []
        if (
            distinct <= MAX_CATEGORIES
            and distinct <= max(2, 0.05 * len(text))
            and not any(needs_escape(v) for v in values)
        ):
            rule = {"type": "category", "categories": values}
        else:
            rule = {"type": "str"}
    rule["nullable"] = bool(series.isna().any())
    return rule


def draft_policy(frame: pd.DataFrame, label: str | None = None) -> dict[str, Any]:
    """The draft as a dict in the policy's schema (validated before it is returned)."""
    check_column_names([str(c) for c in frame.columns], "the data")
    label = label or str(frame.columns[-1])
    if label not in frame.columns:
        raise ValueError(f"label column '{label}' is not in the data")
    findings = scan_frame(frame)
    columns: dict[str, dict[str, Any]] = {}
    quasi: list[str] = []
    consent = None
    for name in frame.columns:
        rule = _column_rule(frame[name], str(name))
        lowered = str(name).lower()
        found = findings.get(name, [])
        if found:
            kind = found[0].pii_type
            rule["tag"] = "identifier" if kind in DIRECT_IDENTIFIERS else "quasi-identifier"
            rule["pii"] = DEFAULT_PII_ACTIONS[kind]
            rule.pop("categories", None)
            if rule["type"] == "category":
                rule["type"] = "str"
        elif QUASI_NAMES.search(lowered):
            rule["tag"] = "quasi-identifier"
        elif SENSITIVE_NAMES.search(lowered) and name != label:
            rule["tag"] = "sensitive"
        else:
            rule["tag"] = "public"
        if rule["tag"] == "quasi-identifier":
            quasi.append(str(name))
        if consent is None and CONSENT_NAMES.search(lowered):
            values = frame[name].dropna().astype("string").str.strip().str.lower().unique()
            accepted = [v for v in values if v in ("yes", "y", "true", "1", "granted")]
            consent = {"column": str(name), "accepted": accepted or ["yes"]}
        columns[str(name)] = rule
    draft: dict[str, Any] = {"version": 1, "label": label, "columns": columns}
    if consent:
        draft["consent"] = consent
    if quasi:
        draft["k_anonymity"] = {"quasi_identifiers": quasi, "k": 5, "action": "generalize"}
    draft |= {"min_rows": 50, "max_missing_rate": 0.2, "min_count": 10,
              "outliers": {"method": "robust", "threshold": 3.5, "action": "flag"}}  # fmt: skip
    Policy.model_validate(draft)  # a draft that would not load is a bug here, not the admin's
    return draft


def write_draft(draft: dict[str, Any], data_path: Path, out: Path) -> None:
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out, or remove it deliberately")
    header = (
        f"# Drafted by `aidmp govern init` from {data_path} on {dt.date.today()}.\n"
        "# Review every line before use: types, ranges, categories, tags and PII actions\n"
        "# were inferred from the data and may be wrong. Nothing here is trusted blindly.\n"
    )
    out.write_text(header + yaml.safe_dump(draft, sort_keys=False, allow_unicode=True))
