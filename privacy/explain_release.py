"""An explanation's release at a node: check the cap and the budget, compute, charge
(analytics/explain.py has the mechanism).

The order is an analytics query's (privacy/analytics_release.py): under the ledger lock
the ledger is opened and asked first, the rows are scored only if the release fits, and
the ledger is charged before the release is handed back to be sent. A release is one
"gaussian" entry of release kind "explanation" (its noisy count and clipped sums compose
exactly into one Gaussian of noise multiplier 1/μ), entered under the job's id.

The node decides how much an explanation may spend: the job's ε must be within the
node's `explain-max-epsilon`, and a node releases a job once: a coordinator that asks
again is declined (102) with the ledger untouched.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from aidmp.analytics.explain import ExplainPlan, ExplainRelease, release_explanation
from aidmp.analytics.mechanisms import NormalSource
from aidmp.privacy.ledger import BudgetExhausted, GaussianRelease, PrivacyLedger, ledger_lock
from aidmp.privacy.policy import DPPolicy
from aidmp.privacy.release import PrivacySpend, open_ledger

EXPLANATION = "explanation"  # the ledger's release kind of an explanation


def explain_release(plan: ExplainPlan) -> GaussianRelease:
    """The ledger's entry: the composite Gaussian (σ = 1/μ, Δ = 1)."""
    event = plan.event()
    return GaussianRelease(noise_std=event.noise_std, sensitivity=event.sensitivity, count=1)


def check_explain_cap(plan: ExplainPlan, cap: float) -> None:
    """Decline (102) a job asking more ε than this node allows one explanation."""
    if plan.job.epsilon > cap + 1e-12:
        raise BudgetExhausted(
            f"the explanation asks for eps {plan.job.epsilon:g} at this node; this node "
            f"allows at most eps {cap:g} per explanation (its own explain-max-epsilon)"
        )


def job_released(ledger: PrivacyLedger, job_id: str) -> bool:
    return any(
        e.get("job_id") == job_id and e.get("release_kind") == EXPLANATION for e in ledger.entries
    )


def release_node_explanation(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    groups: dict[str, list[int]],
    plan: ExplainPlan,
    *,
    policy: DPPolicy,
    cap: float,
    dataset_id: str,
    run_id: str,
    job_id: str,
    message_id: str,
    order_rng: np.random.Generator,
    noise: NormalSource,
) -> tuple[ExplainRelease, PrivacySpend]:
    """The release on (x, y), the node's validation rows, charged to the ledger before it
    is returned. Raises BudgetExhausted, ledger untouched, when the node's cap, an earlier
    release of the job or the remaining budget does not allow it."""
    check_explain_cap(plan, cap)
    event = explain_release(plan)
    with ledger_lock(policy.state_dir):
        ledger = open_ledger(policy, dataset_id)
        if job_released(ledger, job_id):
            raise BudgetExhausted(
                f"this node has already released explanation job {job_id[:16]}; a job is "
                "released once, so it never costs more than its stated eps"
            )
        before = ledger.spent()
        ledger.check(event)  # BudgetExhausted: nothing computed, nothing charged
        release = release_explanation(model, x, y, groups, plan, order_rng=order_rng, noise=noise)
        after = ledger.charge(
            event, run_id=run_id, round=1, job_id=job_id, message_id=message_id, kind=EXPLANATION
        )
        spend = PrivacySpend(
            after, after - before, ledger.delta, ledger.budget - after, event.noise_std, 1
        )
    return release, spend
