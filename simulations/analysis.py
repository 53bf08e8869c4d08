"""`aidmp analyze`: a federated statistics query over simulated institutions.

The coordinator's side is `server.analysis.run_analysis`, the very function the
deployed ServerApp runs for `aidmp run --analysis`; each virtual institution answers
with our ClientApp, on Flower's simulation engine (Ray) or in this process.
Everything a user can get wrong (the query, the policy, the partition, the out
folder) is checked before the engine starts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from aidmp.analytics import Query
from aidmp.config import RunConfig
from aidmp.errors import AidmpError
from aidmp.privacy.he.keys import key_file_for, load_context
from aidmp.privacy.he.packing import decrypt_vector
from aidmp.server.analysis import ANALYSIS_NAME, Decrypt, plan_for, run_analysis
from aidmp.simulations.runner import ENGINES, prepare, run_flower_simulation


def analyze(
    cfg: RunConfig,
    query: Query,
    institutions: int,
    *,
    verbose: bool = False,
    engine: str = "ray",
) -> dict[str, Any]:
    """Run `query` at `institutions` simulated institutions; returns analysis.json's data."""
    if engine not in ENGINES:
        raise AidmpError(f"unknown engine '{engine}'; choose one of: {', '.join(ENGINES)}")
    cfg = prepare(cfg, institutions)
    plan_for(query, cfg)  # a query the policy cannot complete fails here, before any engine
    result: dict[str, Any] = {}
    decrypt = _researcher_decrypts(cfg) if cfg.he else None
    if engine == "inprocess":
        from aidmp.simulations.inprocess import InProcessGrid

        flwr_logger = logging.getLogger("flwr")
        previous = flwr_logger.level
        if not verbose:
            flwr_logger.setLevel(logging.ERROR)
        try:
            grid = InProcessGrid(institutions)
            result = run_analysis(grid, query, cfg, run_id=str(grid.run.run_id), decrypt=decrypt)
        finally:
            flwr_logger.setLevel(previous)
        return result
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        result.update(run_analysis(grid, query, cfg, run_id=str(context.run_id), decrypt=decrypt))

    run_flower_simulation(server_app, institutions, verbose=verbose)
    if not result:
        path = Path(cfg.out_dir) / ANALYSIS_NAME
        raise AidmpError(f"the simulation ended without a result at {path}; rerun with --verbose")
    return result


def _researcher_decrypts(cfg: RunConfig) -> Decrypt:
    """In simulation the researcher holds every key: the coordinator's code only adds
    ciphertexts, and the researcher decrypts the one sum with an institution's key."""
    secret = load_context(key_file_for(Path(cfg.he_keys), "institution"), "institution")

    def decrypt(chunks: list[bytes], size: int, contributions: int) -> np.ndarray:
        return decrypt_vector(secret, chunks, size, float(contributions), "the summed partials")

    return decrypt
