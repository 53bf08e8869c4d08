"""One federated run from the coordinator's side: set up, resume, run, report.

Both the ServerApp (`flwr run .`, deployment) and `aidmp simulate` call
`run_federation`, so simulation and deployment share one code path.
"""

from __future__ import annotations

import time
import uuid
from logging import getLogger
from pathlib import Path
from typing import Any

import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp import Grid

from aidmp.atomic import atomic_write_json
from aidmp.config import RunConfig
from aidmp.server.budget_watch import describe, low_budget_sites
from aidmp.server.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
    set_aside,
)
from aidmp.server.closing import fmt, fmt_noisy
from aidmp.server.report import REPORT_NAME, run_report
from aidmp.server.round_settings import round_config_for
from aidmp.server.rounds import CentralEval, RoundRecord, run_rounds
from aidmp.strategies import build_strategy, restore_strategy_state, strategy_state
from aidmp.strategies.encrypted import EncryptedFedAvg
from aidmp.tasks import get_task, load_dataset

log = getLogger("aidmp.server")


def _progress_line(
    rec: RoundRecord,
    num_rounds: int,
    total_s: float,
    min_nodes: int = 1,
    eta_s: float | None = None,
) -> str:
    failed = len(rec.train_failures)
    governance = ""
    if rec.governance:
        governance = "\n    governance: " + ", ".join(
            f"{name} {g['decision']} ({g.get('rows-used', '<min')} rows)"
            for name, g in sorted(rec.governance.items())
        )
    privacy = ""
    # Training's spend, then the round's evaluation figures' (charged after it) over it.
    spent = {name: p["epsilon-spent"] for name, p in rec.privacy.items()}
    spent |= {name: p["epsilon-spent"] for name, p in rec.metrics_privacy.items()}
    if spent:
        privacy = "\n    eps spent: " + ", ".join(
            f"{name} {eps:.2f}" for name, eps in sorted(spent.items())
        )
    declined = "".join(
        f"\n    declined: {f['institution']}: {f['reason']}" for f in rec.train_failures
    )
    refused = "".join(
        f"\n    {name} refused the run's {asked} (its own settings apply)"
        for name, asked in sorted(rec.refused.items())
    )
    return (
        f"round {rec.round:>3}/{num_rounds}  acc {fmt_noisy(rec.accuracy, rec.accuracy_std)}"
        f"  loss {fmt_noisy(rec.loss, rec.loss_std)}"
        f"  fed-acc {fmt_noisy(rec.federated_accuracy, rec.federated_accuracy_std)}"
        f"  train-loss {fmt(rec.train_loss)}"
        + (f"  (figures withheld by {rec.eval_withheld})" if rec.eval_withheld else "")
        + f"  nodes {rec.train_replies}/{rec.train_replies + failed}"
        f"  {rec.elapsed_s:5.1f}s (total {total_s:6.1f}s"
        + (f", about {eta_s:.0f}s to go)" if eta_s is not None and rec.round < num_rounds else ")")
        + (
            ""
            if rec.aggregated
            else f"  [skipped: {rec.train_replies} usable update(s), {min_nodes} needed; the "
            "model is kept]"
        )
        + governance
        + privacy
        + declined
        + refused
    )


def _central_evaluator(task_name: str) -> CentralEval:
    task = get_task(task_name)
    data = load_dataset(task_name)
    model = task.build_model()

    def evaluate(arrays: ArrayRecord) -> tuple[float, float]:
        model.load_state_dict(arrays.to_torch_state_dict())
        return task.evaluate(model, data.x_test, data.y_test)

    return evaluate


def run_federation(grid: Grid, cfg: RunConfig, run_id: str = "") -> dict[str, Any]:
    """Run (or resume) the federation described by `cfg`; returns the run report.

    `run_id` is Flower's id of this run. A resumed job keeps the job id of the run
    that started it, and its report lists every run that took part.
    """
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    task = get_task(cfg.task)
    strategy = build_strategy(cfg)
    torch.manual_seed(cfg.seed)  # the initial global model

    history: list[dict[str, Any]] = []
    if cfg.resume:
        ckpt = load_checkpoint(ckpt_path)
        check_resumable(ckpt, ckpt_path, cfg.to_flower())
        arrays = ArrayRecord({k: Array(v) for k, v in ckpt.model.items()})
        if isinstance(strategy, EncryptedFedAvg):
            strategy.open_state(arrays)  # refuses a checkpoint under other keys
        restore_strategy_state(strategy, ckpt.strategy_state)
        history = list(ckpt.meta.get("per_round", []))
        first_round = ckpt.round + 1
        job_id = str(ckpt.meta.get("job_id") or uuid.uuid4().hex[:16])
        runs = list(ckpt.meta.get("runs", []))
        log.info(
            "resuming job %s (%s) after round %d from %s; a site that released round %d "
            "before the stop releases it again, and its ledger charges it as a new release",
            job_id, cfg.task, ckpt.round, ckpt_path, first_round,
        )  # fmt: skip
    else:
        if ckpt_path.exists():
            # A restarted coordinator that forgot --resume must not lose the job.
            kept = set_aside(ckpt_path)
            log.warning(
                "starting a new job (not resuming): the previous checkpoint is kept as %s; "
                "to continue that job instead, run again with --resume (resume=true)",
                kept,
            )
        model = task.build_model()
        first_round = 1
        job_id, runs = run_id or uuid.uuid4().hex[:16], []
        if isinstance(strategy, EncryptedFedAvg):
            # The coordinator holds G_0 only as ciphertext, like every later global.
            arrays = strategy.initial_state(model.state_dict())
            log.info(
                "HE on: the global model is encrypted under key %s...", strategy.fingerprint[:16]
            )
        else:
            arrays = ArrayRecord(model.state_dict())
    if cfg.he and cfg.min_nodes < 3:
        log.warning(
            "he=true with min-nodes=%d: every node decrypts the global model, so in a round "
            "of two updates each node can subtract its own and read the other's (only that "
            "node's DP noise remains); set min-nodes to 3 or more",
            cfg.min_nodes,
        )

    runs.append({"run_id": run_id, "first_round": first_round})
    started = time.monotonic()
    prior_s = sum(float(r.get("elapsed_s", 0.0)) for r in history)

    def checkpoint(done: int, arrays: ArrayRecord) -> None:
        save_checkpoint(
            ckpt_path,
            Checkpoint(
                round=done,
                model={k: v.numpy() for k, v in arrays.items()},  # ciphertexts under HE
                strategy_state=strategy_state(strategy),
                meta={
                    "run_config": cfg.to_flower(),
                    "per_round": history,
                    "job_id": job_id,
                    "runs": runs,
                },
            ),
        )

    # Before any round: a crash in the first round of this run still leaves the job id
    # and this run on record, and `--resume` picks up from here.
    checkpoint(first_round - 1, arrays)

    warned: set[str] = set()

    def on_round_end(rec: RoundRecord, arrays: ArrayRecord) -> None:
        history.append(rec.as_dict())
        checkpoint(rec.round, arrays)
        # The time to go, from this job's rounds so far (each round's own elapsed_s).
        mean_s = sum(float(r.get("elapsed_s", 0.0)) for r in history) / len(history)
        eta = mean_s * (cfg.num_rounds - rec.round)
        total = prior_s + time.monotonic() - started
        log.info(_progress_line(rec, cfg.num_rounds, total, cfg.min_nodes, eta))
        for site in low_budget_sites(history):
            if site["institution"] not in warned:
                warned.add(site["institution"])
                log.warning("low privacy budget: %s", describe(site))

    if first_round > cfg.num_rounds:
        log.info("checkpoint already holds all %d rounds; nothing to run", cfg.num_rounds)
    else:
        run_rounds(
            grid,
            strategy,
            arrays,
            first_round=first_round,
            last_round=cfg.num_rounds,
            round_config=lambda rnd: round_config_for(cfg, rnd, job_id),
            timeout=cfg.round_timeout,
            seed=cfg.seed,
            central_eval=_central_evaluator(cfg.task) if cfg.central_eval else None,
            on_round_end=on_round_end,
            registered_names=cfg.registered_names(),
        )

    report = run_report(
        cfg,
        strategy,
        history,
        resumed_from=first_round - 1 if cfg.resume else None,
        job_id=job_id,
        runs=runs,
    )
    atomic_write_json(out_dir / REPORT_NAME, report)
    return report
