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

import datetime as dt
import re
from pathlib import Path
from typing import Any

from aidmp.atomic import atomic_write_bytes, atomic_write_json
from aidmp.governance.cells import inert, inert_tree
from aidmp.governance.pipeline import GovernanceResult
from aidmp.governance.policy import Policy
from aidmp.round_config import JOB_ID_PATTERN

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
    result: GovernanceResult,
    policy: Policy,
    policy_sha256: str,
    source: str,
    job_id: str = "",
    server_round: int | None = None,
) -> dict[str, Any]:
    """Everything, for the institution's own staff: exact counts, examples, findings.
    What came from the data (column names, example and frequent values) is inert.
    `job_id` and `server_round`: what the data was governed for (none: a local check)."""
    from_data = inert_tree(
        {
            "tags": result.tags,
            "pii": result.pii,
            "missing_rates": result.missing_rates,
            **result.report,
        }
    )
    spec = policy.outliers
    return {
        "generated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "job_id": job_id,
        "round": server_round,
        "source": source,
        "policy_sha256": policy_sha256,
        "decision": "admit" if result.admitted else "decline",
        "reasons": [inert(r, 4 * MAX_REASON_CHARS) for r in result.local_reasons],
        "rows_in": result.rows_in,
        "rows_used": len(result.frame) if result.admitted else 0,
        "removed": result.removed,
        "outliers_flagged": result.outliers_flagged,
        "outliers": {
            "method": spec.method,
            "threshold": spec.threshold,
            "action": spec.action,
            "by_column": inert_tree(result.outliers_by_column),
        },
        "k_anonymity": None
        if policy.k_anonymity is None
        else {
            "k": policy.k_anonymity.k,
            "achieved": result.k_achieved,
            "quasi_identifiers": inert_tree(list(policy.k_anonymity.quasi_identifiers)),
            "action": policy.k_anonymity.action,
        },
        **from_data,
        "sent_to_coordinator": coordinator_summary(result, policy, policy_sha256),
    }


HISTORY = "governance-reports"  # one report per job and round, beside the latest
HISTORY_INDEX = "index.jsonl"  # a line per report written, so the index reads one file


def history_entry(report: dict[str, Any], page: str) -> dict[str, Any]:
    """What the index lists of one report."""
    return {
        "time": report.get("generated_at"),
        "job_id": report.get("job_id"),
        "round": report.get("round"),
        "decision": report.get("decision"),
        "rows_used": report.get("rows_used"),
        "reasons": report.get("reasons", []),
        "page": page,
    }


def _append_line(path: Path, entry: dict[str, Any]) -> None:
    """Append one JSON line and make it durable (a torn last line is skipped on read)."""
    import json
    import os

    torn = path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with path.open("a", encoding="utf-8") as handle:
        # After a crash mid-line, start a new line: the torn one alone is skipped.
        handle.write(("\n" if torn else "") + json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_reports(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """The local report as JSON and as a page people can read; both stay on site.

    `governance-report.{json,html}` is the latest. A report made for a job's round is
    also kept as `governance-reports/<job>-round-<NNN>.{json,html}`, listed (newest
    first) in `governance-reports/index.html`, so no round's report is overwritten."""
    from aidmp.governance.report_html import render_history, render_report

    folder.mkdir(parents=True, exist_ok=True)
    page = render_report(report).encode()
    json_path, html_path = folder / REPORT_JSON, folder / REPORT_HTML
    atomic_write_json(json_path, report)
    atomic_write_bytes(html_path, page)
    job_id = str(report.get("job_id") or "")
    if job_id and re.fullmatch(JOB_ID_PATTERN, job_id):  # never a path
        history = folder / HISTORY
        stem = f"{report['job_id']}-round-{int(report.get('round') or 0):03d}"
        atomic_write_json(history / f"{stem}.json", report)
        atomic_write_bytes(history / f"{stem}.html", page)
        _append_line(history / HISTORY_INDEX, history_entry(report, f"{stem}.html"))
        atomic_write_bytes(history / "index.html", render_history(history).encode())
    return json_path, html_path
