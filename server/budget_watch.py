"""Sites whose privacy budget is nearly spent: warned about, not silently trained.

A site plans σ so that the rounds left in a job spend what is left of its budget. With
little left, σ grows until the site's updates are mostly noise: the walkthrough re-run
with ε 0.004 of 3 left at every site trained three rounds at σ ≈ 2 and ended at the
majority-class accuracy. A site can refuse such rounds itself (its node policy's
`dp-max-noise-multiplier`, privacy/dp.py); the coordinator cannot see a site's ledger, but
from a site's first reply in a job it knows what share of its budget the site began the
job with, and says so, at once and in report.json.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Below this share of its budget at the start of a job, a site's σ is about twice or more
# what a fresh budget would give the same job (ε grows about as 1/σ under composition).
LOW_BUDGET_SHARE = 0.25


def low_budget_sites(history: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each site that began its part in the job with less than LOW_BUDGET_SHARE of its
    budget: its name, the round it first trained, what it had left then, and its σ."""
    found: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for rec in history:
        for name, spend in (rec.get("privacy") or {}).items():
            if name in seen:
                continue
            seen.add(name)
            try:
                spent, this_round = float(spend["epsilon-spent"]), float(spend["epsilon-round"])
                left = float(spend["budget-left"])
            except (KeyError, TypeError, ValueError):
                continue
            budget = spent + left
            before = budget - (spent - this_round)  # what it had when the job reached it
            if budget > 0 and before / budget < LOW_BUDGET_SHARE:
                found[name] = {
                    "institution": name,
                    "round": rec.get("round"),
                    "budget": budget,
                    "left_at_start": before,
                    "noise_multiplier": spend.get("noise-multiplier"),
                }
    return list(found.values())


def describe(site: Mapping[str, Any]) -> str:
    sigma = site.get("noise_multiplier")
    at = f" and trains at noise multiplier {sigma:.2f}" if isinstance(sigma, float) else ""
    return (
        f"{site['institution']} began this job with eps {site['left_at_start']:.3g} of its "
        f"{site['budget']:.3g} left ({site['left_at_start'] / site['budget']:.0%}){at}: its "
        "updates may be too noisy to learn from. Leave it out of this job, or let its "
        "institution decide on its budget (a site can cap its noise with "
        "dp-max-noise-multiplier)"
    )
