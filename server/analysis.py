"""A federated statistics query from the coordinator's side (DESIGN.md, "Analytics").

`run_analysis(grid, query, cfg)`:

1. resolves the query's public metadata (bounds, bins, categories) against the run's
   governance policy where the query leaves them out (simulation: --govern), plans it,
   and prints the budget table before any node is asked;
2. waits for `min-available-nodes`, sends the query (`message_type="query.analytics"`,
   its canonical JSON and digest, with a round config) to every connected node, and
   waits at most `round-timeout` seconds for the replies;
3. combines the partials (analytics.combine), with every number's standard error and
   95% interval; the ε of each institution is what that node says its ledger charged;
4. writes OUT/analysis.json (atomically), OUT/analysis.png and prints a table.

Both `aidmp analyze` (simulation) and the ServerApp (`analysis` run-config key) call it.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from logging import getLogger
from pathlib import Path
from typing import Any

import tenseal as ts
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from aidmp.analytics import CombineError, Query, QueryPlan, combine, plan_query, print_budget
from aidmp.atomic import atomic_write_json
from aidmp.config import RunConfig
from aidmp.errors import AidmpError, DeclineCode
from aidmp.governance.policy import load_policy
from aidmp.privacy.analytics_release import fill_skeletons
from aidmp.privacy.he.keys import fingerprint, key_file_for, load_context
from aidmp.privacy.he.packing import EncryptedSum
from aidmp.server.key_holder import Decrypt, sites_decrypt
from aidmp.server.round_settings import round_config_for
from aidmp.server.rounds import (
    _failures,
    _silent,
    ask_each,
    connected_nodes,
    figure,
    replier_name,
)

log = getLogger("aidmp.server")

ANALYSIS_NAME = "analysis.json"
ANALYSIS_PLOT = "analysis.png"
MESSAGE_TYPE = "query.analytics"  # the ClientApp's @app.query("analytics")
QUERY_RECORD = "query"  # as client/analytics_handler.py reads it
PARTIAL_RECORD = "analytics"
ANALYSIS_FORMAT = 1


def _public_context(cfg: RunConfig) -> tuple[ts.Context, str]:
    context = load_context(key_file_for(Path(cfg.he_keys), "coordinator"), "coordinator")
    return context, fingerprint(context)


def plan_for(query: Query, cfg: RunConfig) -> QueryPlan:
    """The query with every bound, bin and category stated (from the run's governance
    policy where the query leaves them out), planned. Nodes plan the same query and
    find the same σ."""
    policy = load_policy(Path(cfg.governance_policy))[0] if cfg.governance_policy else None
    return plan_query(query, policy)


def run_analysis(
    grid: Grid,
    query: Query,
    cfg: RunConfig,
    *,
    run_id: str = "",
    quiet: bool = False,
    decrypt: Decrypt | None = None,
) -> dict[str, Any]:
    """Ask every node for `query`, combine, write OUT/analysis.json and analysis.png.

    Under HE (`cfg.he`) the nodes send ciphertexts; this coordinator only adds them,
    with the public key, and hands the one sum to `decrypt(chunks, size, contributions)`:
    in simulation the researcher's; by default (a deployed coordinator, which holds no
    secret key) a site that answered decrypts it (server/key_holder.py).
    """
    out = Path(cfg.out_dir)
    public = _public_context(cfg) if cfg.he else None
    plan = plan_for(query, cfg)
    if not quiet:
        print_budget(plan)
    job_id = run_id or uuid.uuid4().hex[:16]
    canonical = json.dumps(plan.query.canonical(), sort_keys=True)
    content = RecordDict(
        {
            "config": round_config_for(cfg, 1, job_id),
            QUERY_RECORD: ConfigRecord(
                {"query": canonical, "digest": plan.digest, "he": bool(cfg.he)}
            ),
        }
    )
    nodes = connected_nodes(
        grid, cfg.min_available_nodes, cfg.round_timeout, cfg.registered_names()
    )
    started = time.monotonic()
    messages, replies = ask_each(grid, nodes, content, MESSAGE_TYPE, cfg.round_timeout)
    sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    encrypted = EncryptedSum(public[0]) if public is not None else None
    names: dict[int, str] = cfg.registered_names()  # then as each node names itself
    partials: dict[str, Any] = {}
    charged: dict[str, dict[str, float]] = {}
    refused: dict[str, str] = {}
    rejected: list[dict[str, object]] = []
    for reply in replies:
        if reply.has_error():
            continue
        records = reply.content.config_records
        node = records.get("node")
        name = replier_name(reply)
        names[reply.metadata.src_node_id] = name
        try:
            if public is None:
                partial = json.loads(str(records[PARTIAL_RECORD]["partial"]))
            else:  # the skeleton in plaintext; the values only added, never read
                answer = records[PARTIAL_RECORD]
                if answer.get("fingerprint") != public[1]:
                    raise ValueError("another key")
                partial = json.loads(str(answer["skeleton"]))
                assert encrypted is not None
                encrypted.add(list(answer["chunks"]), name)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, AidmpError):
            reason = "rejected by the coordinator: no readable partial"
            rejected.append({"institution": name, "code": DeclineCode.BAD_CONFIG, "reason": reason})
            continue
        partials[name] = partial
        if node is not None:
            charged[name] = {k: v for k in node if (v := figure(node[k])) is not None}
            if isinstance(node.get("refused"), str):
                refused[name] = str(node["refused"])
    failures = _failures(replies, sent_to, names) + _silent(
        messages, replies, cfg.round_timeout, names
    )
    failures += rejected
    declined = {str(f["institution"]): f"code {f['code']}: {f['reason']}" for f in failures}
    if encrypted is not None and encrypted.total is not None and public is not None:
        chunks = [v.serialize() for v in encrypted.total]
        size = sum(c.size for s in plan.statistics for c in s.components)
        if decrypt is None:  # a deployed coordinator: a site that answered decrypts the sum
            releases = {
                r.metadata.src_node_id: r.metadata.reply_to_message_id
                for r in replies
                if not r.has_error() and names.get(r.metadata.src_node_id) in partials
            }
            decrypt = sites_decrypt(grid, cfg, job_id, releases, public[1])
        partials = fill_skeletons(plan, partials, decrypt(chunks, size, encrypted.count))
    if len(partials) < 1:
        result = combine(plan, {}, declined=declined)
    else:
        try:
            result = combine(plan, partials, declined=declined)
        except CombineError as exc:
            raise AidmpError(f"the partials could not be combined: {exc}") from None
    privacy = result["privacy"]
    # What each node's own ledger charged for this query (it may have composed it with
    # earlier releases: the figure is its ledger's, not the coordinator's estimate).
    privacy["epsilon_by_institution"] = {
        name: c.get("epsilon-round") for name, c in sorted(charged.items())
    }
    privacy["ledger_by_institution"] = {
        name: {
            "epsilon_spent": c.get("epsilon-spent"),
            "budget_left": c.get("budget-left"),
            "delta": c.get("delta"),
        }
        for name, c in sorted(charged.items())
    }
    if refused:
        privacy["refused_by_institution"] = refused
    result = {
        "format": ANALYSIS_FORMAT,
        **result,
        "query": result["query"] | {"canonical": plan.query.canonical()},
        "institutions": {
            "asked": len(messages),
            "answered": sorted(partials),
            "declined": failures,
        },  # fmt: skip
        "job_id": job_id,
        "seconds": time.monotonic() - started,
        "he": bool(cfg.he),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / ANALYSIS_NAME, result)
    if not quiet:
        print(format_result(result))
    plot_analysis(result, out / ANALYSIS_PLOT)
    return result


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    if isinstance(value, int | float) and spec == ".4g" and abs(value) >= 1000:
        return f"{value:.0f}"  # counts: whole numbers, not 3.242e+04
    return format(value, spec)


def format_result(result: dict[str, Any]) -> str:
    """A readable table: one line per scalar statistic, one per bin or quantile."""
    lines = [f"{'statistic':<24} {'value':>12} {'± se':>10}  {'95% interval':<24} inst  withheld"]
    for name, s in result["statistics"].items():
        value, se, ci = s.get("value"), s.get("std_error"), s.get("ci95")
        tail = f"{s.get('institutions', 0):>4}  {s.get('withheld', 0):>8}"
        if not isinstance(value, list):
            interval = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "-"
            lines.append(f"{name[:24]:<24} {_fmt(value):>12} {_fmt(se):>10}  {interval:<24} {tail}")
            continue
        lines.append(f"{name[:24]:<24} {'':>12} {'':>10}  {'':<24} {tail}")
        for label, v, e, c in _cells(s):
            interval = f"[{_fmt(c[0])}, {_fmt(c[1])}]" if c else "-"
            lines.append(f"  {label[:22]:<22} {_fmt(v):>12} {_fmt(e):>10}  {interval:<24}")
    privacy = result["privacy"]
    lines.append(
        "eps per institution (its ledger's charge): "
        + ", ".join(f"{k} {_fmt(v, '.4f')}" for k, v in privacy["epsilon_by_institution"].items())
        + f"; delta {privacy['delta']:g}"
    )
    for name, reason in privacy["declined"].items():
        lines.append(f"declined: {name}: {reason}")
    return "\n".join(line.rstrip() for line in lines)


def _labels(s: dict[str, Any]) -> list[str]:
    if "bins" in s:
        b = s["bins"]
        return [f"[{b[i]:g}, {b[i + 1]:g})" for i in range(len(b) - 1)]
    if "categories" in s:
        return [str(c) for c in s["categories"]]
    if "q" in s:
        return [f"q{q:g}" for q in s["q"]]
    if "rows" in s:
        return [f"{r}/{c}" for r in s["rows"] for c in s["columns"]]
    return [str(i) for i in range(len(s.get("value") or []))]


def _flat(value: Any) -> list[Any]:
    """A histogram's or quantiles' list as it is; a cross-tab's grid row by row."""
    if not isinstance(value, list):
        return []
    return [x for row in value for x in row] if value and isinstance(value[0], list) else value


def _cells(s: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    values, errors = _flat(s.get("value")), _flat(s.get("std_error"))
    ci = s.get("ci95") or []
    if s.get("kind") == "crosstab":
        ci = [c for row in ci for c in row]
    labels = _labels(s)
    return [
        (labels[i] if i < len(labels) else str(i), v,
         errors[i] if i < len(errors) else None, ci[i] if i < len(ci) else None)
        for i, v in enumerate(values)
    ]  # fmt: skip


def plot_analysis(result: dict[str, Any], path: Path) -> None:
    """Histograms (and cross-tabs, quantiles) with 95% error bars; scalars as one panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = result["statistics"]
    vectors = [(n, s) for n, s in stats.items() if isinstance(s.get("value"), list)]
    scalars = [(n, s) for n, s in stats.items() if not isinstance(s.get("value"), list)]
    panels = len(vectors) + (1 if scalars else 0)
    if panels == 0:
        return
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    flat_axes = [ax for row in axes for ax in row]
    for ax, (name, s) in zip(flat_axes, vectors, strict=False):
        cells = _cells(s)
        xs = list(range(len(cells)))
        values = [v if v is not None else 0.0 for _, v, _, _ in cells]
        errors = [1.96 * e if e is not None else 0.0 for _, _, e, _ in cells]
        if s.get("kind") == "quantiles":
            ax.errorbar(xs, values, yerr=errors, fmt="o", capsize=3)
        else:
            ax.bar(xs, values, yerr=errors, capsize=3, color="#4c72b0")
        ax.set_xticks(xs, [c[0] for c in cells], rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{name} ({s.get('kind')}, ε {s.get('epsilon', 0):.2f} alone)", fontsize=9)
    if scalars:
        ax = flat_axes[len(vectors)]
        names = [n for n, _ in scalars]
        values = [s.get("value") or 0.0 for _, s in scalars]
        errors = [1.96 * (s.get("std_error") or 0.0) for _, s in scalars]
        ax.errorbar(values, range(len(names)), xerr=errors, fmt="o", capsize=3)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        positive = [v for v in values if v > 0]
        if len(positive) == len(values) and max(positive) > 50 * min(positive):
            ax.set_xscale("log")  # counts beside means
        ax.set_title("scalar statistics (95% intervals)", fontsize=9)
    for ax in flat_axes[panels:]:
        ax.axis("off")
    eps = result["query"]["epsilon"]
    fig.suptitle(f"query {result['query']['digest'][:12]}: ε {eps:g} per institution", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
