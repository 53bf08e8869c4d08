"""The governance report as a page a privacy officer reads: when, for which job and round,
what was decided and why, what happened to the rows, k-anonymity as asked and as
achieved, outliers per column, each column's tag and findings, and what was sent.

Everything shown is escaped here; what came from the data was made inert before it
reached the report (governance/report.py).
"""

from __future__ import annotations

import html
import json
import math
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_STYLE = """body{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;color:#1f2328}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.admit{color:#1a7f37}.decline{color:#cf222e}.muted{color:#59636e}
header p{margin:.2em 0}"""


def _esc(value: object) -> str:
    return html.escape(str(value))


def _cell(value: object) -> str:
    """A table cell: numbers right-aligned, lists joined, nothing shown as JSON."""
    if value is None or value == "":
        return '<td class="muted">—</td>'
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return '<td class="muted">—</td>'
        if isinstance(value, int) or value.is_integer():
            shown = f"{int(value):,}"
        else:  # 4 significant digits, never in e-notation
            shown = f"{value:,.{max(0, 3 - len(str(int(abs(value)))) + 1)}f}"
        return f'<td class="n">{shown}</td>'
    if isinstance(value, list | tuple):
        return f"<td>{_esc(', '.join(str(v) for v in value)) or '—'}</td>"
    if isinstance(value, dict):
        return f"<td>{_esc('; '.join(f'{k}: {v}' for k, v in value.items()))}</td>"
    return f"<td>{_esc(value)}</td>"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], empty: str = "none") -> str:
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{_esc(empty)}</p>'
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>{body}</table>"


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "—"


def _what_for(report: dict[str, Any]) -> str:
    if report.get("job_id"):
        return f"job {report['job_id']}, round {report.get('round')}"
    return "a local check (no job)"


def _header(report: dict[str, Any]) -> str:
    decision = str(report["decision"])
    when = str(report.get("generated_at", "")).replace("T", " ").replace("Z", " UTC")
    return f"""<header><h1>Governance report</h1>
<p><b>{_esc(when or "time not recorded")}</b> · {_esc(_what_for(report))}</p>
<h2 class="{_esc(decision)}">Decision: {_esc(decision)}</h2>
<p>Data: <code>{_esc(report["source"])}</code></p>
<p>Policy SHA-256: <code>{_esc(report["policy_sha256"])}</code></p></header>"""


def _rows_section(report: dict[str, Any]) -> str:
    rows_in = int(report["rows_in"])
    steps = [
        (s["step"], s.get("rows_removed"), s.get("detail", ""))
        for s in report.get("steps", [])
        if "rows_removed" in s
    ]
    summary = _table(
        ("rows", "count", "share of input"),
        [
            ("in the data", rows_in, "100%"),
            ("used for training", report["rows_used"], _percent(report["rows_used"], rows_in)),
        ],
    )
    return (
        "<h3>Rows</h3>"
        + summary
        + _table(("step", "rows removed", "detail"), steps, "no step removed rows")
    )


def _k_section(report: dict[str, Any]) -> str:
    k = report.get("k_anonymity")
    if not k:
        return '<h3>k-anonymity</h3><p class="muted">not asked for by the policy</p>'
    achieved = k.get("achieved")
    verdict = (
        "no rows left to measure"
        if achieved is None
        else "met" if achieved >= k["k"] else "NOT met"
    )  # fmt: skip
    generalized = [
        (s.get("columns"), s.get("rows_suppressed"), s.get("information_loss"))
        for s in report.get("steps", [])
        if s.get("step") == "k-anonymity-generalize"
    ]
    out = "<h3>k-anonymity</h3>" + _table(
        ("k asked", "k achieved", "", "quasi-identifiers", "when not met"),
        [(k["k"], achieved, verdict, k.get("quasi_identifiers"), k.get("action"))],
    )
    if generalized:
        out += _table(("generalized to", "rows suppressed", "information loss"), generalized)
    return out


def _outlier_section(report: dict[str, Any]) -> str:
    spec = report.get("outliers") or {}
    flagged, rows_in = int(report.get("outliers_flagged", 0)), int(report["rows_in"])
    if spec.get("method") in (None, "none"):
        return '<h3>Outliers</h3><p class="muted">not checked (policy: none)</p>'
    how = (
        f"robust z-score over {spec.get('threshold')} on a column"
        if spec["method"] == "robust"
        else "isolation forest over the numeric columns; a row is counted at its most "
        "unusual column"
    )
    action = "removed" if spec.get("action") == "drop" else "flagged, kept for training"
    by_column = sorted((spec.get("by_column") or {}).items(), key=lambda kv: -kv[1])
    return (
        f"<h3>Outliers</h3><p>{flagged:,} row(s) ({_percent(flagged, rows_in)} of the input) "
        f"{_esc(action)}; method: {_esc(how)}. A row can be over the threshold on several "
        "columns.</p>"
        + _table(
            ("column", "rows", "share of input"),
            [(c, n, _percent(n, rows_in)) for c, n in by_column],
            "no column had outliers",
        )
    )


def _columns_section(report: dict[str, Any]) -> str:
    invalid: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for s in report.get("steps", []):
        if s.get("step") == "schema" and "column" in s:
            invalid[s["column"]] = int(s.get("invalid", 0))
            examples[s["column"]] = list(s.get("examples", []))
    outliers = (report.get("outliers") or {}).get("by_column") or {}
    training = set(report.get("training_columns", []))
    columns = list(report.get("tags", {})) or list(report.get("missing_rates", {}))
    rows = [
        (
            c,
            report.get("tags", {}).get(c),
            report.get("pii", {}).get(c),
            f"{report.get('missing_rates', {}).get(c, 0.0):.1%}",
            invalid.get(c),
            examples.get(c),
            outliers.get(c),
            c in training,
        )
        for c in columns
    ]
    return "<h3>Columns</h3>" + _table(
        ("column", "tag", "personal data (type:action)", "missing", "invalid values",
         "invalid examples", "outliers", "trained on"),
        rows,
    )  # fmt: skip


def _profile_section(report: dict[str, Any]) -> str:
    profile = report.get("profile") or {}
    numeric = [
        (c, p.get("mean"), p.get("std"), p.get("min"), p.get("max"))
        for c, p in profile.items()
        if "mean" in p
    ]
    categorical = [
        (c, p.get("distinct"), p.get("top")) for c, p in profile.items() if "distinct" in p
    ]
    if not profile:
        return ""
    return (
        "<h3>Training rows: profile</h3>"
        + _table(("column", "mean", "std", "min", "max"), numeric, "no numeric columns")
        + _table(("column", "distinct", "most frequent (count)"), categorical, "no other columns")
    )


def _pii_section(report: dict[str, Any]) -> str:
    rows = [
        (
            c,
            f.get("pii_type"),
            f.get("source"),
            f.get("match_rate"),
            f.get("sampled"),
            f.get("detail"),
        )
        for c, found in (report.get("pii_findings") or {}).items()
        for f in found
    ]
    return "<h3>Personal data found</h3>" + _table(
        ("column", "type", "found by", "match rate", "values sampled", "detail"),
        rows,
        "none found",
    )


def render_report(report: dict[str, Any]) -> str:
    reasons = "".join(f"<li>{_esc(r)}</li>" for r in report["reasons"]) or "<li>none</li>"
    sent = sorted(report["sent_to_coordinator"].items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8">
<title>Governance report: {_esc(report["decision"])}, {_esc(_what_for(report))}</title>
<style>{_STYLE}</style></head><body>
{_header(report)}
<h3>Reasons</h3><ul>{reasons}</ul>
{_rows_section(report)}
{_k_section(report)}
{_outlier_section(report)}
{_columns_section(report)}
{_pii_section(report)}
{_profile_section(report)}
<h3>Sent to the coordinator</h3>
<p class="muted">Aggregates only: counts under the policy's min_count are withheld, missing
rates are in steps of 5%.</p>
{_table(("key", "value"), sent)}
<p class="muted">This page stays at the institution.</p>
</body></html>
"""


def render_history(folder: Path) -> str:
    """The index of a node's reports, one per job and round, newest first (read from
    the index.jsonl that governance/report.py appends to)."""
    from aidmp.governance.report import HISTORY_INDEX

    latest: dict[str, dict[str, Any]] = {}
    index = folder / HISTORY_INDEX
    lines = index.read_text(encoding="utf-8").splitlines() if index.is_file() else []
    for seq, line in enumerate(lines):
        try:
            entry = json.loads(line) | {"seq": seq}
            latest[str(entry["page"])] = entry  # a round scanned twice: its last report
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash
    entries = sorted(
        latest.values(), key=lambda e: (str(e.get("time") or ""), e["seq"]), reverse=True
    )
    body = "".join(
        "<tr>"
        + "".join(
            _cell(v)
            for v in (
                str(e.get("time") or "").replace("T", " ").rstrip("Z"),
                e.get("job_id"), e.get("round"), e.get("decision"), e.get("rows_used"),
                "; ".join(map(str, e.get("reasons") or [])),
            )
        )
        + f'<td><a href="./{urllib.parse.quote(str(e["page"]))}">{_esc(e["page"])}</a></td></tr>'
        for e in entries
    )  # fmt: skip
    head = "".join(
        f"<th>{h}</th>"
        for h in ("time (UTC)", "job", "round", "decision", "rows used", "reasons", "report")
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Governance reports</title>
<style>{_STYLE}</style></head><body><h1>Governance reports</h1>
<p>One report for each job and round this node governed its data for, newest first.</p>
<table><tr>{head}</tr>{body}</table></body></html>
"""
