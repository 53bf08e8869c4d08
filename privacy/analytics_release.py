"""One analytics query at a node: check the cap and the budget, compute, charge.

The order is the metrics release's (privacy/node_round.py): under the ledger lock the
ledger is opened and asked first, the data is read only if the query fits, and the
ledger is charged before the partials are handed back to be sent. A query is charged as
one "gaussian" entry (release kind "analytics"): its Gaussian releases compose exactly
into one Gaussian of noise multiplier 1/μ (analytics/mechanisms.py `composite_event`),
so the entry records the same privacy as the query's components one by one, and the
ledger's PLD accountant composes it with everything else the node released.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import tenseal as ts

from aidmp.analytics import QueryPlan, local_partials
from aidmp.analytics.mechanisms import NormalSource
from aidmp.privacy.he.packing import encrypt_update
from aidmp.privacy.ledger import BudgetExhausted, GaussianRelease, ledger_lock
from aidmp.privacy.noise import SecureRandom
from aidmp.privacy.policy import DPPolicy
from aidmp.privacy.release import PrivacySpend, open_ledger

ANALYTICS = "analytics"  # the ledger's release kind of a query's partials


def query_event(plan: QueryPlan) -> GaussianRelease:
    """The ledger's entry for `plan`: the composite Gaussian (σ = 1/μ, Δ = 1)."""
    event = plan.composite_event()
    return GaussianRelease(noise_std=event.noise_std, sensitivity=event.sensitivity, count=1)


def noise_source(seed: int | None) -> NormalSource:
    """The CSPRNG (ChaCha20, fresh key) when there is no seed: a node with its own data;
    else numpy's generator from the seed (a simulated institution: repeatable)."""
    return SecureRandom() if seed is None else np.random.default_rng(seed)


def check_query_cap(plan: QueryPlan, policy: DPPolicy) -> None:
    """Decline (code 102) a query asking more ε than this node lets one query spend."""
    if plan.epsilon > policy.analytics_max_epsilon + 1e-12:
        raise BudgetExhausted(
            f"the query asks for eps {plan.epsilon:g} at this node; this node allows at "
            f"most eps {policy.analytics_max_epsilon:g} per query (its own "
            "analytics-max-epsilon)"
        )


def release_query(
    frame: pd.DataFrame,
    plan: QueryPlan,
    *,
    policy: DPPolicy,
    dataset_id: str,
    run_id: str,
    job_id: str | None,
    message_id: str,
    seed: int | None,
    min_count: int,
) -> tuple[dict[str, Any], PrivacySpend]:
    """The query's noisy partials on `frame` (governed rows), charged to the ledger
    before they are returned. Raises BudgetExhausted, ledger untouched, when the node's
    cap or its remaining budget does not allow the query."""
    check_query_cap(plan, policy)
    event = query_event(plan)
    with ledger_lock(policy.state_dir):
        ledger = open_ledger(policy, dataset_id)
        before = ledger.spent()
        ledger.check(event)  # BudgetExhausted: nothing computed, nothing charged
        partial = local_partials(frame, plan, noise_source(seed), min_count=min_count)
        after = ledger.charge(
            event, run_id=run_id, round=1, job_id=job_id, message_id=message_id, kind=ANALYTICS
        )
        spend = PrivacySpend(
            after, after - before, ledger.delta, ledger.budget - after, event.noise_std, 1
        )
    return partial, spend


# --- under HE: the values leave as CKKS ciphertext, the withheld mask in plaintext -----


def _component_values(partial: dict[str, Any], plan: QueryPlan) -> list[float | None]:
    """Every released value of `partial` in the plan's order of statistics and components
    (a scalar component is one value, a vector its cells), None where withheld."""
    out: list[float | None] = []
    for stat in plan.statistics:
        comps = partial["statistics"][stat.name]["components"]
        for c in stat.components:
            value = comps[c.part]["value"]
            out.extend(value if isinstance(value, list) else [value])
    return out


def _with_values(partial: dict[str, Any], plan: QueryPlan, values: list[float | None]) -> dict:
    """`partial` with its values replaced, in `_component_values`' order."""
    out = json.loads(json.dumps(partial))
    it = iter(values)
    for stat in plan.statistics:
        comps = out["statistics"][stat.name]["components"]
        for c in stat.components:
            if isinstance(comps[c.part]["value"], list):
                comps[c.part]["value"] = [next(it) for _ in range(c.size)]
            else:
                comps[c.part]["value"] = next(it)
    return out


def encrypt_partial(
    context: ts.Context, partial: dict[str, Any], plan: QueryPlan
) -> tuple[list[bytes], dict[str, Any]]:
    """The partial's values as CKKS ciphertexts (a withheld value as 0), and its
    skeleton: the same partial with every released value 0.0 and every withheld one
    None, so the coordinator learns what was withheld (as it would in plaintext) and
    nothing else. Raises HeError if a value is beyond what the keys can sum."""
    values = _component_values(partial, plan)
    vector = np.array([0.0 if v is None else float(v) for v in values])
    chunks = encrypt_update(context, vector, 1.0)  # check slot 1: a sum of k holds k
    skeleton = _with_values(partial, plan, [None if v is None else 0.0 for v in values])
    return chunks, skeleton


def fill_skeletons(
    plan: QueryPlan, skeletons: dict[str, dict[str, Any]], total: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Partials for `combine` from the decrypted sum: each coordinate's sum goes to the
    first institution that released it, the others that released it add 0. Combining
    these gives the sum of the partials and, from the skeletons, which institutions
    contributed each value (so each standard error counts the right noises)."""
    masks = {inst: _component_values(s, plan) for inst, s in sorted(skeletons.items())}
    filled: dict[str, list[float | None]] = {inst: list(m) for inst, m in masks.items()}
    for i, value in enumerate(np.asarray(total, dtype=np.float64).tolist()):
        for inst in filled:
            if filled[inst][i] is not None:
                filled[inst][i] = value
                break
    return {inst: _with_values(skeletons[inst], plan, filled[inst]) for inst in filled}
