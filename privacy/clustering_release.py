"""One round of a federated k-means job at a node: check the cap and the budget,
compute, charge (analytics/clustering.py has the mechanism).

The order is an analytics query's (privacy/analytics_release.py): under the ledger lock
the ledger is opened and asked first, the rows are assigned only if the round fits, and
the ledger is charged before the release is handed back to be sent. A round is charged
as one "gaussian" entry of release kind "clustering" (its noisy counts and centred sums
compose exactly into one Gaussian of noise multiplier 1/μ_round), entered under the
job's id and the round's number.

The node decides how much a job may spend: the whole job's ε (all its rounds) must be
within the node's `clustering-max-epsilon`, and the node releases at most `rounds`
rounds of a job, each once. A coordinator that asks for an extra round, or for a round
again, is declined (102) with the ledger untouched: the job never costs more than the ε
it stated.
"""

from __future__ import annotations

import numpy as np
import tenseal as ts

from aidmp.analytics.clustering import ClusterPlan, Release, release_round
from aidmp.privacy.analytics_release import noise_source
from aidmp.privacy.he.packing import encrypt_update
from aidmp.privacy.ledger import BudgetExhausted, GaussianRelease, PrivacyLedger, ledger_lock
from aidmp.privacy.policy import DPPolicy
from aidmp.privacy.release import PrivacySpend, open_ledger

CLUSTERING = "clustering"  # the ledger's release kind of a k-means round


def round_release(plan: ClusterPlan) -> GaussianRelease:
    """The ledger's entry for one round: the composite Gaussian (σ = 1/μ_round, Δ = 1)."""
    event = plan.round_event()
    return GaussianRelease(noise_std=event.noise_std, sensitivity=event.sensitivity, count=1)


def check_job_cap(plan: ClusterPlan, cap: float) -> None:
    """Decline (102) a job asking more ε, all rounds together, than this node allows."""
    if plan.job.epsilon > cap + 1e-12:
        raise BudgetExhausted(
            f"the clustering job asks for eps {plan.job.epsilon:g} at this node (all its "
            f"rounds); this node allows at most eps {cap:g} per job (its own "
            "clustering-max-epsilon)"
        )


def job_releases(ledger: PrivacyLedger, job_id: str) -> list[int]:
    """The rounds of `job_id` this ledger has charged, in order."""
    return [
        int(e["round"])
        for e in ledger.entries
        if e.get("job_id") == job_id and e.get("release_kind") == CLUSTERING
    ]


def release_cluster_round(
    points: np.ndarray,
    centroids: np.ndarray,
    plan: ClusterPlan,
    *,
    policy: DPPolicy,
    cap: float,
    dataset_id: str,
    run_id: str,
    job_id: str,
    server_round: int,
    message_id: str,
    seed: int | None,
    min_count: int,
) -> tuple[Release, PrivacySpend]:
    """Round `server_round` of the job on `points` (governed rows, scaled), charged to
    the ledger before it is returned. Raises BudgetExhausted, ledger untouched, when the
    node's cap, the job's stated rounds or the remaining budget does not allow it."""
    check_job_cap(plan, cap)
    if not 1 <= server_round <= plan.job.rounds:
        raise BudgetExhausted(
            f"the job states {plan.job.rounds} rounds and this message asks for round "
            f"{server_round}; this node releases only the rounds the job's ε was stated for"
        )
    event = round_release(plan)
    with ledger_lock(policy.state_dir):
        ledger = open_ledger(policy, dataset_id)
        done = job_releases(ledger, job_id)
        if server_round in done or len(done) >= plan.job.rounds:
            raise BudgetExhausted(
                f"this node has already released round {server_round} of clustering job "
                f"{job_id[:16]} ({len(done)} of its {plan.job.rounds} rounds); a round is "
                "released once, so the job never costs more than its stated eps"
            )
        before = ledger.spent()
        ledger.check(event)  # BudgetExhausted: nothing computed, nothing charged
        release = release_round(points, centroids, plan, noise_source(seed), min_count=min_count)
        after = ledger.charge(
            event,
            run_id=run_id,
            round=server_round,
            job_id=job_id,
            message_id=message_id,
            kind=CLUSTERING,
        )
        spend = PrivacySpend(
            after, after - before, ledger.delta, ledger.budget - after, event.noise_std, 1
        )
    return release, spend


def encrypt_release(context: ts.Context, release: Release) -> list[bytes]:
    """The release's counts and centred sums as CKKS ciphertexts (a withheld cluster's
    as zeros); the coordinator only adds them. Raises HeError if a value is beyond what
    the keys can sum."""
    return encrypt_update(context, release.vector(), 1.0)  # check slot 1: a sum of k holds k
