"""What every release from private rows shares, whatever the mechanism: the dataset's
ledger, opened under the policy's budget; the seed of its noise; and the spend that
crosses the wire with it (DESIGN.md, Parties and trust).

Kept apart from DP-SGD (privacy/node_round.py) so that a node answering a statistics
query, a k-means round or a decryption loads neither torch nor Opacus: in deployment
every message starts a fresh `flwr-clientapp` process, and those imports are most of
its start-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from aidmp.errors import PrivacyError
from aidmp.privacy.ledger import PrivacyLedger
from aidmp.privacy.policy import DPPolicy


@dataclass(frozen=True)
class PrivacySpend:
    """What crosses the wire about privacy, per DESIGN.md: spend so far, this round, δ, left."""

    epsilon_spent: float
    epsilon_round: float
    delta: float
    budget_left: float
    noise_multiplier: float
    release: int  # 1, or 2, 3, ... for a round of a job released again after a restart

    def as_record(self) -> dict[str, float]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


def release_seed(round_seed: int, *, own_data: bool) -> int | None:
    """The seed of DP-SGD's Poisson sampling and noise for one release; None for none.

    A simulated institution's rows and seeds all belong to the researcher, so its noise
    follows the run seed and a run can be repeated exactly. A node with its own data
    has no seed: it samples and adds noise from a CSPRNG keyed afresh with secret
    randomness for every release (privacy/noise.py), for two reasons: the run seed
    comes from the coordinator, who could otherwise regenerate the noise and subtract
    it; and two releases under the same noise (a round re-run after a restart, from a
    model the coordinator may have changed) would let their difference cancel it.
    """
    return None if own_data else round_seed


def open_ledger(policy: DPPolicy, dataset_id: str) -> PrivacyLedger:
    """The dataset's ledger, accounted from now on by the policy's accountant.

    The budget (ε, δ) is fixed; the accountant is not part of it. A ledger kept under
    another accountant (RDP, the default before PLD) moves to the policy's, and the
    ledger records the change (`PrivacyLedger.use_accountant`).
    """
    ledger = PrivacyLedger.open(
        policy.state_dir,
        dataset=dataset_id,
        budget_epsilon=policy.epsilon,
        delta=policy.delta,
        accountant=policy.accountant,
    )
    if (ledger.budget, ledger.delta) != (policy.epsilon, policy.delta):
        raise PrivacyError(
            f"ledger {ledger.path} was opened with eps {ledger.budget:g}, delta "
            f"{ledger.delta:g}; the policy now says eps {policy.epsilon:g}, delta "
            f"{policy.delta:g}. A dataset's budget is fixed: restore the policy, or reset "
            "the ledger with `aidmp ledger reset`"
        )
    ledger.use_accountant(policy.accountant)
    return ledger
