"""Governance reports: the full one stays at the institution, a summary may leave.

The summary holds aggregates only. Every count of rows below the policy's
`min_count` (other than zero, which describes no one) is withheld and named under
`withheld`. The number of rows in the input is never sent, and missing rates go in
steps of 5%, so a withheld count cannot be recovered by subtraction. It names only
columns the policy declares: a column found in the data and not in the policy (a
header line that is really a row of data would make one per value) is never named,
only the kinds of personal data found in such columns (`pii-undeclared`).

Whatever came from the data (column names, example values, frequent values) is made
inert before it goes into a report or the summary: no spreadsheet formula, no huge
cell (governance/cells.py). The HTML report escapes everything it shows.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from aidmp.atomic import atomic_write_bytes, atomic_write_json
from aidmp.governance.cells import inert, inert_tree
from aidmp.governance.pipeline import GovernanceResult
from aidmp.governance.policy import Policy

REPORT_JSON = "governance-report.json"
REPORT_HTML = "governance-report.html"
MAX_REASON_CHARS = 300


def coordinator_summary(
    result: GovernanceResult, policy: Policy, policy_sha256: str
) -> dict[str, Any]:
    """What the coordinator may see: flat, so it fits a Flower ConfigRecord."""
    floor = policy.min_count
    out: dict[str, Any] = {
        "decision": "admit" if result.admitted else "decline",
        "policy-sha256": policy_sha256,
    }
    withheld: list[str] = []

    def put(key: str, n: int) -> None:
        if n == 0 or n >= floor:
            out[key] = n
        else:
            withheld.append(key)

    if result.admitted:
        put("rows-used", len(result.frame))
    for step, n in sorted(result.removed.items()):
        put(f"removed-{step}", n)
    put("outliers-flagged", result.outliers_flagged)
    if result.k_achieved is not None:
        put("k-achieved", result.k_achieved)
    declared = policy.columns
    for column, n in sorted(result.missing_counts.items()):
        if column not in declared:
            continue
        if n == 0 or n >= floor:
            # In steps of 5%: an exact rate would give away the row count it divides by,
            # and with it any withheld count (rows-used + removed-* = that count).
            out[f"missing-rate:{inert(column)}"] = round(result.missing_rates[column] * 20) / 20
        else:
            withheld.append(f"missing-rate:{inert(column)}")
    out["pii-columns"] = sorted(f"{inert(c)}={a}" for c, a in result.pii.items() if c in declared)
    # Undeclared columns are dropped, never named: only the kinds of data found in them.
    out["pii-undeclared"] = sorted(
        {a.split(":", 1)[0] for c, a in result.pii.items() if c not in declared}
    )
    out["reasons"] = [inert(r, MAX_REASON_CHARS) for r in result.reasons]
    out["withheld"] = withheld
    return out


def local_report(
    result: GovernanceResult, policy: Policy, policy_sha256: str, source: str
) -> dict[str, Any]:
    """Everything, for the institution's own staff: exact counts, examples, findings.
    What came from the data (column names, example and frequent values) is inert."""
    from_data = inert_tree(
        {
            "tags": result.tags,
            "pii": result.pii,
            "missing_rates": result.missing_rates,
            **result.report,
        }
    )
    return {
        "source": source,
        "policy_sha256": policy_sha256,
        "decision": "admit" if result.admitted else "decline",
        "reasons": [inert(r, 4 * MAX_REASON_CHARS) for r in result.local_reasons],
        "rows_in": result.rows_in,
        "rows_used": len(result.frame) if result.admitted else 0,
        "removed": result.removed,
        "outliers_flagged": result.outliers_flagged,
        "k_anonymity": None
        if policy.k_anonymity is None
        else {"k": policy.k_anonymity.k, "achieved": result.k_achieved},
        **from_data,
        "sent_to_coordinator": coordinator_summary(result, policy, policy_sha256),
    }


def write_reports(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """The local report as JSON and as a page people can read; both stay on site."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / REPORT_JSON, folder / REPORT_HTML
    atomic_write_json(json_path, report)
    atomic_write_bytes(html_path, render_html(report).encode())
    return json_path, html_path


def _rows(mapping: dict[str, Any]) -> str:
    return "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v, default=str))}</td></tr>"
        for k, v in mapping.items()
    )


def render_html(report: dict[str, Any]) -> str:
    decision = report["decision"]
    colour = "#1a7f37" if decision == "admit" else "#cf222e"
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in report["reasons"]) or "<li>none</li>"
    steps = "".join(f"<tr><td>{html.escape(json.dumps(s, default=str))}</td></tr>"
                    for s in report.get("steps", []))  # fmt: skip
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Governance report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left}}
</style></head><body>
<h1>Governance report</h1>
<p>Data: {html.escape(str(report["source"]))}<br>Policy SHA-256:
<code>{html.escape(report["policy_sha256"])}</code></p>
<h2 style="color:{colour}">Decision: {html.escape(decision)}</h2>
<h3>Reasons</h3><ul>{reasons}</ul>
<h3>Rows</h3><table>{
        _rows(
            {
                "in": report["rows_in"],
                "used": report["rows_used"],
                **{f"removed: {k}": v for k, v in report["removed"].items()},
                "outliers flagged": report["outliers_flagged"],
            }
        )
    }</table>
<h3>Columns</h3><table>{
        _rows(
            {
                c: {
                    "tag": t,
                    "pii": report["pii"].get(c),
                    "missing": round(report["missing_rates"].get(c, 0.0), 4),
                }
                for c, t in report["tags"].items()
            }
        )
    }</table>
<h3>Steps</h3><table>{steps}</table>
<h3>Sent to the coordinator</h3><table>{_rows(report["sent_to_coordinator"])}</table>
<p>This page stays at the institution.</p>
</body></html>
"""
