"""A real Flower simulation (Ray engine) through the `aidmp simulate` command itself.

The Ray run is one `aidmp simulate` process; the resumes after it run in this process on
the in-process engine (`--engine inprocess`), so they also show that a checkpoint from
one engine resumes on the other.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from aidmp.server.checkpoint import load_checkpoint
from tests.inprocess_cli import aidmp

pytestmark = pytest.mark.slow

SUMMARY_KEYS = {
    "task", "institutions", "rounds", "partition", "seed", "per_round", "final",
    "centralized_baseline", "wall_seconds",
}  # fmt: skip


def _simulate(out, *extra, engine="ray"):
    if engine == "inprocess":
        result = aidmp(
            "simulate", "--task", "breast-cancer", "--institutions", "3", "--partition", "iid",
            "--seed", "1", "--lr", "0.1", "--no-dp", "--out", str(out), "--engine", "inprocess",
            *extra,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return result, json.loads((out / "summary.json").read_text())
    cmd = [
        sys.executable, "-m", "aidmp.cli", "simulate", "--task", "breast-cancer",
        "--institutions", "3", "--partition", "iid", "--seed", "1", "--lr", "0.1", "--no-dp",
        "--out", str(out), *extra,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads((out / "summary.json").read_text())


def test_aidmp_simulate_on_ray_reports_learns_checkpoints_and_resumes(tmp_path):
    """One `aidmp simulate` on Flower's Ray engine (its own process, as a researcher types
    it), every check on its output; the resumes then run in process. One test, not one
    per check over a shared fixture: pytest-xdist may tear a module's fixture down
    between two of its tests, and this one costs a Ray start."""
    out = tmp_path / "sim"
    result, summary = _simulate(out, "--rounds", "2")

    # The summary has its documented schema, and the console its per-round lines.
    assert set(summary) >= SUMMARY_KEYS
    assert (summary["task"], summary["institutions"], summary["rounds"]) == ("breast-cancer", 3, 2)
    assert (summary["partition"], summary["seed"]) == ("iid", 1)
    assert [r["round"] for r in summary["per_round"]] == [1, 2]
    assert (out / "metrics.png").stat().st_size > 10_000
    assert "round   2/2" in result.stdout

    # Every institution trained and evaluated each round.
    for rec in summary["per_round"]:
        assert rec["aggregated"] and rec["train_replies"] == 3 and rec["train_failures"] == []
        assert rec["eval_replies"] == 3
        assert 0 <= rec["federated_accuracy"] <= 1 and rec["central_accuracy"] is not None

    # The federation learns: the held-out split's majority class is 63%.
    assert summary["final"]["accuracy"] > 0.85
    assert summary["final"]["source"] == "central"
    assert summary["centralized_baseline"]["accuracy"] > 0.85
    losses = [r["central_loss"] for r in summary["per_round"]]
    assert losses[1] < losses[0]

    # The checkpoint holds the final model and the history.
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert ckpt.round == 2
    assert ckpt.meta["per_round"] == summary["per_round"]
    assert {k for k in ckpt.model} == {"0.weight", "0.bias", "2.weight", "2.bias"}

    # A resume with another task is refused, and the folder is left as it was.
    refused = aidmp(
        "simulate", "--task", "adult", "--partition", "iid", "--seed", "1",
        "--institutions", "3", "--rounds", "4", "--resume", "--out", str(out),
        "--engine", "inprocess",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "cannot resume" in refused.stderr and "task='breast-cancer'" in refused.stderr

    # The resume continues from the checkpoint: history kept, not rerun.
    model_before = ckpt.model
    resumed, after = _simulate(out, "--rounds", "3", "--resume", engine="inprocess")
    assert after["resumed_from_round"] == 2
    assert [r["round"] for r in after["per_round"]] == [1, 2, 3]
    assert after["per_round"][:2] == summary["per_round"]
    assert "round   1/3" not in resumed.stdout and "round   3/3" in resumed.stdout
    model_after = load_checkpoint(out / "checkpoint.npz").model
    assert any(not np.array_equal(model_before[k], model_after[k]) for k in model_before)
