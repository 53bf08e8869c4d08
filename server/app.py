"""The coordinator's Flower ServerApp (`[tool.flwr.app.components] serverapp`)."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from aidmp.config import RunConfig
from aidmp.server.federation import run_federation

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
    run_federation(grid, RunConfig.from_flower(context.run_config), run_id=str(context.run_id))
