"""`aidmp govern init DATA --out policy.yaml`: a first policy, inferred from the data.

It is a draft for the admin to review and edit, never a policy applied unread: it
infers each column's type, range or categories, finds personal data by value
patterns and column names, and tags each column identifier, quasi-identifier,
sensitive or public. The header of the file says so, and lists the draft's notes:
why each quasi-identifier is one, which regions phone numbers were read in, and
every limit set from the data.

A draft passes the data it was drawn from: before it is returned it is applied to
that data (`govern`), and a limit the data would fail is widened to what the data
holds (a column's missing rate, the minimum row count), with a note saying so.

Quasi-identifiers are the demographic attributes that public records (electoral rolls,
census extracts, news) hold and that link a row to a person: age and date of birth,
sex and gender, postcode, race and ethnicity, marital status. Measurements (height,
weight, blood pressure), money and clinical values are not: an outsider rarely knows
them, and each one more shrinks every group towards one row. k-anonymity then
generalizes them column by column at the least loss (governance/pipeline.py), and the
notes give the rows and the information that costs on this data.

Values copied from the data into the draft (category lists) must be inert: a column
with a value that a spreadsheet would run as a formula, or one longer than a cell
may be (governance/cells.py), is drafted as plain text, without its values.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from aidmp.governance.cells import inert, needs_escape
from aidmp.governance.load import check_column_names
from aidmp.governance.pii import infer_phone_regions, scan_frame
from aidmp.governance.pipeline import govern
from aidmp.governance.policy import DEFAULT_PII_ACTIONS, DIRECT_IDENTIFIERS, Policy

MAX_CATEGORIES = 50
# Columns that single people out in combination (Sweeney's classic triple and kin):
# demographic attributes found in public records.
QUASI_NAMES = re.compile(
    r"(^|[_\W])(age|sex|gender|race|ethnicity|zip|zipcode|postcode|postal|birth|dob|yob"
    r")($|[_\W])"
)
# Quasi-identifiers come in groups of one attribute (age and date of birth; sex and
# gender), added to the draft group by group in this order while k-anonymity stays
# workable on the data: at most `MAX_QI_LOSS` of the information lost and
# `MAX_QI_SUPPRESSED` of the rows suppressed.
QUASI_GROUPS = (
    re.compile(r"(^|[_\W])(age|birth|dob|yob|birthdate|birthday)($|[_\W])"),
    re.compile(r"(^|[_\W])(sex|gender)($|[_\W])"),
    re.compile(r"(^|[_\W])(zip|zipcode|postcode|postal)($|[_\W])"),
    re.compile(r"(^|[_\W])(race|ethnicity)($|[_\W])"),
)
MAX_QI_LOSS = 0.25
MAX_QI_SUPPRESSED = 0.05
QI_SAMPLE_ROWS = 20_000
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


class Draft(dict[str, Any]):
    """A drafted policy (a plain mapping in the policy's schema) and its notes, which
    `write_draft` puts in the file's header."""

    notes: list[str]

    def __init__(self, content: dict[str, Any], notes: list[str]) -> None:
        super().__init__(content)
        self.notes = notes


# yaml.safe_dump writes a Draft as the mapping it is.
yaml.SafeDumper.add_representer(Draft, yaml.SafeDumper.represent_dict)

_WHY = {
    "email": "e-mail addresses", "phone": "phone numbers", "credit_card": "card numbers",
    "iban": "IBANs", "ip_address": "IP addresses", "us_ssn": "US SSNs",
    "cn_resident_id": "PRC resident IDs", "national_id": "national ID numbers",
    "name": "people's names", "address": "street addresses",
    "date_of_birth": "dates of birth", "postcode": "postcodes",
    "free_text": "free text with identifiers inside",
}  # fmt: skip
MIN_ROWS = 50


def _why(finding: Any) -> str:
    what = _WHY.get(finding.pii_type, finding.pii_type)
    if finding.source == "name":
        return f"{what} (by its name)"
    detail = f", {finding.detail}" if finding.detail else ""
    return f"{what} ({finding.match_rate:.0%} of sampled values{detail})"


def draft_policy(
    frame: pd.DataFrame, label: str | None = None, *, phone_regions: list[str] | None = None
) -> Draft:
    """The draft as a mapping in the policy's schema (validated, and passing `frame`).

    `phone_regions`: the site's regions for phone numbers written without a country
    code; by default those of the international numbers in `frame`.
    """
    check_column_names([str(c) for c in frame.columns], "the data")
    label = label or str(frame.columns[-1])
    if label not in frame.columns:
        raise ValueError(f"label column '{label}' is not in the data")
    notes: list[str] = []
    regions = list(phone_regions or infer_phone_regions(frame))
    if regions:
        how = "as given" if phone_regions else "from the numbers written with a country code"
        notes.append(f"phone numbers without a country code are read as {', '.join(regions)} "
                     f"({how}); set detection.phone_regions to this site's country")  # fmt: skip
    else:
        notes.append("no phone region: set detection.phone_regions to this site's country "
                     "(e.g. [GB]) so that national numbers are found")  # fmt: skip
    findings = scan_frame(frame, regions=regions)
    columns: dict[str, dict[str, Any]] = {}
    quasi: list[str] = []
    consent = None
    for name in frame.columns:
        rule = _column_rule(frame[name], str(name))
        lowered = str(name).lower()
        found = findings.get(name, [])
        if found and name != label:
            kind = found[0].pii_type
            if kind in DIRECT_IDENTIFIERS:
                rule["tag"] = "identifier"
            else:
                rule["tag"] = "sensitive" if kind == "free_text" else "quasi-identifier"
            rule["pii"] = DEFAULT_PII_ACTIONS[kind]
            rule.pop("categories", None)
            rule.pop("min", None), rule.pop("max", None)
            rule["type"] = "str"
            notes.append(f"{name}: {rule['tag']}, {rule['pii']}: {_why(found[0])}")
        elif QUASI_NAMES.search(lowered) and name != label:
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
    draft |= {"min_rows": MIN_ROWS, "max_missing_rate": 0.2, "min_count": 10,
              "outliers": {"method": "robust", "threshold": 3.5, "action": "flag"},
              "detection": {"phone_regions": regions}}  # fmt: skip
    Policy.model_validate(draft)  # a draft that would not load is a bug here, not the admin's
    if quasi:
        _choose_quasi(draft, frame, quasi, notes, findings)
    _fit_to_data(draft, frame, notes, findings)
    return Draft(draft, notes)


def _generalize_cost(
    draft: dict[str, Any], frame: pd.DataFrame, quasi: list[str], findings: Any
) -> tuple[float, float]:
    """(information lost, share of rows suppressed) when k-anonymity generalizes `quasi`."""
    trial = dict(draft) | {
        "k_anonymity": {"quasi_identifiers": quasi, "k": 5, "action": "generalize"},
        "min_rows": 1,
        "max_missing_rate": 1.0,
        "missing": "keep",
    }
    trial["columns"] = {c: {k: v for k, v in r.items() if k != "max_missing_rate"}
                        for c, r in draft["columns"].items()}  # fmt: skip
    result = govern(frame, Policy.model_validate(trial), secret=None, findings=findings)
    step = next(
        (s for s in result.report.get("steps", []) if s.get("step") == "k-anonymity-generalize"),
        None,
    )
    if step is None:
        return 0.0, 0.0
    return float(step["information_loss"]), step["rows_suppressed"] / max(len(frame), 1)


def _choose_quasi(
    draft: dict[str, Any],
    frame: pd.DataFrame,
    quasi: list[str],
    notes: list[str],
    findings: dict[str, Any],
) -> None:
    """A workable set of quasi-identifiers: group by group (QUASI_GROUPS), the first
    always, each further one only while the generalization it needs stays workable. A
    group left out is dropped, never kept unprotected."""
    sample, known = frame, findings
    known_or_none: dict[str, Any] | None = known
    if len(frame) > QI_SAMPLE_ROWS:
        sample = frame.iloc[np.linspace(0, len(frame) - 1, QI_SAMPLE_ROWS).astype(np.int64)]
        known_or_none = None  # the sample is scanned afresh
    groups: list[list[str]] = [[c for c in quasi if g.search(c.lower())] for g in QUASI_GROUPS]
    grouped = {c for group in groups for c in group}
    groups.append([c for c in quasi if c not in grouped])  # detected quasi-identifiers
    chosen: list[str] = []
    left_out: list[str] = []
    for group in filter(None, groups):
        trial = chosen + group
        loss, suppressed = _generalize_cost(draft, sample, trial, known_or_none)
        if not chosen or (loss <= MAX_QI_LOSS and suppressed <= MAX_QI_SUPPRESSED):
            chosen = trial
        else:
            left_out += group
            notes.append(
                f"{', '.join(group)}: dropped: as a further quasi-identifier, k=5 would lose "
                f"{loss:.0%} of the information and {suppressed:.0%} of the rows; to train on "
                "it, set its pii to generalize and add it under k_anonymity"
            )
    for column in left_out:
        draft["columns"][column]["pii"] = "drop"
    draft["k_anonymity"] = {"quasi_identifiers": chosen, "k": 5, "action": "generalize"}
    notes.append(
        f"quasi-identifiers: {', '.join(chosen)}: demographic attributes that public records "
        "hold and that link a row to a person; measurements, money and clinical values are "
        "left out: few outsiders know them"
    )


def _fit_to_data(
    draft: dict[str, Any], frame: pd.DataFrame, notes: list[str], findings: dict[str, Any]
) -> None:
    """Apply the draft to the data it came from; widen each limit the data fails to
    what the data holds, and say so in `notes`."""
    for _ in range(4):
        result = govern(frame, Policy.model_validate(draft), secret=None, findings=findings)
        changed = False
        for column, rate in result.missing_rates.items():
            rule = draft["columns"].get(column)
            limit = draft["max_missing_rate"] if rule is None else rule.get(
                "max_missing_rate", draft["max_missing_rate"])  # fmt: skip
            if rule is not None and rate > limit:
                widened = min(1.0, float(np.ceil(rate * 20) / 20))
                widened = widened if widened >= rate else 1.0
                rule["max_missing_rate"] = widened
                notes.append(f"{column}: {rate:.1%} missing in this file; its "
                             f"max_missing_rate is {widened:.0%} (the policy-wide "
                             f"{draft['max_missing_rate']:.0%} would fail it)")  # fmt: skip
                changed = True
        rows = len(result.frame) if result.admitted else _rows_left(result)
        if not changed and not result.admitted and rows < draft["min_rows"]:
            if draft.get("missing", "drop-rows") == "drop-rows" and result.removed.get("missing"):
                draft["missing"] = "impute"
                notes.append("missing: impute (dropping rows with a missing value would leave "
                             f"{rows} rows, under min_rows {draft['min_rows']})")  # fmt: skip
            else:
                draft["min_rows"] = max(1, rows)
                notes.append(f"min_rows: {draft['min_rows']} (this file has {rows} usable "
                             f"rows; {MIN_ROWS} is the usual floor)")  # fmt: skip
            changed = True
        if not changed:
            break
    result = govern(frame, Policy.model_validate(draft), secret=None, findings=findings)
    if not result.admitted:  # pragma: no cover - every limit above came from the data
        notes.append("this draft still fails its own data: " + "; ".join(result.local_reasons))
        return
    notes.append(_kanon_note(result, draft))
    notes.append("limits tighter than this file: none; ranges, categories and missing "
                 "rates were taken from it")  # fmt: skip


def _rows_left(result: Any) -> int:
    return int(result.rows_in - sum(result.removed.values()))


def _kanon_note(result: Any, draft: dict[str, Any]) -> str:
    used = len(result.frame)
    step = next(
        (s for s in result.report["steps"] if s.get("step") == "k-anonymity-generalize"), None
    )
    kept = f"on this file {used} of {result.rows_in} rows reach training"
    if step is None:
        return kept + ("; k-anonymity needs no generalization" if "k_anonymity" in draft else "")
    columns = ", ".join(f"{c} {v['kept']}" for c, v in step["columns"].items())
    return (
        f"{kept}; k-anonymity (k={step['k']}) keeps {columns}, suppresses "
        f"{step['rows_suppressed']} rows and loses {step['information_loss']:.0%} of the "
        "quasi-identifiers' information"
    )


def write_draft(draft: dict[str, Any], data_path: Path, out: Path) -> None:
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out, or remove it deliberately")
    header = (
        f"# Drafted by `aidmp govern init` from {data_path} on {dt.date.today()}.\n"
        "# Review every line before use: types, ranges, categories, tags and PII actions\n"
        "# were inferred from the data and may be wrong. Nothing here is trusted blindly.\n"
    )
    notes = getattr(draft, "notes", [])
    if notes:
        header += "#\n# Notes:\n" + "".join(
            f"# - {' '.join(inert(note, 400).split())}\n" for note in notes
        )
    body = yaml.safe_dump(dict(draft), sort_keys=False, allow_unicode=True)
    out.write_text(header + body)
