"""`aidmp cluster`: federated k-means over simulated institutions.

The coordinator's side is `server.clustering.run_clustering`; each virtual institution
answers with our ClientApp (client/clustering_handler.py), on Flower's simulation engine
(Ray) or in this process. The held-out split (the task's test rows, which no
institution holds) scores the result: the researcher plays every part in simulation.
Everything a user can get wrong is checked before the engine starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from aidmp.analytics.clustering import ClusterJob, feature_matrix, make_job, policy_features
from aidmp.config import RunConfig
from aidmp.errors import AidmpError
from aidmp.governance.policy import load_policy
from aidmp.server.clustering import CLUSTERS_NAME, run_clustering
from aidmp.simulations.analysis import _researcher_decrypts
from aidmp.simulations.runner import ENGINES, prepare, run_flower_simulation
from aidmp.tasks import get_task

NodeConfig = Callable[[int], Mapping[str, bool | int | float | str]]


def clustering_job(
    cfg: RunConfig,
    *,
    k: int,
    epsilon: float,
    rounds: int,
    features: list[str] | None = None,
    candidates: int | None = None,
) -> ClusterJob:
    """The job, its features' public bounds from the run's governance policy (or stated
    as NAME:LOW:HIGH); its seed is the run's."""
    if not cfg.governance_policy:
        raise AidmpError("clustering runs on governed rows: give a governance policy (--govern)")
    policy = load_policy(Path(cfg.governance_policy))[0]
    return make_job(
        policy_features(policy, features),
        k=k,
        epsilon=epsilon,
        delta=cfg.dp_delta,
        rounds=rounds,
        seed=cfg.seed,
        candidates=candidates,
    )


def heldout_points(task_name: str, job: ClusterJob) -> np.ndarray | None:
    """The task's held-out rows as points of the job's space (None: the task has none)."""
    task = get_task(task_name)
    if task.raw_test is None:
        return None
    return feature_matrix(task.raw_test(), job.features)


def cluster(
    cfg: RunConfig,
    job: ClusterJob,
    institutions: int,
    *,
    verbose: bool = False,
    engine: str = "ray",
    node_config: NodeConfig | None = None,
    grid_wrapper: Any = None,
) -> dict[str, Any]:
    """Run `job` at `institutions` simulated institutions; returns clusters.json's data.
    `node_config(i)` (in-process engine only) is added to node i's config, e.g. a cap.
    `grid_wrapper(grid)` wraps the coordinator's grid (tests record what it receives)."""
    if engine not in ENGINES:
        raise AidmpError(f"unknown engine '{engine}'; choose one of: {', '.join(ENGINES)}")
    if node_config and engine != "inprocess":
        raise AidmpError("per-node settings in simulation need --engine inprocess")
    task = get_task(cfg.task)
    if task.raw_train is None:
        raise AidmpError(f"task '{cfg.task}' has no tabular rows to cluster; choose adult")
    cfg = prepare(cfg, institutions)
    heldout = heldout_points(cfg.task, job)
    decrypt = _researcher_decrypts(cfg) if cfg.he else None
    wrap = grid_wrapper or (lambda g: g)
    if engine == "inprocess":
        from aidmp.simulations.inprocess import InProcessGrid

        flwr_logger = logging.getLogger("flwr")
        previous = flwr_logger.level
        if not verbose:
            flwr_logger.setLevel(logging.ERROR)
        try:
            grid = InProcessGrid(institutions, node_config=node_config)
            return run_clustering(wrap(grid), job, cfg, run_id=str(grid.run.run_id),
                                  decrypt=decrypt, heldout=heldout)  # fmt: skip
        finally:
            flwr_logger.setLevel(previous)
    result: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        result.update(run_clustering(wrap(grid), job, cfg, run_id=str(context.run_id),
                                     decrypt=decrypt, heldout=heldout))  # fmt: skip

    run_flower_simulation(server_app, institutions, verbose=verbose)
    if not result:
        path = Path(cfg.out_dir) / CLUSTERS_NAME
        raise AidmpError(f"the simulation ended without a result at {path}; rerun with --verbose")
    return result
