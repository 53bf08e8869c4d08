"""One round of private training at a node: plan σ, check the budget, train, charge.

This is the order DESIGN.md fixes: the ledger is asked before any data is touched,
and charged with exactly the mechanism that ran.
"""

from __future__ import annotations

import contextlib

from torch import nn

from aidmp.errors import PrivacyError
from aidmp.privacy.distributed import NoisyShare, distributed_shape, noisy_gradient_share
from aidmp.privacy.dp import RoundShape, check_delta, plan_noise_multiplier, train_dp
from aidmp.privacy.ledger import (
    METRICS,
    TRAINING,
    BudgetExhausted,
    Charge,
    Event,
    PrivacyLedger,
    ledger_lock,
)
from aidmp.privacy.metrics import (
    NoisyMetrics,
    bounded_sums,
    metrics_event,
    noisy_metrics,
    plan_metrics_noise,
)
from aidmp.privacy.noise import random_source
from aidmp.privacy.policy import DPPolicy
from aidmp.privacy.release import PrivacySpend, open_ledger
from aidmp.tasks.data import LocalData


def plan_sigma(
    ledger: PrivacyLedger, policy: DPPolicy, shape: RoundShape, run_id: str, rnd: int, rounds: int
) -> float:
    """σ for this round: the policy's own, or planned so this run's rounds fit the budget.

    The plan spans this run from the first round the ledger saw of it, on top of all
    earlier runs' spend, so it is the same in every round of a run. A node process may
    serve one message only, so the ledger is the cache: while nothing but this run has
    been charged since its first release, the plan is that release's σ, unless the
    round's shape or the accountant has changed.
    """
    if policy.noise_multiplier > 0:
        if policy.noise_multiplier > policy.max_noise_multiplier:
            raise PrivacyError(
                f"dp-noise-multiplier {policy.noise_multiplier:g} is above this node's own "
                f"cap, dp-max-noise-multiplier {policy.max_noise_multiplier:g}"
            )
        return policy.noise_multiplier
    entries = ledger.entries
    mine = [i for i, e in enumerate(entries) if e["run_id"] == run_id]
    trained = [i for i in mine if entries[i].get("release_kind", TRAINING) == TRAINING]
    if trained and all(e["run_id"] == run_id for e in entries[mine[0] :]):
        last = entries[trained[-1]]
        if last.get("mechanism") == Charge.mechanism and (
            last["sample_rate"],
            last["steps"],
            last.get("accountant"),
        ) == (shape.sample_rate, shape.steps, ledger.accountant):
            return float(last["noise_multiplier"])  # planned under the cap already
    earlier, remaining = _run_basis(ledger, run_id, rnd, rounds)
    if policy.metrics == "noised":
        # The run's evaluation figures are releases too: planned in, one per round, so
        # that training and figures together end the run within budget. (None left for
        # them: nor for training, and the planner below says so in its own words.)
        with contextlib.suppress(BudgetExhausted):
            sigma_m = metrics_sigma(ledger, policy, run_id, rnd, rounds)
            earlier = (*earlier, metrics_event(sigma_m, remaining))
    return plan_noise_multiplier(
        earlier,
        ledger.budget,
        ledger.delta,
        shape,
        remaining,
        ledger.accountant,
        policy.max_noise_multiplier,
    )


def _run_basis(
    ledger: PrivacyLedger, run_id: str, rnd: int, rounds: int
) -> tuple[tuple[Event, ...], int]:
    """What a run's plan stands on: every other run's releases, and the rounds of this run
    from the first the ledger saw of it (so the plan is the same in each of its rounds)."""
    entries = ledger.entries
    earlier = tuple(c for c, e in zip(ledger.events, entries, strict=True) if e["run_id"] != run_id)
    first = min([e["round"] for e in entries if e["run_id"] == run_id] + [rnd])
    return earlier, max(1, rounds - first + 1)


def metrics_sigma(
    ledger: PrivacyLedger, policy: DPPolicy, run_id: str, rnd: int, rounds: int
) -> float:
    """σ_m of this run's evaluation figures: planned so that the run's figures, one
    evaluation a round, cost `policy.metrics_share` of what earlier runs left
    (privacy/metrics.py); the same in every round of the run."""
    earlier, remaining = _run_basis(ledger, run_id, rnd, rounds)
    return plan_metrics_noise(
        earlier, ledger.budget, ledger.delta, remaining, policy.metrics_share, ledger.accountant
    )


def train_private_round(
    model: nn.Module,
    data: LocalData,
    *,
    policy: DPPolicy,
    dataset_id: str,
    run_id: str,
    server_round: int,
    num_rounds: int,
    epochs: int,
    job_id: str | None = None,
    message_id: str = "",
    batch_size: int,
    learning_rate: float,
    seed: int | None,
    proximal_mu: float = 0.0,
) -> tuple[float, PrivacySpend]:
    """Train `model` on `data` under DP-SGD and charge the ledger. Raises BudgetExhausted
    (or another PrivacyError) before touching the data if it may not train. `seed` is
    `release_seed`'s: None at a node with its own data (the CSPRNG)."""
    n = len(data.y_train)
    check_delta(policy.delta, n)
    with ledger_lock(policy.state_dir):  # one release at a time: see ledger_lock
        ledger = open_ledger(policy, dataset_id)
        shape = RoundShape.of(n, batch_size, epochs)
        sigma = plan_sigma(ledger, policy, shape, run_id, server_round, num_rounds)
        before = ledger.spent()
        ledger.check(shape.charge(sigma))
        loss, charge = train_dp(
            model,
            data.x_train,
            data.y_train,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            noise_multiplier=sigma,
            max_grad_norm=policy.max_grad_norm,
            proximal_mu=proximal_mu,
            grad_sample_mode=policy.grad_sample_mode,
        )
        after = ledger.charge(
            charge, run_id=run_id, round=server_round, job_id=job_id, message_id=message_id
        )
        release = ledger.releases_of(job_id or run_id, server_round)
        return loss, PrivacySpend(
            after, after - before, ledger.delta, ledger.budget - after, sigma, release
        )


def distributed_private_round(
    model: nn.Module,
    data: LocalData,
    *,
    policy: DPPolicy,
    dataset_id: str,
    run_id: str,
    server_round: int,
    num_rounds: int,
    sample_rate: float,
    min_contributions: int,
    job_id: str | None = None,
    message_id: str = "",
    seed: int | None,
) -> tuple[NoisyShare, PrivacySpend]:
    """This node's share of one distributed DP-SGD step (privacy/distributed.py), charged
    to the ledger as Charge(σ, q, 1): what central DP-SGD over the pooled rows charges.
    σ is planned as in local mode, by the same accountant, for the run's rounds of one
    step at the public q; over budget raises BudgetExhausted before the data is touched."""
    check_delta(policy.delta, len(data.y_train))
    with ledger_lock(policy.state_dir):
        ledger = open_ledger(policy, dataset_id)
        shape = distributed_shape(sample_rate)
        sigma = plan_sigma(ledger, policy, shape, run_id, server_round, num_rounds)
        before = ledger.spent()
        ledger.check(shape.charge(sigma))
        share = noisy_gradient_share(
            model,
            data.x_train,
            data.y_train,
            sample_rate=sample_rate,
            noise_multiplier=sigma,
            max_grad_norm=policy.max_grad_norm,
            min_contributions=min_contributions,
            seed=seed,
        )
        after = ledger.charge(
            shape.charge(sigma),
            run_id=run_id,
            round=server_round,
            job_id=job_id,
            message_id=message_id,
        )
        release = ledger.releases_of(job_id or run_id, server_round)
        return share, PrivacySpend(
            after, after - before, ledger.delta, ledger.budget - after, sigma, release
        )


def release_private_metrics(
    model: nn.Module,
    data: LocalData,
    *,
    policy: DPPolicy,
    dataset_id: str,
    run_id: str,
    server_round: int,
    num_rounds: int,
    job_id: str | None = None,
    message_id: str = "",
    seed: int | None,
) -> tuple[NoisyMetrics, PrivacySpend] | str:
    """Score `model` on the validation rows and release the figures noised, charged to the
    ledger before they leave (privacy/metrics.py); or why they are withheld.

    Withheld, the reply still goes (the example count is all it carries): when the ledger
    cannot afford the figures, and for a round whose figures this job has had already
    (a coordinator asking again gets nothing more to average the noise away with). `seed`
    is `release_seed`'s: None at a node with its own data (the CSPRNG)."""
    check_delta(policy.delta, len(data.y_train))
    with ledger_lock(policy.state_dir):  # as a training release: see ledger_lock
        ledger = open_ledger(policy, dataset_id)
        job = job_id or run_id
        if ledger.releases_of(job, server_round, METRICS):
            return f"round {server_round}'s evaluation figures were released already"
        try:
            sigma = metrics_sigma(ledger, policy, run_id, server_round, num_rounds)
            event = metrics_event(sigma)
            before = ledger.spent()
            ledger.check(event)
        except BudgetExhausted as exc:
            return f"the ledger cannot afford them ({exc})"
        correct, loss_sum = bounded_sums(model, data.x_val, data.y_val)
        figures = noisy_metrics(correct, loss_sum, len(data.y_val), sigma, random_source(seed))
        after = ledger.charge(
            event,
            run_id=run_id,
            round=server_round,
            job_id=job_id,
            message_id=message_id,
            kind=METRICS,
        )
        return figures, PrivacySpend(
            after, after - before, ledger.delta, ledger.budget - after, sigma, 1
        )
