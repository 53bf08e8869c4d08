"""The coordinator's run report (report.json): config, every round, final figures,
privacy spend and declines, governance decisions, and HE sizes.

Built from the rounds' records (server/rounds.py `RoundRecord.as_dict`) once a run
ends; `run_federation` (server/federation.py) writes it.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import Strategy

from aidmp.config import RunConfig
from aidmp.errors import DeclineCode
from aidmp.privacy.distributed import distributed_summary
from aidmp.privacy.he.keys import inspect_context
from aidmp.server.budget_watch import low_budget_sites
from aidmp.server.closing import charged_in_skipped_rounds, skipped_rounds
from aidmp.strategies.client_dp import ClientLevelDP
from aidmp.strategies.encrypted import EncryptedFedAvg
from aidmp.tasks import get_task

REPORT_NAME = "report.json"


def run_report(
    cfg: RunConfig,
    strategy: Strategy,
    history: list[dict[str, Any]],
    *,
    resumed_from: int | None,
    job_id: str,
    runs: list[dict[str, Any]],
) -> dict[str, Any]:
    """The whole report of a job: `build_report` plus the job's runs, client-level DP
    spend, governance decisions and HE figures."""
    report = build_report(cfg, history, resumed_from=resumed_from)
    report |= {"job_id": job_id, "runs": runs}
    report["privacy"]["client_level"] = _client_level_spend(cfg, strategy)
    report["privacy"]["low_budget"] = low_budget_sites(history)
    report["governance"] = governance_report(history)
    report["he"] = he_report(strategy, history, model_size=task_size(cfg.task))
    skipped, charged = skipped_rounds(history)
    by_round = charged_in_skipped_rounds(history)
    report["skipped_rounds"] = {"rounds": skipped, "charged_sites": charged}
    warnings = [
        f"round {rnd}: {', '.join(sites)} spent privacy budget on updates nobody aggregated"
        for rnd, sites in by_round.items()
        if sites
    ]
    if warnings:
        report["warnings"] = warnings
    if cfg.dp_mode == "distributed" and isinstance(strategy, EncryptedFedAvg):
        report["privacy"]["distributed"] = _distributed_report(cfg, strategy, history)
    return report


def _distributed_report(
    cfg: RunConfig, strategy: EncryptedFedAvg, history: list[dict[str, Any]]
) -> dict[str, object]:
    """dp-mode=distributed: the shares' noise, and the HE error beside it."""
    spends = [spend for rec in history for spend in rec.get("privacy", {}).values()]
    sigmas = [float(s["noise-multiplier"]) for s in spends if "noise-multiplier" in s]
    return distributed_summary(
        cfg.dp_sample_rate,
        cfg.min_nodes,
        cfg.dp_max_grad_norm,
        sigmas,
        max((rec.get("train_replies", 0) for rec in history), default=0),
        strategy.weight_unit,
    )


def build_report(
    cfg: RunConfig, history: list[dict[str, Any]], resumed_from: int | None
) -> dict[str, Any]:
    """The coordinator's run report: config, every round, and the final figures."""
    last = history[-1] if history else {}
    return {
        **_privacy_report(cfg, history),
        "task": cfg.task,
        "strategy": cfg.strategy,
        "run_config": cfg.to_flower(),
        "rounds_completed": len(history),
        "resumed_from_round": resumed_from,
        "per_round": history,
        "final": {
            "accuracy": last.get("accuracy"),
            "loss": last.get("loss"),
            "source": "central" if last.get("central_accuracy") is not None else "federated",
            # The noise std of federated figures that nodes under DP sent noisy (None:
            # exact); each round's are in per_round (federated_accuracy_std, ...).
            "accuracy_std": last.get("accuracy_std"),
            "loss_std": last.get("loss_std"),
        },
    }


def governance_report(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Each institution's latest governance decision: its summary when admitted, its
    reasons when it declined (code 105)."""
    latest: dict[str, dict[str, Any]] = {}
    for rec in history:
        for name, summary in rec.get("governance", {}).items():
            latest[name] = {"round": rec["round"], **summary}
        for f in rec.get("train_failures", []):
            if f["code"] == DeclineCode.GOVERNANCE:
                latest[str(f["institution"])] = {
                    "round": rec["round"],
                    "decision": "decline",
                    "reason": f["reason"],
                }
    return {"by_institution": dict(sorted(latest.items()))}


def task_size(task_name: str) -> int:
    """Parameters (and buffers) in the task's model, as the HE packing flattens them."""
    return sum(t.numel() for t in get_task(task_name).build_model().state_dict().values())


def he_report(strategy: Strategy, history: list[dict[str, Any]], model_size: int) -> dict[str, Any]:
    """summary.json's `he`: parameters, and the ciphertext bytes that crossed the wire."""
    if not isinstance(strategy, EncryptedFedAvg):
        return {"enabled": False}
    received = [r["he_bytes_received"] for r in history if r.get("he_bytes_received")]
    uploads = [r["he_bytes_received"] / r["train_replies"] for r in history
               if r.get("he_bytes_received") and r.get("train_replies")]  # fmt: skip
    broadcast = [r["he_bytes_broadcast"] for r in history if r.get("he_bytes_broadcast")]
    info = inspect_context(strategy.context)
    return {
        "enabled": True,
        "params": {
            "poly_modulus_degree": info["poly_modulus_degree"],
            "coeff_mod_bit_sizes": info["coeff_mod_bit_sizes"],
            "scale_bits": info["scale_bits"],
            "security": info["security"],
        },
        "fingerprint": strategy.fingerprint,
        "model_parameters": model_size,
        # One node's update: bytes of ciphertext per model parameter.
        "bytes_per_param": (sum(uploads) / len(uploads) / model_size) if uploads else None,
        # All nodes' updates together, per round (mean over rounds that aggregated).
        "bytes_sent_per_round": (sum(received) / len(received)) if received else None,
        "bytes_broadcast_per_round": (sum(broadcast) / len(broadcast)) if broadcast else None,
    }


def _client_level_spend(cfg: RunConfig, strategy: Strategy) -> dict[str, Any] | None:
    """The coordinator-side accountant's ε for client-level DP, if the run used it."""
    if not isinstance(strategy, ClientLevelDP) or strategy.accountant is None:
        return None
    spent = strategy.accountant.get_privacy_spent()
    return {
        "epsilon": spent.epsilon,
        "delta": spent.delta,
        "releases": spent.num_releases,
        "noise_multiplier": cfg.client_dp_noise_multiplier,
        "clipping_norm": cfg.client_dp_clipping_norm,
    }


def _privacy_report(cfg: RunConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    """ε per institution as each last reported it, and every decline with its reason."""
    latest: dict[str, float] = {}
    deltas: set[float] = set()
    for rec in history:
        # A round's evaluation figures are charged after its training (privacy/metrics.py).
        spends = [*rec.get("privacy", {}).items(), *rec.get("metrics_privacy", {}).items()]
        for name, spend in spends:
            latest[name] = spend["epsilon-spent"]
            deltas.add(spend["delta"])
    declined = [
        {"round": rec["round"], "institution": f["institution"], "code": f["code"],
         "reason": f["reason"]}
        for rec in history
        for f in rec.get("train_failures", [])
        if f["code"] in (DeclineCode.BUDGET_EXHAUSTED, DeclineCode.PRIVACY_POLICY)
    ]  # fmt: skip
    return {
        "privacy": {
            "dp": cfg.dp,
            "mode": cfg.dp_mode if cfg.dp else None,
            "epsilon_budget": cfg.dp_epsilon if cfg.dp else None,
            "epsilon_by_institution": dict(sorted(latest.items())),
            "delta": (deltas.pop() if len(deltas) == 1 else sorted(deltas)) if deltas else None,
            "declined": declined,
        }
    }
