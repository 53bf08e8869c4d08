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


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    result, summary = _simulate(out, "--rounds", "2")
    return out, result, summary


def test_summary_has_the_documented_schema(two_rounds):
    out, result, summary = two_rounds
    assert set(summary) >= SUMMARY_KEYS
    assert (summary["task"], summary["institutions"], summary["rounds"]) == ("breast-cancer", 3, 2)
    assert (summary["partition"], summary["seed"]) == ("iid", 1)
    assert [r["round"] for r in summary["per_round"]] == [1, 2]
    assert (out / "metrics.png").stat().st_size > 10_000
    assert "round   2/2" in result.stdout  # the per-round progress line


def test_every_institution_trained_and_evaluated_each_round(two_rounds):
    _, _, summary = two_rounds
    for rec in summary["per_round"]:
        assert rec["aggregated"] and rec["train_replies"] == 3 and rec["train_failures"] == []
        assert rec["eval_replies"] == 3
        assert 0 <= rec["federated_accuracy"] <= 1 and rec["central_accuracy"] is not None


def test_the_federation_learns(two_rounds):
    _, _, summary = two_rounds
    # Majority class of the held-out split is 63%; a learned model does far better.
    assert summary["final"]["accuracy"] > 0.85
    assert summary["final"]["source"] == "central"
    assert summary["centralized_baseline"]["accuracy"] > 0.85
    losses = [r["central_loss"] for r in summary["per_round"]]
    assert losses[1] < losses[0]


def test_checkpoint_holds_the_final_model(two_rounds):
    out, _, summary = two_rounds
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert ckpt.round == 2
    assert ckpt.meta["per_round"] == summary["per_round"]
    assert {k for k in ckpt.model} == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_resume_continues_from_the_checkpoint(two_rounds):
    out, _, before = two_rounds
    model_before = load_checkpoint(out / "checkpoint.npz").model
    result, after = _simulate(out, "--rounds", "3", "--resume", engine="inprocess")
    assert after["resumed_from_round"] == 2
    assert [r["round"] for r in after["per_round"]] == [1, 2, 3]
    assert after["per_round"][:2] == before["per_round"]  # history kept, not rerun
    assert "round   1/3" not in result.stdout and "round   3/3" in result.stdout
    model_after = load_checkpoint(out / "checkpoint.npz").model
    assert any(not np.array_equal(model_before[k], model_after[k]) for k in model_before)


def test_resume_with_another_task_is_refused(two_rounds, tmp_path):
    out, _, _ = two_rounds
    result = aidmp(
        "simulate", "--task", "adult", "--partition", "iid", "--seed", "1",
        "--institutions", "3", "--rounds", "4", "--resume", "--out", str(out),
        "--engine", "inprocess",
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot resume" in result.stderr and "task='breast-cancer'" in result.stderr
