"""The coordinator's Flower ServerApp (`[tool.flwr.app.components] serverapp`).

It trains (server/federation.py), or, when the run config's `analysis` holds a query's
canonical JSON (`aidmp run --analysis Q.yaml`), asks the nodes for that query instead
(server/analysis.py); when its `clustering` holds a k-means job's (`aidmp run --cluster
JOB.yaml`), runs that job (server/clustering.py).
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from aidmp.config import RunConfig

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read the run config, then drive the rounds (see server/rounds.py)."""
    logger = logging.getLogger("aidmp")
    if not logger.handlers:  # under `flwr run`, show our round lines beside Flower's
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    cfg = RunConfig.from_flower(context.run_config)
    # Each kind of job imports its own module: one started by `aidmp run --analysis`
    # should not wait for torch and the training strategies.
    if cfg.analysis:
        from aidmp.analytics import parse_query
        from aidmp.server.analysis import run_analysis

        query = parse_query(cfg.analysis, source="run-config analysis")
        run_analysis(grid, query, cfg, run_id=str(context.run_id))
        return
    if cfg.clustering:
        from aidmp.analytics.clustering import parse_job
        from aidmp.server.clustering import run_clustering

        run_clustering(grid, parse_job(cfg.clustering), cfg, run_id=str(context.run_id))
        return
    from aidmp.server.federation import run_federation

    run_federation(grid, cfg, run_id=str(context.run_id))
