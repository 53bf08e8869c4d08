"""`aidmp simulate`: a whole federation on one machine, on Flower's simulation engine.

The ServerApp side runs `server.federation.run_federation` (the very function the
deployed ServerApp runs) in this process; each virtual institution runs our
ClientApp in a Ray actor. Everything a user can get wrong is checked before Ray
starts, so mistakes cost a second, not a minute.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from aidmp.atomic import atomic_write_json
from aidmp.client.app import app as client_app
from aidmp.config import RunConfig
from aidmp.errors import AidmpError
from aidmp.governance.policy import load_policy
from aidmp.governance.scenarios import parse_scenario
from aidmp.privacy.he.keys import key_file_for, load_context
from aidmp.privacy.he.state import EncryptedGlobal, unflatten_state
from aidmp.privacy.ledger import LEDGER_NAME, PrivacyLedger
from aidmp.server.budget_watch import LOW_BUDGET_SHARE, describe
from aidmp.server.checkpoint import CHECKPOINT_NAME, check_resumable, load_checkpoint
from aidmp.server.closing import PLOT_NAME, SUMMARY_NAME
from aidmp.server.federation import run_federation
from aidmp.server.plots import plot_metrics
from aidmp.server.report import REPORT_NAME
from aidmp.simulations.baseline import centralized_baseline
from aidmp.tasks import get_task, load_dataset
from aidmp.tasks.partition import parse_partition, partition_indices

log = logging.getLogger("aidmp.simulations")


def check_out_dir(out: Path) -> None:
    """Fail now, with the fix, if results could not be written at the end."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".aidmp-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise AidmpError(
            f"cannot write to --out {out} ({exc.strerror or exc}); choose a folder you can write"
        ) from None


def prepare(cfg: RunConfig, institutions: int) -> RunConfig:
    """Validate everything up front; return the config the federation will run with."""
    get_task(cfg.task)
    spec = parse_partition(cfg.partition)
    if institutions < 1:
        raise AidmpError("--institutions must be at least 1")
    if cfg.dp_mode == "distributed" and institutions < cfg.min_nodes:
        raise AidmpError(
            f"dp-mode=distributed with min-nodes={cfg.min_nodes} needs at least that many "
            f"institutions, not {institutions}: a sum of fewer noise shares is never used"
        )
    data = load_dataset(cfg.task)  # also reports a missing dataset package
    partition_indices(data.y_train, institutions, spec, cfg.seed)  # raises if a part is empty
    check_out_dir(Path(cfg.out_dir))
    if cfg.governance_policy or cfg.governance_scenario:
        _check_governance(cfg)
    if cfg.he:  # both halves of the key pair, since the researcher plays every side
        load_context(key_file_for(Path(cfg.he_keys), "coordinator"), "coordinator")
        load_context(key_file_for(Path(cfg.he_keys), "institution"), "institution")
    if cfg.resume:  # a mismatched checkpoint fails here, before Ray starts
        ckpt_path = Path(cfg.out_dir) / CHECKPOINT_NAME
        check_resumable(load_checkpoint(ckpt_path), ckpt_path, cfg.to_flower())
    if cfg.dp:
        _warn_low_budgets(cfg, institutions)
    # Wait for the whole (simulated) federation before round 1.
    return cfg.model_copy(
        update={
            "partition": str(spec),
            "min_available_nodes": institutions,
            "min_nodes": min(cfg.min_nodes, institutions),
        }
    )


def _warn_low_budgets(cfg: RunConfig, institutions: int) -> None:
    """Before the job starts: the researcher holds every simulated institution's ledger,
    so a nearly spent one (a second run in the same --out) is named now, not after a
    round of noise (server/budget_watch.py says the same from a site's first reply)."""
    root = Path(cfg.state_root) if cfg.state_root else Path(cfg.out_dir) / "institutions"
    for i in range(institutions):
        path = root / f"institution-{i}" / LEDGER_NAME
        if not path.is_file():
            continue
        try:
            ledger = PrivacyLedger.load(path)
            spent, budget = ledger.spent(), ledger.budget
        except AidmpError:
            continue  # the institution itself declines it, with the reason, in round 1
        if budget > 0 and (budget - spent) / budget < LOW_BUDGET_SHARE:
            site = {"institution": f"institution-{i}", "budget": budget,
                    "left_at_start": max(budget - spent, 0.0)}  # fmt: skip
            log.warning("low privacy budget: %s (ledgers from an earlier run in %s)",
                        describe(site), root)  # fmt: skip


BUNDLED_POLICIES = Path(__file__).parent / "policies"


def bundled_policy(task: str) -> Path:
    """The example policy shipped for a task (simulations/policies/TASK.yaml)."""
    path = BUNDLED_POLICIES / f"{task}.yaml"
    if not path.is_file():
        raise AidmpError(
            f"no bundled governance policy for task '{task}'; give one with --govern POLICY "
            "(draft it with `aidmp govern init`)"
        )
    return path


def _check_governance(cfg: RunConfig) -> None:
    if not cfg.governance_policy:
        raise AidmpError("a governance scenario needs a policy; add --govern")
    load_policy(Path(cfg.governance_policy))
    parse_scenario(cfg.governance_scenario)
    if get_task(cfg.task).raw_train is None:
        raise AidmpError(
            f"task '{cfg.task}' has no tabular schema for governance; use --task adult"
        )


def _backend_config(institutions: int, verbose: bool) -> dict[str, Any]:
    """One Ray actor per CPU, each serving many virtual institutions in turn.

    On this machine: a private Ray instance with as many CPUs as there are (no more than
    institutions). With `RAY_ADDRESS` set (`ray start --head` on one machine, `ray start
    --address HEAD:6379` on the others; README, "Many institutions"), the simulation
    joins that cluster instead and gets an actor per CPU of the whole cluster; Ray
    refuses a CPU count from a driver that joins a cluster, so none is given.
    """
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": verbose,  # actors' shutdown chatter otherwise
    }
    if os.environ.get("RAY_ADDRESS"):
        init_args["address"] = os.environ["RAY_ADDRESS"]
    else:
        init_args["num_cpus"] = min(os.cpu_count() or 1, institutions)
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args}


ENGINES = ("ray", "inprocess")


def simulate(
    cfg: RunConfig, institutions: int, *, verbose: bool = False, engine: str = "ray"
) -> dict[str, Any]:
    """Run the federation, the centralized baseline, and write summary.json and metrics.png.

    `engine="ray"` is Flower's simulation engine; `engine="inprocess"` runs every
    institution's ClientApp in this process, one after another (simulations/inprocess.py):
    the same coordinator and node code, without Ray's start-up and actors.
    """
    if engine not in ENGINES:
        raise AidmpError(f"unknown engine '{engine}'; choose one of: {', '.join(ENGINES)}")
    cfg = prepare(cfg, institutions)
    out = Path(cfg.out_dir)
    started = time.monotonic()

    if engine == "inprocess":
        from aidmp.simulations.inprocess import InProcessGrid

        flwr_logger = logging.getLogger("flwr")
        previous = flwr_logger.level
        if not verbose:
            flwr_logger.setLevel(logging.ERROR)  # as on Ray: Flower's sampling chatter
        try:
            grid = InProcessGrid(institutions)
            run_federation(grid, cfg, run_id=str(grid.run.run_id))
        finally:
            flwr_logger.setLevel(previous)
    else:
        server_app = ServerApp()

        @server_app.main()
        def _main(grid: Grid, context: Context) -> None:
            run_federation(grid, cfg, run_id=str(context.run_id))

        run_flower_simulation(server_app, institutions, verbose=verbose)
    federation_s = time.monotonic() - started

    report_path = out / REPORT_NAME
    if not report_path.is_file():
        raise AidmpError(
            f"the simulation ended without a report at {report_path}; rerun with --verbose"
        )
    report = json.loads(report_path.read_text())
    summary = {
        "task": cfg.task,
        "institutions": institutions,
        "rounds": cfg.num_rounds,
        "partition": cfg.partition,
        "seed": cfg.seed,
        "strategy": cfg.strategy,
        "run_config": cfg.to_flower(),
        "per_round": report["per_round"],
        "privacy": report["privacy"],
        "he": report["he"] | _held_out_by_researcher(cfg),
        "governance": report["governance"],
        "final": report["final"],
        "centralized_baseline": centralized_baseline(cfg),
        "resumed_from_round": report["resumed_from_round"],
        "federation_seconds": federation_s,
        "wall_seconds": time.monotonic() - started,
    }
    atomic_write_json(out / SUMMARY_NAME, summary)
    plot_metrics(summary, out / PLOT_NAME)
    return summary


def _held_out_by_researcher(cfg: RunConfig) -> dict[str, Any]:
    """Under HE the coordinator cannot evaluate. The researcher, who holds every key in
    a simulation, decrypts the final checkpoint afterwards and scores it on the
    held-out split, so HE and plaintext runs can be compared on the same figure."""
    if not cfg.he:
        return {}
    secret_file = key_file_for(Path(cfg.he_keys), "institution")
    if not secret_file.is_file():
        return {}  # the researcher was given only the coordinator's key
    params, _ = EncryptedGlobal.from_arrays(
        load_checkpoint(Path(cfg.out_dir) / CHECKPOINT_NAME).model
    ).decrypt(load_context(secret_file, "institution"))
    task = get_task(cfg.task)
    model = task.build_model()
    model.load_state_dict(unflatten_state(params, model.state_dict()))
    data = load_dataset(cfg.task)
    loss, accuracy = task.evaluate(model, data.x_test, data.y_test)
    return {
        "held_out_by_researcher": {
            "accuracy": accuracy,
            "loss": loss,
            "note": f"decrypted after the run with {secret_file}; the coordinator never could",
        }
    }


def run_flower_simulation(
    server_app: ServerApp,
    institutions: int,
    *,
    verbose: bool,
    client: ClientApp = client_app,
) -> None:
    """Flower's simulation engine (our ClientApp unless told), quiet unless `verbose`."""
    flwr_logger = logging.getLogger("flwr")
    previous = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)  # Flower logs its own deprecation at WARNING
    try:
        with warnings.catch_warnings():
            # run_simulation is deprecated in favour of `flwr run`, which cannot run
            # in-process; it remains the engine's Python entry point in 1.42.
            warnings.simplefilter("ignore")
            run_simulation(
                server_app=server_app,
                client_app=client,
                num_supernodes=institutions,
                backend_config=_backend_config(institutions, verbose),
                verbose_logging=verbose,
            )
    finally:
        flwr_logger.setLevel(previous)
