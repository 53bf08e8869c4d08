"""DP-SGD in a federation: ledgers per institution, declines, carry-over.

`aidmp simulate --engine inprocess`, `aidmp ledger` and `aidmp audit-privacy` run in this
process (tests/inprocess_cli.py): each institution's real ClientApp, ledger and audit log,
without Ray.
"""

import json

import pytest

from aidmp.client.data import dataset_id, simulated_institution
from aidmp.privacy.ledger import LEDGER_NAME, Charge, PrivacyLedger
from tests.inprocess_cli import aidmp

TASK, PARTITION, SEED, N = "breast-cancer", "iid", 2, 3


def _simulate(out, *extra, check=True):
    result = aidmp(
        "simulate", "--task", TASK, "--institutions", str(N), "--partition", PARTITION,
        "--seed", str(SEED), "--rounds", "2", "--lr", "0.1", "--dp-epsilon", "3",
        "--out", str(out), "--engine", "inprocess", *extra,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def run_with_one_spent_institution(tmp_path_factory):
    """Institution 0 spent its whole budget in an earlier study; the others are fresh."""
    out = tmp_path_factory.mktemp("dp")
    data = simulated_institution(TASK, PARTITION, SEED, N, 0)
    ledger = PrivacyLedger.open(
        out / "institutions" / "institution-0",
        dataset=dataset_id(TASK, data),
        budget_epsilon=3.0,
        delta=1e-5,
    )
    ledger.charge(Charge(0.7, 0.05, 2000), run_id="earlier-study", round=1)
    result, summary = _simulate(out)
    return out, result, summary


def test_the_spent_institution_declines_and_the_run_goes_on(run_with_one_spent_institution):
    _, result, summary = run_with_one_spent_institution
    declined = summary["privacy"]["declined"]
    assert [(d["round"], d["institution"], d["code"]) for d in declined] == [
        (1, "institution-0", 102),
        (2, "institution-0", 102),
    ]
    assert declined[0]["reason"].startswith("privacy budget exhausted: eps")
    for rec in summary["per_round"]:
        assert rec["aggregated"] and rec["train_replies"] == 2
    assert "declined: institution-0: privacy budget exhausted" in result.stdout


def test_each_institution_reports_its_spend(run_with_one_spent_institution):
    out, result, summary = run_with_one_spent_institution
    privacy = summary["privacy"]
    assert privacy["dp"] and privacy["delta"] == 1e-5
    spent = privacy["epsilon_by_institution"]
    assert set(spent) == {"institution-1", "institution-2"}
    assert all(2.9 < e <= 3.0 for e in spent.values())  # σ planned to use the budget
    for name in spent:
        ledger = PrivacyLedger.load(out / "institutions" / name / LEDGER_NAME)
        # Each round: the update, then the evaluation figures (noised, charged).
        assert [(e["round"], e["release_kind"]) for e in ledger.entries] == [
            (1, "training"), (1, "metrics"), (2, "training"), (2, "metrics"),
        ]  # fmt: skip
        assert ledger.spent() == pytest.approx(spent[name])
    assert "eps spent: institution-1" in result.stdout


def test_ledger_cli_shows_and_verifies(run_with_one_spent_institution):
    out, _, _ = run_with_one_spent_institution
    folder = out / "institutions" / "institution-1"
    show = aidmp("ledger", "show", str(folder))
    assert show.returncode == 0 and "spent eps" in show.stdout
    verify = aidmp("ledger", "verify", str(folder / LEDGER_NAME))
    assert verify.returncode == 0 and verify.stdout.startswith("ok: 4 entries")


def test_a_second_federation_starts_from_what_the_first_spent(run_with_one_spent_institution):
    out, _, _ = run_with_one_spent_institution
    result, summary = _simulate(out)  # same data, same ledgers: every budget is spent
    assert {d["institution"] for d in summary["privacy"]["declined"]} == {
        f"institution-{i}" for i in range(N)
    }
    assert not any(rec["aggregated"] for rec in summary["per_round"])
    assert "[skipped: 0 usable update(s)" in result.stdout and "the model is kept" in result.stdout


def test_damaged_ledger_stops_that_institution_only(tmp_path):
    out = tmp_path / "run"
    _simulate(out, "--rounds", "1")
    (out / "institutions" / "institution-2" / LEDGER_NAME).write_text("{broken")
    _, summary = _simulate(out, "--dp-epsilon", "3")
    bad = [d for d in summary["privacy"]["declined"] if d["institution"] == "institution-2"]
    assert bad and bad[0]["code"] == 103 and "unverifiable budget" in bad[0]["reason"]


def test_audit_privacy_attacks_the_final_model(run_with_one_spent_institution):
    out, _, _ = run_with_one_spent_institution
    summary = json.loads((out / "summary.json").read_text())  # the latest run in `out`
    result = aidmp("audit-privacy", "--run", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "privacy_audit.json").read_text())
    assert report["attacks"] == ["loss", "calibrated"]
    assert report["claimed_epsilon_by_institution"] == summary["privacy"]["epsilon_by_institution"]
    for attack in ("loss", "calibrated"):
        m = report["overall"][attack]
        assert 0 <= m["auc"] <= 1 and 0 <= m["tpr_at_1pct_fpr"] <= 1 and m["members"] > 0
    assert set(report["by_institution"]) == {f"institution-{i}" for i in range(N)}
    assert "calibrated" in result.stdout


def test_audit_of_a_folder_without_a_run_is_a_clear_error(tmp_path):
    result = aidmp("audit-privacy", "--run", str(tmp_path))
    assert result.returncode == 2 and "holds no summary.json" in result.stderr


def test_client_level_dp_goes_on_when_a_node_declines(tmp_path):
    """Flower's wrapper alone would skip every round in which institution-0 declines."""
    out = tmp_path / "cdp"
    data = simulated_institution(TASK, PARTITION, SEED, N, 0)
    folder = out / "institutions" / "institution-0"
    ledger = PrivacyLedger.open(
        folder, dataset=dataset_id(TASK, data), budget_epsilon=3.0, delta=1e-5
    )
    ledger.charge(Charge(0.7, 0.05, 2000), run_id="earlier-study", round=1)
    result, summary = _simulate(out, "--client-dp", "--client-dp-noise-multiplier", "0.8")
    for rec in summary["per_round"]:
        assert rec["aggregated"] and rec["train_replies"] == 2
        assert [f["institution"] for f in rec["train_failures"]] == ["institution-0"]
    client_level = summary["privacy"]["client_level"]
    assert client_level["releases"] == 2 and client_level["epsilon"] > 0
    assert client_level["noise_multiplier"] == 0.8
    assert "client-level DP: eps" in result.stdout
