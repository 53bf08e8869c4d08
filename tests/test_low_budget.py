"""A nearly spent budget: the node may refuse the noise it would buy, the coordinator says so.

The walkthrough re-run with ε 0.004 of 3 left at each site trained three rounds at σ ≈ 2
and ended at the majority-class accuracy, with no word said.
"""

import logging

import pytest

from aidmp.config import RunConfig
from aidmp.errors import DeclineCode
from aidmp.privacy.dp import RoundShape, plan_noise_multiplier
from aidmp.privacy.ledger import BudgetExhausted, Charge, PrivacyLedger
from aidmp.privacy.node_round import plan_sigma
from aidmp.privacy.policy import DPPolicy
from aidmp.server.budget_watch import low_budget_sites
from aidmp.simulations.runner import prepare

SHAPE = RoundShape.of(num_rows=800, batch_size=64, epochs=1)


def _nearly_spent(folder, budget=3.0):
    """A ledger with all but about 3 % of its budget spent by an earlier run."""
    ledger = PrivacyLedger.open(folder, dataset="d", budget_epsilon=budget, delta=1e-5)
    sigma = plan_noise_multiplier((), 0.97 * budget, 1e-5, SHAPE, 10)
    ledger.charge(Charge(sigma, SHAPE.sample_rate, SHAPE.steps * 10), run_id="earlier", round=10)
    return PrivacyLedger.load(folder / "ledger.json")


def test_a_node_declines_rather_than_train_above_its_own_noise_cap(tmp_path):
    ledger = _nearly_spent(tmp_path)
    assert 0.95 * 3.0 < ledger.spent() < 3.0
    lenient = DPPolicy(epsilon=3.0, state_dir=tmp_path)
    # Without a cap below it the leftover buys a few rounds, at a large σ.
    sigma = plan_sigma(ledger, lenient, SHAPE, "new-run", 1, 3)
    assert sigma > 2.0
    capped = DPPolicy(epsilon=3.0, state_dir=tmp_path, max_noise_multiplier=2.0)
    with pytest.raises(BudgetExhausted, match="dp-max-noise-multiplier") as caught:
        plan_sigma(ledger, capped, SHAPE, "new-run", 1, 3)
    assert caught.value.decline_code == DeclineCode.BUDGET_EXHAUSTED


def test_a_fixed_sigma_above_the_nodes_cap_is_refused(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, dataset="d", budget_epsilon=3.0, delta=1e-5)
    policy = DPPolicy(epsilon=3.0, state_dir=tmp_path, noise_multiplier=4.0,
                      max_noise_multiplier=3.0)  # fmt: skip
    with pytest.raises(Exception, match="above this node's own cap"):
        plan_sigma(ledger, policy, SHAPE, "run", 1, 3)


def _round(rnd, **sites):
    return {"round": rnd, "privacy": {
        name: {"epsilon-spent": spent, "epsilon-round": this, "budget-left": 3.0 - spent,
               "noise-multiplier": sigma}
        for name, (spent, this, sigma) in sites.items()}}  # fmt: skip


def test_the_coordinator_names_a_site_that_began_the_job_nearly_spent():
    history = [
        _round(1, fresh=(0.4, 0.4, 1.1), spent=(2.9975, 0.0015, 2.3)),
        _round(2, fresh=(0.8, 0.4, 1.1), spent=(2.999, 0.0015, 2.3)),
    ]
    (site,) = low_budget_sites(history)
    assert site["institution"] == "spent" and site["round"] == 1
    assert site["left_at_start"] == pytest.approx(0.004)
    # A site that spends most of its budget during this job is not flagged.
    assert (
        low_budget_sites([_round(1, fresh=(0.3, 0.3, 1.1)), _round(9, fresh=(2.9, 0.3, 1.1))]) == []
    )


def test_a_simulation_over_spent_ledgers_warns_before_it_starts(tmp_path, caplog):
    out = tmp_path / "out"
    _nearly_spent(out / "institutions" / "institution-1")
    cfg = RunConfig(task="breast-cancer", partition="iid", out_dir=str(out), dp_epsilon=3.0)
    with caplog.at_level(logging.WARNING, logger="aidmp.simulations"):
        prepare(cfg, 3)
    (line,) = [r.getMessage() for r in caplog.records if "low privacy budget" in r.getMessage()]
    assert "institution-1" in line and "institution-0" not in line
