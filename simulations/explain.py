"""`aidmp explain --run DIR`: which features drive a finished simulation's global model.

Central (the researcher plays every part in simulation): permutation importance on the
task's held-out split, and captum's Integrated Gradients, both per original
(pre-encoding) column. Federated: every simulated institution releases its permutation
importance on its own validation rows as noisy bounded sums charged to its ledger
(server/explain.py, client/explain_handler.py), and the coordinator combines them.

The model is the run's checkpoint. Under HE the checkpoint is ciphertext: the researcher,
who holds the simulation's keys, decrypts it for the central part; the federated part is
refused (a coordinator that cannot read the model cannot send it). The institutions'
ledgers are the run's own (DIR/institutions, one budget per population), so a run that
spent its budget leaves nothing for an explanation: those institutions decline (102). A
run meant to be explained keeps budget for it (`aidmp simulate --dp-noise-multiplier`).
Writes DIR/explain.json and DIR/explain.png.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from torch import nn

from aidmp.analytics.explain import (
    ExplainJob,
    feature_groups,
    feature_names_of,
    permutation_importance,
)
from aidmp.atomic import atomic_write_json
from aidmp.config import RunConfig
from aidmp.errors import AidmpError
from aidmp.privacy.he.keys import key_file_for, load_context
from aidmp.privacy.he.state import EncryptedGlobal, unflatten_state
from aidmp.server.checkpoint import CHECKPOINT_NAME, load_checkpoint
from aidmp.server.explain import run_explanation
from aidmp.simulations.runner import ENGINES, run_flower_simulation
from aidmp.tasks import get_task, load_dataset

EXPLAIN_NAME = "explain.json"
EXPLAIN_PLOT = "explain.png"
EXPLAIN_FORMAT = 1
SUMMARY_NAME = "summary.json"
# Integrated Gradients is scored on at most this many held-out rows (a seeded sample).
IG_ROWS = 2000
IG_STEPS = 32

NodeConfig = Callable[[int], Mapping[str, bool | int | float | str]]


def load_run(run_dir: Path) -> tuple[dict[str, Any], RunConfig, dict[str, np.ndarray]]:
    """The run's summary, its config, and its global model as a plaintext state dict."""
    if not run_dir.is_dir():
        raise AidmpError(f"no run folder at {run_dir}; give the --out folder of `aidmp simulate`")
    summary_path = run_dir / SUMMARY_NAME
    if not summary_path.is_file():
        raise AidmpError(
            f"{run_dir} holds no {SUMMARY_NAME}; give the --out folder of a finished "
            "`aidmp simulate`"
        )
    summary = json.loads(summary_path.read_text())
    cfg = RunConfig.from_flower(summary["run_config"])
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    model = get_task(cfg.task).build_model()
    if not cfg.he:
        return summary, cfg, {k: np.asarray(v) for k, v in ckpt.model.items()}
    secret_file = key_file_for(Path(cfg.he_keys), "institution")
    if not secret_file.is_file():
        raise AidmpError(
            f"the run is encrypted and its checkpoint is ciphertext; explaining it needs the "
            f"simulation's secret key at {secret_file}, which is not there"
        )
    params, _ = EncryptedGlobal.from_arrays(ckpt.model).decrypt(
        load_context(secret_file, "institution")
    )
    state = unflatten_state(params, model.state_dict())
    return summary, cfg, {k: v.detach().cpu().numpy() for k, v in state.items()}


def torch_model(task_name: str, state: dict[str, np.ndarray]) -> nn.Module:
    model = get_task(task_name).build_model()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    model.eval()
    return model


def integrated_gradients(
    model: nn.Module,
    x: np.ndarray,
    groups: dict[str, list[int]],
    *,
    seed: int,
    rows: int = IG_ROWS,
    steps: int = IG_STEPS,
) -> dict[str, dict[str, float]]:
    """captum's Integrated Gradients of the positive class's logit (class 1), from the
    rows' mean as baseline, summed over each column's encoded features: per column the
    mean |attribution| over a seeded sample of rows, and the mean signed one."""
    from captum.attr import IntegratedGradients

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(x))[: min(rows, len(x))])
    xs = torch.as_tensor(np.asarray(x)[pick], dtype=torch.float32)
    baseline = xs.mean(dim=0, keepdim=True).expand_as(xs)
    attributions = IntegratedGradients(model).attribute(
        xs, baselines=baseline, target=1, n_steps=steps, method="gausslegendre"
    )
    a = attributions.detach().numpy().astype(np.float64)
    by_column = np.column_stack([a[:, idx].sum(axis=1) for idx in groups.values()])
    return {
        column: {
            "mean_abs_attribution": float(np.abs(by_column[:, j]).mean()),
            "mean_attribution": float(by_column[:, j].mean()),
        }
        for j, column in enumerate(groups)
    }


def central_explanation(
    task_name: str, state: dict[str, np.ndarray], *, seed: int, repeats: int, bound: float
) -> dict[str, Any]:
    """Permutation importance and Integrated Gradients on the held-out split."""
    task, data = get_task(task_name), load_dataset(task_name)
    groups = feature_groups(feature_names_of(task, data.x_test.shape[1]))
    model = torch_model(task_name, state)
    return {
        "rows": int(len(data.x_test)),
        "permutation": permutation_importance(
            model, data.x_test, data.y_test, groups, seed=seed, repeats=repeats, bound=bound
        ),
        "integrated_gradients": integrated_gradients(model, data.x_test, groups, seed=seed),
        "ig_rows": int(min(IG_ROWS, len(data.x_test))),
        "note": "held-out split (the task's test rows, which no institution holds); "
        "permutation importance: mean cross-entropy increase, no noise; importance_clipped: "
        "each row's increase clipped to the federated job's bound first",
    }


def explanation_job(
    cfg: RunConfig, *, epsilon: float, bound: float, repeats: int, seed: int
) -> ExplainJob:
    task = get_task(cfg.task)
    data = load_dataset(cfg.task)
    columns = tuple(feature_groups(feature_names_of(task, data.x_test.shape[1])))
    return ExplainJob(
        task=cfg.task,
        columns=columns,
        bound=bound,
        epsilon=epsilon,
        delta=cfg.dp_delta,
        repeats=repeats,
        seed=seed,
    )


def federated_explanation(
    run_dir: Path,
    cfg: RunConfig,
    institutions: int,
    job: ExplainJob,
    state: dict[str, np.ndarray],
    *,
    engine: str = "inprocess",
    node_config: NodeConfig | None = None,
    grid_wrapper: Any = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Every simulated institution's release, combined (server/explain.py)."""
    if engine not in ENGINES:
        raise AidmpError(f"unknown engine '{engine}'; choose one of: {', '.join(ENGINES)}")
    if node_config and engine != "inprocess":
        raise AidmpError("per-node settings in simulation need --engine inprocess")
    update: dict[str, Any] = {
        "out_dir": str(run_dir),
        "min_available_nodes": institutions,
        "resume": False,
    }
    update["state_root"] = cfg.state_root or str((run_dir / "institutions").resolve())
    cfg = cfg.model_copy(update=update)
    if not cfg.dp:
        raise AidmpError(
            "the run trained without DP, so its institutions keep no budget to charge a "
            "federated explanation to; use --central-only, or explain a run trained with DP"
        )
    wrap = grid_wrapper or (lambda g: g)
    if engine == "inprocess":
        from aidmp.simulations.inprocess import InProcessGrid

        flwr_logger = logging.getLogger("flwr")
        previous = flwr_logger.level
        if not verbose:
            flwr_logger.setLevel(logging.ERROR)
        try:
            grid = InProcessGrid(institutions, node_config=node_config)
            return run_explanation(wrap(grid), job, state, cfg, run_id=str(grid.run.run_id))
        finally:
            flwr_logger.setLevel(previous)
    result: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        result.update(run_explanation(wrap(grid), job, state, cfg, run_id=str(context.run_id)))

    run_flower_simulation(server_app, institutions, verbose=verbose)
    if not result:
        raise AidmpError("the simulation ended without an explanation; rerun with --verbose")
    return result


def explain_run(
    run_dir: Path,
    *,
    epsilon: float = 1.0,
    bound: float = 1.0,
    repeats: int = 3,
    seed: int = 0,
    federated: bool = True,
    engine: str = "inprocess",
    node_config: NodeConfig | None = None,
    grid_wrapper: Any = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Explain the run in `run_dir`; writes explain.json and explain.png there."""
    summary, cfg, state = load_run(run_dir)
    result: dict[str, Any] = {
        "format": EXPLAIN_FORMAT,
        "run": str(run_dir),
        "task": cfg.task,
        "seed": seed,
        "central": central_explanation(cfg.task, state, seed=seed, repeats=repeats, bound=bound),
    }
    job = explanation_job(cfg, epsilon=epsilon, bound=bound, repeats=repeats, seed=seed)
    if not federated:
        result["federated"] = {"skipped": "not asked for (--central-only)"}
    elif cfg.he:
        result["federated"] = {
            "skipped": "the run is encrypted: its coordinator cannot read the global model, "
            "so it cannot send it to the institutions for a federated explanation"
        }
    else:
        fed = federated_explanation(
            run_dir,
            cfg,
            int(summary["institutions"]),
            job,
            state,
            engine=engine,
            node_config=node_config,
            grid_wrapper=grid_wrapper,
            verbose=verbose,
        )
        fed["ledgers"] = "the run's own ledgers (one budget per population)"
        result["federated"] = fed
    result["features"] = _table(result)
    atomic_write_json(run_dir / EXPLAIN_NAME, result)
    plot_explanation(result, run_dir / EXPLAIN_PLOT)
    return result


def _table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per original column, in order of central permutation importance."""
    central = result["central"]
    fed = result["federated"].get("importance", {})
    eps = {
        name: figures.get("epsilon_charged")
        for name, figures in result["federated"]
        .get("privacy", {})
        .get("by_institution", {})
        .items()
    }
    rows = []
    for column, perm in central["permutation"].items():
        ig = central["integrated_gradients"][column]
        f = fed.get(column, {})
        rows.append(
            {
                "feature": column,
                "permutation_importance": perm["importance"],
                "permutation_std_over_repeats": perm["std_over_repeats"],
                "permutation_importance_clipped": perm["importance_clipped"],
                "ig_mean_abs_attribution": ig["mean_abs_attribution"],
                "federated_importance": f.get("importance"),
                "federated_std_error": f.get("std_error"),
                "epsilon_by_institution": eps,
            }
        )
    return sorted(rows, key=lambda r: -r["permutation_importance"])


def format_explanation(result: dict[str, Any], top: int = 10) -> str:
    lines = [
        f"{'feature':<16}{'perm. imp.':>11}{'clipped':>9}{'IG |attr|':>11}{'federated':>12}"
        f"{'± s.e.':>9}"
    ]
    for row in result["features"][:top]:
        fed, se = row["federated_importance"], row["federated_std_error"]
        lines.append(
            f"{row['feature'][:15]:<16}{row['permutation_importance']:>11.4f}"
            f"{row['permutation_importance_clipped']:>9.4f}{row['ig_mean_abs_attribution']:>11.4f}"
            + (
                f"{fed:>12.4f}{se:>9.4f}"
                if fed is not None and not math.isnan(fed)
                else f"{'-':>12}{'-':>9}"
            )
        )
    fed = result["federated"]
    if "skipped" in fed:
        lines.append(f"federated: skipped: {fed['skipped']}")
    else:
        eps = fed["privacy"]["by_institution"]
        lines.append(
            "eps per institution (its ledger's charge): "
            + (", ".join(f"{n} {f['epsilon_charged']:.4f}" for n, f in eps.items()) or "none")
        )
        for name, reason in fed["declined"].items():
            lines.append(f"declined: {name}: {reason}")
        if not fed["institutions_answered"] and fed["ledgers"].startswith("the run's own"):
            lines.append(
                "no institution could pay for the explanation from the run's own ledgers; "
                "train with budget to spare (aidmp simulate --dp-noise-multiplier SIGMA)"
            )
    return "\n".join(lines)


def plot_explanation(result: dict[str, Any], path: Path) -> None:
    """Three bar charts over the same columns: central permutation importance, IG's mean
    |attribution|, and the federated importance with its standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["features"][::-1]  # most important on top
    names = [r["feature"] for r in rows]
    ys = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.32 * len(rows) + 1.6), sharey=True)
    axes[0].barh(ys, [r["permutation_importance"] for r in rows], color="#4c72b0")
    axes[0].set_title("permutation importance (held-out)", fontsize=9)
    axes[1].barh(ys, [r["ig_mean_abs_attribution"] for r in rows], color="#55a868")
    axes[1].set_title("Integrated Gradients, mean |attribution|", fontsize=9)
    fed = [r["federated_importance"] for r in rows]
    if any(v is not None and not math.isnan(v) for v in fed):
        axes[2].barh(
            ys,
            [0.0 if v is None or math.isnan(v) else v for v in fed],
            xerr=[
                0.0 if r["federated_std_error"] is None else r["federated_std_error"] for r in rows
            ],
            color="#c44e52",
        )
        axes[2].set_title("federated importance ± s.e. (DP)", fontsize=9)
    else:
        axes[2].set_title("federated: none released", fontsize=9)
    axes[0].set_yticks(ys, names, fontsize=8)
    for ax in axes:
        ax.axvline(0, color="black", linewidth=0.5)
    fig.suptitle(f"{result['task']}: which columns drive the global model", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
