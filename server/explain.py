"""A federated explanation from the coordinator's side (analytics/explain.py has the
mechanism; client/explain_handler.py the node's side).

`run_explanation(grid, job, model, cfg)`:

1. plans the job (the σ every node will find) and prints it before any node is asked;
2. waits for `min-available-nodes` and sends every connected node the job and the
   global model in plaintext (`message_type="query.explain"`); a run under HE is
   refused here: its coordinator cannot read the model it would have to send;
3. adds the noisy counts and clipped sums of the nodes that answered and reports each
   column's importance with the standard error of the noise, and each institution's ε as
   its own ledger charged it.

It returns the federated part of explain.json; the caller writes the file.
"""

from __future__ import annotations

import math
import uuid
from logging import getLogger
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from aidmp.analytics.explain import (
    ExplainJob,
    ExplainPlan,
    ExplainRelease,
    combine_releases,
    plan_explanation,
)
from aidmp.config import RunConfig
from aidmp.errors import AidmpError, DeclineCode
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

MESSAGE_TYPE = "query.explain"  # the ClientApp's @app.query("explain")
JOB_RECORD = "explain"  # as client/explain_handler.py reads it
RELEASE_RECORD = "explanation"


def describe_plan(plan: ExplainPlan) -> str:
    job = plan.job
    return (
        f"explanation job {job.digest()[:12]}: {len(job.columns)} columns, loss differences "
        f"clipped to [-{job.bound:g}, {job.bound:g}], {job.repeats} random orders; eps "
        f"{job.epsilon:g} per institution at delta {job.delta:g} (PLD {plan.spent():.4f}); "
        f"count sigma {plan.count_std:.3g}, sum sigma {plan.sum_std:.3g} "
        f"(sensitivity {plan.sum_sensitivity:.3g})"
    )


def _release(answer: ConfigRecord, plan: ExplainPlan) -> ExplainRelease:
    """One node's release, checked; raises (and adds nothing) if it is unreadable."""
    if answer.get("digest") != plan.job.digest():
        raise ValueError("another job")
    count = answer["count"]
    sums = np.asarray(answer["sums"], dtype=np.float64)
    if not isinstance(count, int | float) or sums.shape != (len(plan.job.columns),):
        raise ValueError("another shape")
    if not (math.isfinite(float(count)) and np.isfinite(sums).all()):
        raise ValueError("not finite")
    return ExplainRelease(float(count), sums)


def run_explanation(
    grid: Grid,
    job: ExplainJob,
    model: dict[str, np.ndarray],
    cfg: RunConfig,
    *,
    run_id: str = "",
    quiet: bool = False,
) -> dict[str, Any]:
    """Ask every connected node for its release on `model` (the plaintext state dict)."""
    if cfg.he:
        raise AidmpError(
            "a federated explanation sends the global model to the institutions in "
            "plaintext, and this run is encrypted (he=true): its coordinator cannot read "
            "the model; explain a plaintext run"
        )
    plan = plan_explanation(job)
    if not quiet:
        print(describe_plan(plan))
    job_id = run_id or uuid.uuid4().hex[:16]
    nodes = connected_nodes(
        grid, cfg.min_available_nodes, cfg.round_timeout, cfg.registered_names()
    )
    content = RecordDict(
        {
            "config": round_config_for(cfg, 1, job_id),
            JOB_RECORD: ConfigRecord({"job": job.text(), "digest": job.digest()}),
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in model.items()}),
        }
    )
    messages, replies = ask_each(grid, nodes, content, MESSAGE_TYPE, cfg.round_timeout)
    sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    names: dict[int, str] = cfg.registered_names()  # then as each node names itself
    releases: list[ExplainRelease] = []
    by_institution: dict[str, dict[str, float | None]] = {}
    rejected: list[dict[str, object]] = []
    for reply in replies:
        if reply.has_error():
            continue
        records = reply.content.config_records
        node = records.get("node")
        name = replier_name(reply)
        names[reply.metadata.src_node_id] = name
        try:
            releases.append(_release(records[RELEASE_RECORD], plan))
        except (KeyError, TypeError, ValueError):
            reason = "rejected by the coordinator: no readable release"
            rejected.append({"institution": name, "code": DeclineCode.BAD_CONFIG, "reason": reason})
            continue
        figures = {} if node is None else {k: figure(node[k]) for k in node}
        by_institution[name] = {
            "epsilon_charged": figures.get("epsilon-round"),
            "epsilon_spent": figures.get("epsilon-spent"),
            "budget_left": figures.get("budget-left"),
            "delta": figures.get("delta"),
        }
    failures = _failures(replies, sent_to, names) + _silent(
        messages, replies, cfg.round_timeout, names
    )
    failures += rejected
    declined = {str(f["institution"]): f"code {f['code']}: {f['reason']}" for f in failures}
    return {
        "job": job.canonical() | {"digest": job.digest(), "id": job_id},
        "importance": combine_releases(releases, plan),
        "institutions_answered": sorted(by_institution),
        "declined": declined,
        "privacy": {
            "epsilon": job.epsilon,
            "delta": job.delta,
            "epsilon_pld": plan.spent(),
            "count_sigma": plan.count_std,
            "sum_sigma": plan.sum_std,
            "sum_sensitivity": plan.sum_sensitivity,
            "by_institution": by_institution,
        },
        "note": "importance: mean loss increase (cross-entropy, nats) when the column is "
        "taken from another row, each row's difference clipped to the job's bound; "
        "std_error: the noise's, not the rows' sampling",
    }
