"""The coordinator's Flower ServerApp (`[tool.flwr.app.components] serverapp`).

It trains (server/federation.py), or, when the run config's `analysis` holds a query's
canonical JSON (`aidmp run --analysis Q.yaml`), asks the nodes for that query instead
(server/analysis.py); when its `clustering` holds a k-means job's (`aidmp run --cluster
JOB.yaml`), runs that job (server/clustering.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

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
    if cfg.node_names:  # sites named as registered, whatever they call themselves
        from aidmp.server.registered_names import RegisteredNames

        grid = RegisteredNames(grid, cfg.registered_names())
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
    from aidmp.server.final_model import deliver_final_model

    started = time.monotonic()
    report = run_federation(grid, cfg, run_id=str(context.run_id))
    if report["rounds_completed"] == cfg.num_rounds:  # every site keeps the job's model
        deliver_final_model(grid, cfg, str(report["job_id"]))
    _close(report, cfg, time.monotonic() - started)


def _close(report: dict[str, Any], cfg: RunConfig, wall_seconds: float) -> None:
    """summary.json and metrics.png beside report.json, then the closing summary."""
    from aidmp.atomic import atomic_write_json
    from aidmp.server.checkpoint import CHECKPOINT_NAME
    from aidmp.server.closing import (
        PLOT_NAME,
        SUMMARY_NAME,
        closing_lines,
        deployment_summary,
    )
    from aidmp.server.plots import plot_metrics
    from aidmp.server.report import REPORT_NAME

    out = Path(cfg.out_dir)
    summary = deployment_summary(report, wall_seconds)
    atomic_write_json(out / SUMMARY_NAME, summary)
    plot_metrics(summary, out / PLOT_NAME)
    files = {"report": out / REPORT_NAME, "summary": out / SUMMARY_NAME,
             "plot": out / PLOT_NAME, "checkpoint": out / CHECKPOINT_NAME}  # fmt: skip
    for line in closing_lines(report, files):
        logging.getLogger("aidmp.server").info(line)
