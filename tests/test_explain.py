"""Explaining a global model: permutation importance per original column (central), and
the federated release, in process (simulations/inprocess.py): the real ClientApp's
explain handler, real ledgers, real noise, the audit trail, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.pld import PLDAccountant
from flwr.app import Message
from torch import nn

from aidmp.analytics.explain import (
    ExplainJob,
    feature_groups,
    permutation_importance,
    plan_explanation,
)
from aidmp.config import RunConfig
from aidmp.errors import DeclineCode
from aidmp.privacy.audit import AUDIT_NAME, AuditLog, verify_audit_log
from aidmp.privacy.explain_release import EXPLANATION, release_node_explanation
from aidmp.privacy.he.keys import key_file_for, load_context, simulation_keys
from aidmp.privacy.ledger import LEDGER_NAME, BudgetExhausted, PrivacyLedger
from aidmp.privacy.policy import DPPolicy
from aidmp.server.checkpoint import Checkpoint, save_checkpoint
from aidmp.simulations.explain import EXPLAIN_NAME, EXPLAIN_PLOT, explain_run
from aidmp.strategies.encrypted import EncryptedFedAvg
from aidmp.tasks import get_task
from tests.inprocess_cli import aidmp
from tests.recording import RecordingGrid

TASK = "breast-cancer"  # 30 numeric columns, 569 rows: quick to score
INSTITUTIONS = 3


def test_a_model_that_uses_one_column_ranks_it_first():
    rng = np.random.default_rng(0)
    # Four numeric columns and a one-hot column "colour" of three categories; the label
    # depends on column "b" only, and so does the model.
    n = 2000
    numeric = rng.normal(size=(n, 4)).astype(np.float32)
    colour = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    x = np.hstack([numeric, colour])
    y = (numeric[:, 1] > 0).astype(np.int64)
    names = ["a", "b", "c", "d", "colour=red", "colour=green", "colour=blue"]
    model = nn.Linear(7, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
        model.weight[1, 1], model.weight[0, 1] = 4.0, -4.0
    groups = feature_groups(names)
    assert list(groups) == ["a", "b", "c", "d", "colour"] and groups["colour"] == [4, 5, 6]
    result = permutation_importance(model, x, y, groups, seed=0, repeats=3)
    ranked = sorted(result, key=lambda c: -result[c]["importance"])
    assert ranked[0] == "b" and result["b"]["importance"] > 1.0
    for column in ("a", "c", "d", "colour"):  # unused: permuting them changes nothing
        assert result[column]["importance"] == pytest.approx(0.0, abs=1e-6)
    # Deterministic given the seed; clipping each row's difference only shrinks it.
    assert permutation_importance(model, x, y, groups, seed=0, repeats=3) == result
    clipped = permutation_importance(model, x, y, groups, seed=0, repeats=3, bound=0.5)
    assert 0 < clipped["b"]["importance_clipped"] <= 0.5 < clipped["b"]["importance"]


def _run_folder(tmp_path: Path, *, dp: bool = True, he_keys: Path | None = None) -> Path:
    """A finished run's folder as `aidmp simulate` leaves it: the run config in
    summary.json and the global model in checkpoint.npz (here the task's model, seeded;
    with `he_keys`, encrypted under them as an HE run's coordinator keeps it)."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    settings = {"task": TASK, "partition": "iid", "dp": dp, "dp-epsilon": 2.0,
                "central-eval": False, "out-dir": str(run)}  # fmt: skip
    if he_keys is not None:
        settings |= {"he": True, "he-keys": str(he_keys)}
    cfg = RunConfig.from_flower(settings)
    torch.manual_seed(0)
    model = get_task(TASK).build_model()
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if he_keys is not None:
        public = load_context(key_file_for(he_keys, "coordinator"), "coordinator")
        arrays = EncryptedFedAvg(public).initial_state(model.state_dict())
        state = {k: v.numpy() for k, v in arrays.items()}
    save_checkpoint(run / "checkpoint.npz", Checkpoint(round=1, model=state))
    summary = {"task": TASK, "institutions": INSTITUTIONS, "run_config": cfg.to_flower()}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _ledger(run: Path, i: int) -> PrivacyLedger:
    return PrivacyLedger.load(run / "institutions" / f"institution-{i}" / LEDGER_NAME)


def test_every_release_is_charged_audited_and_only_noisy_aggregates_cross(tmp_path):
    run = _run_folder(tmp_path)
    received: list[Message] = []
    result = explain_run(
        run, epsilon=0.5, repeats=2, grid_wrapper=lambda g: RecordingGrid(g, received)
    )
    job = ExplainJob(task=TASK, columns=tuple(f"x{i}" for i in range(30)), bound=1.0,
                     epsilon=0.5, delta=1e-5, repeats=2, seed=0)  # fmt: skip
    plan = plan_explanation(job)
    replies = [m for m in received if m.metadata.message_type == "query.explain"]
    assert len(replies) == INSTITUTIONS and not any(m.has_error() for m in replies)
    for reply in replies:  # a noisy count and noisy sums; nothing else leaves
        assert set(reply.content.keys()) == {"explanation", "node"}
        answer = reply.content.config_records["explanation"]
        assert set(answer.keys()) == {"digest", "count", "sums"}
        assert float(answer["count"]) != round(float(answer["count"]))  # never the exact count
        assert len(answer["sums"]) == 30 and reply.content.array_records == {}
    fed = result["federated"]
    assert sorted(fed["institutions_answered"]) == [f"institution-{i}" for i in range(3)]
    # Independent accountant: dp_accounting's PLD of the one Gaussian the ledger entered.
    accountant = PLDAccountant(value_discretization_interval=1e-4)
    accountant.compose(dp_accounting.GaussianDpEvent(1 / plan.mu))
    independent = accountant.get_epsilon(1e-5)
    for i in range(INSTITUTIONS):
        ledger = _ledger(run, i)
        assert [e["release_kind"] for e in ledger.entries] == [EXPLANATION]
        assert ledger.verify() == []
        charged = fed["privacy"]["by_institution"][f"institution-{i}"]["epsilon_charged"]
        assert charged == pytest.approx(ledger.spent())
        assert charged == pytest.approx(independent, rel=3e-3) and charged <= 0.5
        folder = run / "institutions" / f"institution-{i}"
        assert verify_audit_log(folder / AUDIT_NAME) == []
        (record,) = AuditLog(folder / AUDIT_NAME).records()
        assert record["kind"] == "query.explain-reply"
        assert record["details"]["release_kind"] == EXPLANATION
        assert record["details"]["reply_to"] == ledger.entries[0]["message_id"]
        assert record["epsilon_charged"] == pytest.approx(charged)
    # The output: every column with central, IG and federated figures, and the plot.
    saved = json.loads((run / EXPLAIN_NAME).read_text())
    assert len(saved["features"]) == 30
    for row in saved["features"]:
        assert row["federated_std_error"] > 0 and np.isfinite(row["ig_mean_abs_attribution"])
    assert (run / EXPLAIN_PLOT).stat().st_size > 0
    # A job is released once: asked again under the same job id, a node declines, uncharged.
    policy = DPPolicy(**{"dp-epsilon": 2.0, "state_dir": tmp_path / "node"})
    x, y = np.zeros((5, 30), dtype=np.float32), np.zeros(5, dtype=np.int64)
    model = get_task(TASK).build_model()
    groups = {f"x{i}": [i] for i in range(30)}
    release = dict(policy=policy, cap=1.0, dataset_id="d", run_id="r", job_id="job-1",
                   message_id="m", order_rng=np.random.default_rng(0),
                   noise=np.random.default_rng(1))  # fmt: skip
    release_node_explanation(model, x, y, groups, plan, **release)
    with pytest.raises(BudgetExhausted, match="already released"):
        release_node_explanation(model, x, y, groups, plan, **release)
    (ledger_path,) = (tmp_path / "node").rglob(LEDGER_NAME)
    assert len(PrivacyLedger.load(ledger_path).entries) == 1


def test_the_node_cap_declines_an_explanation_asking_too_much(tmp_path):
    run = _run_folder(tmp_path)
    cap = {0: {"explain-max-epsilon": 0.25}}
    fed = explain_run(run, epsilon=0.5, repeats=1, node_config=lambda i: cap.get(i, {}))[
        "federated"
    ]
    assert fed["institutions_answered"] == ["institution-1", "institution-2"]
    reason = fed["declined"]["institution-0"]
    assert (
        reason.startswith(f"code {DeclineCode.BUDGET_EXHAUSTED}")
        and "explain-max-epsilon" in reason
    )
    # Declined before anything was charged: its ledger was never even opened.
    assert not (run / "institutions" / "institution-0" / LEDGER_NAME).exists()
    assert len(_ledger(run, 1).entries) == 1


def test_an_encrypted_run_is_decrypted_by_the_researcher_and_not_sent_to_nodes(tmp_path):
    keys = tmp_path / "keys"
    simulation_keys(keys)
    encrypted = explain_run(_run_folder(tmp_path / "he", he_keys=keys), repeats=1)
    plain = explain_run(_run_folder(tmp_path / "plain"), repeats=1, federated=False)
    # The researcher's key opens the checkpoint: the same model, up to CKKS's error.
    for column, figures in plain["central"]["permutation"].items():
        decrypted = encrypted["central"]["permutation"][column]["importance"]
        assert decrypted == pytest.approx(figures["importance"], abs=1e-4)
    assert "encrypted" in encrypted["federated"]["skipped"]
    assert not (tmp_path / "he" / "run" / "institutions").exists()  # no node was asked


def test_a_run_without_dp_has_no_budget_to_charge(tmp_path):
    result = aidmp("explain", "--run", str(_run_folder(tmp_path, dp=False)))
    assert result.returncode == 2 and "--central-only" in result.stderr


def test_a_missing_run_folder_is_a_one_line_error(tmp_path):
    result = aidmp("explain", "--run", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no run folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_options_are_answered_before_any_work(tmp_path):
    from aidmp.analytics import explain as library
    from aidmp.cli import explain as cli

    assert cli.MAX_REPEATS == library.MAX_REPEATS
    result = aidmp("explain", "--run", str(tmp_path), "--repeats", "0")
    assert result.returncode == 2 and "--repeats must be 1 to 20" in result.stderr
    result = aidmp("explain", "--run", str(tmp_path))  # a folder, but not a run's
    assert result.returncode == 2 and "holds no summary.json" in result.stderr
