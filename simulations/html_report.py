"""`aidmp report DIR`: one self-contained report.html for a run folder or a sweep folder.

Self-contained means it opens on a machine without a network: the figures are PNGs
inside the page (data: URIs), the style and the table sorting are inline, and nothing
in it names another file or a web address.
"""

from __future__ import annotations

import base64
import html
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from aidmp.errors import AidmpError, DeclineCode
from aidmp.simulations import report_charts as charts
from aidmp.simulations.sweep import ERROR_NAME, SUMMARY_NAME, SWEEP_NAME
from aidmp.simulations.sweep_results import (
    COORDINATOR_REPORT,
    RunRecord,
    figures,
    option_keys,
    read_run,
    read_sweep,
    result_rows,
    utility,
)

REPORT_HTML = "report.html"
EPSILON_KEY = "dp-epsilon"

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#222;max-width:1300px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td.t,th.t{text-align:left}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[data-dir=asc]::after{content:" \\25B2"}
table.sortable th[data-dir=desc]::after{content:" \\25BC"}
table.sortable td{white-space:nowrap}
tr.failed td{background:#fde8e8}
img{max-width:100%;border:1px solid #ddd;margin:6px 0}
details{margin:6px 0;border:1px solid #ddd;padding:4px 10px}
summary{cursor:pointer;font-weight:600}
pre{background:#f7f7f7;padding:8px;white-space:pre-wrap}
.muted{color:#666;font-size:13px}
.scroll{overflow-x:auto}
"""

# Click a header to sort by it; numbers by their data-v value, text otherwise.
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function(table){
  table.querySelectorAll("th").forEach(function(th, col){
    th.addEventListener("click", function(){
      var dir = th.dataset.dir === "asc" ? "desc" : "asc";
      table.querySelectorAll("th").forEach(function(h){ delete h.dataset.dir; });
      th.dataset.dir = dir;
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function(a, b){
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        var nx = parseFloat(x), ny = parseFloat(y), r;
        if (!isNaN(nx) && !isNaN(ny)) r = nx - ny;
        else if (!isNaN(nx)) r = -1; else if (!isNaN(ny)) r = 1;
        else r = String(x).localeCompare(String(y));
        return dir === "asc" ? r : -r;
      });
      rows.forEach(function(row){ body.appendChild(row); });
    });
  });
});
"""


def write_report(folder: Path) -> Path:
    """Write FOLDER/report.html for a sweep folder (sweep.json) or a run folder."""
    if (folder / SWEEP_NAME).is_file():
        title, body = sweep_page(folder)
    elif any((folder / name).is_file() for name in (SUMMARY_NAME, COORDINATOR_REPORT, ERROR_NAME)):
        record = read_run(folder)
        title, body = f"aidmp run {record.id}", run_section(record, open_=True)
    else:
        raise AidmpError(
            f"no {SUMMARY_NAME}, {COORDINATOR_REPORT} or {SWEEP_NAME} in {folder}: give the "
            "--out folder of `aidmp simulate`, `aidmp run` or `aidmp sweep`"
        )
    page = (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1>{body}<script>{SORT_JS}</script></body></html>"
    )
    path = folder / REPORT_HTML
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


# --- formatting ---------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        if math.isnan(value):
            return "–"
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"
    return str(value)


def _sort_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float) and math.isinf(value):
        return "1e308"
    return str(value)


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{encoded}">'


def table(headers: list[str], rows: list[list[Any]], *, sortable: bool = False) -> str:
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for value in row:
            align = "" if isinstance(value, int | float) and value is not None else ' class="t"'
            cells.append(f'<td{align} data-v="{_e(_sort_value(value))}">{_e(fmt(value))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _label(point: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    parts = [f"{k}={fmt(v)}" for k, v in point.items() if k not in skip]
    return ", ".join(parts) or "all runs"


# --- one run ------------------------------------------------------------------------------


def run_section(record: RunRecord, *, open_: bool = False) -> str:
    """Everything about one run: options, final figures, the four panels, every round."""
    parts = [f"<p class=muted>folder {_e(record.folder)} · status {_e(record.status)}</p>"]
    parts.append("<h3>Options</h3>")
    parts.append(table(["option", "value"], [[k, v] for k, v in record.options.items()]))
    if record.summary is None:
        parts.append(f"<h3>Error</h3><pre>{_e(record.error or 'not run yet')}</pre>")
        return _wrap(record, "".join(parts), open_)
    summary = record.summary
    fig = figures(summary)
    privacy = summary.get("privacy", {})
    he = summary.get("he", {})
    parts.append("<h3>Final figures</h3>")
    parts.append(
        table(
            ["figure", "value"],
            [
                [f"final accuracy ({fig['final_source']})", fig["final_accuracy"]],
                ["held-out accuracy of the final model", fig["heldout_accuracy"]],
                ["final loss", fig["final_loss"]],
                ["centralized baseline accuracy", fig["baseline_accuracy"]],
                ["ε budget per institution", privacy.get("epsilon_budget")],
                ["ε spent (largest)", fig["epsilon_spent_max"]],
                ["δ", privacy.get("delta")],
                ["rounds declined over privacy", fig["declined_rounds"]],
                ["rounds declined by governance", fig["governance_declines"]],
                ["HE", "on" if he.get("enabled") else "off"],
                ["HE bytes sent per round", he.get("bytes_sent_per_round")],
                ["HE bytes per parameter", he.get("bytes_per_param")],
                ["wall seconds", fig["wall_seconds"]],
            ],
        )
    )
    parts.append(_img(charts.run_figure(summary), f"run {record.id}: rounds"))
    parts.append("<h3>Every round</h3>")
    parts.append(_rounds_table(summary["per_round"]))
    eps = privacy.get("epsilon_by_institution", {})
    if eps:
        parts.append("<h3>ε per institution at the end</h3>")
        parts.append(table(["institution", "ε spent"], [[k, v] for k, v in eps.items()]))
    failures = [
        [rec["round"], f.get("institution"), f.get("code"), f.get("reason")]
        for rec in summary["per_round"]
        for f in rec.get("train_failures", [])
    ]
    if failures:
        parts.append("<h3>Declines and failures</h3>")
        parts.append(table(["round", "institution", "code", "reason"], failures))
    governance = summary.get("governance", {}).get("by_institution", {})
    if governance:
        parts.append("<h3>Governance: each institution's latest decision</h3>")
        rows = [
            [name, g.get("round"), g.get("decision"), g.get("reason") or g.get("rows-used")]
            for name, g in governance.items()
        ]
        parts.append(table(["institution", "round", "decision", "reason or rows used"], rows))
    return _wrap(record, "".join(parts), open_)


def _wrap(record: RunRecord, inner: str, open_: bool) -> str:
    acc = utility(record.summary)
    head = f"{record.id}: {record.status}" + (f", final accuracy {fmt(acc)}" if acc else "")
    opened = " open" if open_ else ""
    return (
        f'<details id="run-{_e(record.id)}"{opened}><summary>{_e(head)}</summary>{inner}</details>'
    )


def _rounds_table(per_round: list[dict[str, Any]]) -> str:
    eps = charts.epsilon_per_round(per_round)
    rows = []
    for i, rec in enumerate(per_round):
        codes = [f.get("code") for f in rec.get("train_failures", [])]
        decisions = [g.get("decision") for g in rec.get("governance", {}).values()]
        spent = [e for v in eps.values() if (e := v[i]) is not None]
        rows.append(
            [
                rec["round"],
                rec.get("accuracy"),
                rec.get("loss"),
                rec.get("train_replies"),
                sum(c in charts.PRIVACY_CODES for c in codes),
                sum(c == DeclineCode.GOVERNANCE for c in codes),
                f"{decisions.count('admit')} admit" if decisions else "–",
                max(spent) if spent else None,
                rec.get("he_bytes_received"),
            ]
        )
    headers = [
        "round", "accuracy", "loss", "trained", "declined: privacy", "declined: governance",
        "governance decisions", "ε spent (largest)", "HE bytes received",
    ]  # fmt: skip
    return table(headers, rows)


# --- a sweep ------------------------------------------------------------------------------


def sweep_page(folder: Path) -> tuple[str, str]:
    meta, records = read_sweep(folder)
    keys = option_keys(meta)
    grid = {k: v for k, v in meta.get("grid", {}).items()}
    done = [r for r in records if r.summary is not None]
    failed = [r for r in records if r.status == "failed"]
    parts = [
        "<p>",
        f"Sweep file {_e(meta.get('sweep_file'))}, engine {_e(meta.get('engine'))}: "
        f"{len(records)} runs, {len(done)} done, {len(failed)} failed, "
        f"{len(records) - len(done) - len(failed)} not run.</p>",
        table(
            ["", "options"],
            [
                ["base", _label(meta.get("base", {}))],
                ["grid", "; ".join(f"{k}: {', '.join(map(fmt, v))}" for k, v in grid.items())],
                ["seeds", ", ".join(map(str, meta.get("seeds", [])))],
            ],
        ),
    ]
    if done:
        parts.append(_comparisons(grid, done))
    parts.append("<h2>Results (click a header to sort)</h2>")
    rows = result_rows(keys, records)
    headers = list(rows[0]) if rows else ["id"]
    parts.append("<div class=scroll>")
    parts.append(table(headers, [list(r.values()) for r in rows], sortable=True))
    parts.append("</div>")
    parts.append("<h2>Every run</h2>")
    parts.extend(run_section(r) for r in records)
    return f"aidmp sweep {folder.name}", "".join(parts)


def _comparisons(grid: dict[str, list[Any]], done: list[RunRecord]) -> str:
    """The privacy–utility curve (or, without ε in the grid, a bar per configuration),
    accuracy per round, and the mean final accuracy by each grid key's values."""
    parts = []
    accuracy = {r.id: a for r in done if (a := utility(r.summary)) is not None}
    baselines = [figures(r.summary)["baseline_accuracy"] for r in done]
    baseline = statistics.fmean(b for b in baselines if b is not None) if any(baselines) else None
    if EPSILON_KEY in grid:
        curves: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in done:
            if r.id in accuracy:
                label = _label(r.grid_point, skip=(EPSILON_KEY,))
                curves[label][float(r.options.get(EPSILON_KEY, math.inf))].append(accuracy[r.id])
        parts.append("<h2>Privacy–utility</h2>")
        parts.append(_img(charts.privacy_utility_figure(curves, baseline), "privacy-utility curve"))
        eps_values = sorted({e for c in curves.values() for e in c})
        rows: list[list[Any]] = []
        for label, points in curves.items():
            cells: list[str | None] = []
            for e in eps_values:
                if e in points:
                    mean, sd = charts.mean_spread(points[e])
                    cells.append(f"{mean:.4f} ± {sd:.4f} (n={len(points[e])})")
                else:
                    cells.append(None)
            rows.append([label, *cells])
        parts.append(
            "<p class=muted>Final accuracy, mean ± sd over seeds, by ε per institution "
            f"(∞: no DP). Centralized baseline without DP: {fmt(baseline)}. Accuracy is the "
            "final model's on the held-out split (for HE runs, as the researcher measured it "
            "after decrypting the model); a run without a held-out figure counts with its "
            "federated one, which nodes under DP send noised.</p>"
        )
        parts.append(table(["", *(f"ε={fmt(e)}" for e in eps_values)], rows))
    else:
        groups: dict[str, list[float]] = defaultdict(list)
        for r in done:
            if r.id in accuracy:
                groups[_label(r.grid_point)].append(accuracy[r.id])
        parts.append("<h2>Final accuracy by configuration</h2>")
        parts.append(
            _img(
                charts.bars_figure(groups, "final accuracy (mean ± sd)", "Final accuracy"),
                "final accuracy by configuration",
            )
        )
    by_config: dict[str, list[list[float | None]]] = defaultdict(list)
    for r in done:
        by_config[_label(r.grid_point)].append(
            [rec.get("accuracy") for rec in r.summary["per_round"]]  # type: ignore[index]
        )
    parts.append("<h2>Accuracy per round</h2>")
    parts.append(_img(charts.rounds_figure(by_config), "accuracy per round"))
    for key, values in grid.items():
        if len(values) < 2:
            continue
        rows = []
        for value in values:
            value = math.inf if key == EPSILON_KEY and value in ("inf", None) else value
            runs = [r for r in done if r.grid_point.get(key) == value]
            accs = [accuracy[r.id] for r in runs if r.id in accuracy]
            spent = [figures(r.summary)["epsilon_spent_max"] for r in runs]
            seconds = [figures(r.summary)["wall_seconds"] for r in runs]
            stats = charts.mean_spread(accs) if accs else (None, None)
            rows.append([value, len(runs), *stats, _mean(spent), _mean(seconds)])
        parts.append(f"<h2>By {_e(key)} (all other options pooled)</h2>")
        parts.append(
            table(
                [key, "runs", "final accuracy (mean)", "sd", "ε spent (mean of largest)", "s"],
                rows,
            )
        )
    return "".join(parts)


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None
