"""The privacy ledger: ε by PLD (or Opacus's RDP, PRV), atomic and checksummed, never
silently reset."""

import hashlib
import json
import signal
import subprocess
import sys
import time

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from aidmp.errors import DeclineCode, PrivacyError
from aidmp.privacy.dp import RoundShape, check_delta, plan_noise_multiplier
from aidmp.privacy.ledger import (
    ADMIN_LOG_NAME,
    LEDGER_NAME,
    BudgetExhausted,
    Charge,
    GaussianRelease,
    PrivacyLedger,
    epsilon_of,
    reset_ledger,
)
from tests.inprocess_cli import aidmp

HISTORY = [Charge(1.1, 0.01, 100), Charge(1.1, 0.01, 100), Charge(0.8, 0.02, 50)]


def _open(folder, dataset="a" * 64, budget=3.0, delta=1e-5, accountant="pld"):
    return PrivacyLedger.open(
        folder, dataset=dataset, budget_epsilon=budget, delta=delta, accountant=accountant
    )


@pytest.mark.parametrize(("name", "cls"), [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_epsilon_equals_opacus_accountant_over_the_same_history(tmp_path, name, cls):
    ledger = _open(tmp_path, accountant=name)
    for i, charge in enumerate(HISTORY):
        ledger.charge(charge, run_id="r1", round=i + 1)
    acct = cls()
    for c in HISTORY:  # the accountant as Opacus's PrivacyEngine drives it: step by step
        for _ in range(c.steps):
            acct.step(noise_multiplier=c.noise_multiplier, sample_rate=c.sample_rate)
    assert ledger.spent() == pytest.approx(acct.get_epsilon(1e-5), rel=1e-9)
    assert PrivacyLedger.load(tmp_path / LEDGER_NAME).spent() == pytest.approx(ledger.spent())


def test_budget_carries_across_runs_and_processes(tmp_path):
    first = _open(tmp_path)
    first.charge(HISTORY[0], run_id="run-a", round=1)
    first.charge(HISTORY[1], run_id="run-a", round=2)
    spent_a = first.spent()
    second = _open(tmp_path)  # a new federation, a new process: same file
    assert second.spent() == pytest.approx(spent_a)
    after = second.charge(HISTORY[2], run_id="run-b", round=1)
    assert after > spent_a
    assert [e["run_id"] for e in _open(tmp_path).entries] == ["run-a", "run-a", "run-b"]


def test_over_budget_round_is_refused_with_the_figures(tmp_path):
    ledger = _open(tmp_path, budget=2.0)
    ledger.charge(Charge(1.0, 0.01, 200), run_id="r", round=1)
    expected = r"privacy budget exhausted: eps 0\.91 of 2\.00 spent, this round needs \d\.\d\d$"
    with pytest.raises(BudgetExhausted, match=expected) as err:
        ledger.check(Charge(1.0, 0.01, 2000))
    assert err.value.decline_code == DeclineCode.BUDGET_EXHAUSTED
    assert len(ledger.entries) == 1  # nothing charged


def test_ledger_of_other_data_is_refused(tmp_path):
    _open(tmp_path, dataset="a" * 64)
    with pytest.raises(PrivacyError, match="belongs to other data"):
        _open(tmp_path, dataset="b" * 64)


@pytest.mark.parametrize("damage", ["truncate", "edit", "garbage"])
def test_damaged_ledger_is_an_error_not_a_reset(tmp_path, damage):
    ledger = _open(tmp_path)
    ledger.charge(HISTORY[0], run_id="r", round=1)
    path = tmp_path / LEDGER_NAME
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "edit":  # someone lowers the recorded spend
        doc = json.loads(text)
        doc["body"]["entries"][0]["steps"] = 1
        path.write_text(json.dumps(doc))
    else:
        path.write_bytes(b"\x00\x01")
    with pytest.raises(PrivacyError, match="no training on an unverifiable budget"):
        _open(tmp_path)


def test_deleted_ledger_of_trained_data_is_an_error_until_reset(tmp_path):
    ledger = _open(tmp_path)
    ledger.charge(HISTORY[0], run_id="r", round=1)
    (tmp_path / LEDGER_NAME).unlink()
    with pytest.raises(PrivacyError, match="missing, but this node has trained"):
        _open(tmp_path)
    reset_ledger(tmp_path, reason="test: data re-collected", who="admin")
    assert _open(tmp_path).spent() == 0.0
    log = [json.loads(line) for line in (tmp_path / ADMIN_LOG_NAME).read_text().splitlines()]
    assert log[-1]["action"] == "reset" and log[-1]["reason"] == "test: data re-collected"


def test_reset_keeps_the_old_ledger_aside(tmp_path):
    _open(tmp_path).charge(HISTORY[0], run_id="r", round=1)
    kept = reset_ledger(tmp_path, reason="new study", who="admin")
    assert kept is not None and kept.exists()
    assert PrivacyLedger.load(kept).entries[0]["run_id"] == "r"
    with pytest.raises(PrivacyError, match="needs a reason"):
        reset_ledger(tmp_path, reason=" ", who="admin")


def test_verify_finds_a_recorded_figure_that_does_not_match(tmp_path):
    ledger = _open(tmp_path)
    for i, c in enumerate(HISTORY):
        ledger.charge(c, run_id="r", round=i + 1)
    assert ledger.verify() == []
    ledger._body["entries"][1]["epsilon_after"] += 0.5  # a forged record, checksum redone
    ledger._save()
    problems = PrivacyLedger.load(tmp_path / LEDGER_NAME).verify()
    assert len(problems) == 1 and "entry 1" in problems[0]


def test_verify_finds_a_miscounted_release_and_a_message_charged_twice(tmp_path):
    ledger = _open(tmp_path, budget=50.0)
    for i, c in enumerate(HISTORY):
        ledger.charge(c, run_id="r", round=1, job_id="j", message_id=f"m{i}")
    assert ledger.verify() == []
    ledger._body["entries"][1]["release"] = 1  # hides that round 1 was released again
    ledger._body["entries"][2]["message_id"] = "m0"
    ledger._save()
    problems = PrivacyLedger.load(tmp_path / LEDGER_NAME).verify()
    assert any("entry 1" in p and "release 2" in p for p in problems)
    assert any("entry 2: message m0 was already charged in entry 0" in p for p in problems)


WRITER = """
import sys
from pathlib import Path
from aidmp.privacy.ledger import Charge, PrivacyLedger
ledger = PrivacyLedger.open(Path(sys.argv[1]), dataset="c" * 64, budget_epsilon=1e9, delta=1e-5)
ledger.charge(Charge(1.0, 0.01, 10), run_id="w", round=1)  # warm: the kill lands mid-write
print("ready", flush=True)
i = 1
while True:
    i += 1
    ledger.charge(Charge(1.0, 0.01, 10), run_id="w", round=i)
"""


def test_ledger_survives_a_writer_killed_mid_write(tmp_path):
    for attempt in range(5):
        folder = tmp_path / str(attempt)
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3 + 0.1 * attempt)  # it is writing all the time, at some byte
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ledger = PrivacyLedger.load(folder / LEDGER_NAME)  # a whole file: old or new
        assert ledger.entries, "the writer got no round written"
        assert [e["round"] for e in ledger.entries] == list(range(1, len(ledger.entries) + 1))
        assert ledger.verify() == []


def test_planned_sigma_spends_the_budget_over_the_planned_rounds():
    shape = RoundShape.of(num_rows=6000, batch_size=64, epochs=1)
    sigma = plan_noise_multiplier((), 3.0, 1e-5, shape, 10)
    total = epsilon_of([shape.charge(sigma)] * 10, 1e-5)
    assert 2.9 < total <= 3.0
    # With an earlier run's spend, the same budget buys more noise.
    earlier = (shape.charge(sigma),) * 5
    assert plan_noise_multiplier(earlier, 3.0, 1e-5, shape, 10) > sigma
    spent = (shape.charge(sigma),) * 10
    nearly_all = epsilon_of(list(spent), 1e-5) + 1e-3
    with pytest.raises(BudgetExhausted, match="too little left"):  # only useless noise fits
        plan_noise_multiplier(spent, nearly_all, 1e-5, shape, 10)
    with pytest.raises(BudgetExhausted, match=r"eps 3\.\d\d of 3\.00 spent$"):
        plan_noise_multiplier((shape.charge(sigma),) * 11, 3.0, 1e-5, shape, 10)


def test_round_shape_matches_opacus_poisson_loader():
    shape = RoundShape.of(num_rows=1000, batch_size=64, epochs=2)
    assert shape.sample_rate == pytest.approx(1 / 16) and shape.steps == 32


@pytest.mark.parametrize("delta", [0.0, 1e-3, 0.5])
def test_delta_must_be_below_one_over_n(delta):
    with pytest.raises(PrivacyError, match="below 1/n"):
        check_delta(delta, num_rows=1000)
    check_delta(1e-5, num_rows=1000)


def test_a_round_released_again_after_a_restart_is_a_new_charged_release(tmp_path):
    ledger = _open(tmp_path, budget=50.0)
    c = Charge(1.1, 0.01, 100)
    ledger.charge(c, run_id="r1", round=1, job_id="job", message_id="m1")
    ledger.charge(c, run_id="r1", round=2, job_id="job", message_id="m2")  # cut short
    ledger.charge(c, run_id="r2", round=2, job_id="job", message_id="m3")  # the re-run
    ledger.charge(c, run_id="r3", round=2, job_id="other", message_id="m4")  # another job
    again = PrivacyLedger.load(tmp_path / LEDGER_NAME)
    assert [(e["job_id"], e["round"], e["release"]) for e in again.entries] == [
        ("job", 1, 1), ("job", 2, 1), ("job", 2, 2), ("other", 2, 1)
    ]  # fmt: skip
    assert again.spent() == pytest.approx(epsilon_of([c] * 4, 1e-5))  # every release counts
    assert [e["message_id"] for e in again.entries] == ["m1", "m2", "m3", "m4"]
    shown = subprocess.run(
        [sys.executable, "-m", "aidmp.cli", "ledger", "show", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert shown.count("release 2") == 1


# --- PLD by default (issue 12 §3) --------------------------------------------
# The demo's events: 5 institutions, σ 1.18, q 0.032, 31 steps a round for 10 rounds.
DEMO = [Charge(1.18, 0.032, 31)] * 10


def _dp_accounting_pld(events, delta=1e-5):
    """An independent PLD figure: dp_accounting's own accountant at its own default grid,
    every entry composed as its own event."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    acct = PLDAccountant()
    for e in events:
        if isinstance(e, GaussianRelease):
            acct.compose(dp_accounting.GaussianDpEvent(e.noise_std / e.sensitivity), e.count)
        else:
            sampled = dp_accounting.PoissonSampledDpEvent(
                e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)
            )
            acct.compose(dp_accounting.SelfComposedDpEvent(sampled, e.steps))
    return acct.get_epsilon(delta)


def test_pld_is_the_default_and_tighter_than_rdp_on_the_demo_events(tmp_path):
    ledger = _open(tmp_path / "node")
    for i, c in enumerate(DEMO):
        ledger.charge(c, run_id="demo", round=i + 1)
    assert (
        ledger.accountant == "pld" == PrivacyLedger.load(tmp_path / "node" / LEDGER_NAME).accountant
    )
    pld, rdp = ledger.spent(), ledger.spent("rdp")
    assert pld == pytest.approx(2.66, abs=0.01) and rdp == pytest.approx(2.97, abs=0.01)
    assert ledger.verify() == []


@pytest.mark.parametrize(
    "events",
    [
        DEMO,
        [*HISTORY, Charge(0.7, 0.05, 2000), Charge(4.0, 0.004, 3000)],
        [Charge(1.1, 0.25, 40), GaussianRelease(noise_std=8.0, sensitivity=1.0, count=3)],
    ],
    ids=["demo", "mixed", "with-a-gaussian-release"],
)
def test_ledger_epsilon_equals_dp_accountings_pld_over_the_same_events(tmp_path, events):
    ledger = _open(tmp_path, budget=1e6)
    for i, e in enumerate(events):
        ledger.charge(e, run_id="r", round=i + 1)
    again = PrivacyLedger.load(tmp_path / LEDGER_NAME)  # ε from the ledger file alone
    assert again.spent() == pytest.approx(_dp_accounting_pld(again.events), rel=0.01)
    assert again.spent() >= _dp_accounting_pld(again.events) * (1 - 1e-3)  # never below


def test_entries_record_the_mechanism_so_any_accountant_can_recompute(tmp_path):
    ledger = _open(tmp_path, budget=50.0)
    ledger.charge(Charge(1.1, 0.01, 100), run_id="r", round=1)
    ledger.charge(GaussianRelease(noise_std=3.0, sensitivity=0.5, count=2), run_id="r", round=1)
    first, second = PrivacyLedger.load(tmp_path / LEDGER_NAME).entries
    assert {k: first[k] for k in ("mechanism", "noise_multiplier", "sample_rate", "steps")} == {
        "mechanism": "poisson-subsampled-gaussian", "noise_multiplier": 1.1,
        "sample_rate": 0.01, "steps": 100,
    }  # fmt: skip
    assert {k: second[k] for k in ("mechanism", "noise_std", "sensitivity", "count")} == {
        "mechanism": "gaussian", "noise_std": 3.0, "sensitivity": 0.5, "count": 2,
    }  # fmt: skip
    assert first["accountant"] == second["accountant"] == "pld"
    # A plain Gaussian is the subsampled one with everyone sampled: σ = std / sensitivity.
    assert epsilon_of([second_event := ledger.events[1]], 1e-5, "rdp") == pytest.approx(
        epsilon_of([Charge(6.0, 1.0, 2)], 1e-5, "rdp")
    )
    assert second_event == GaussianRelease(3.0, 0.5, 2)
    doc = json.loads((tmp_path / LEDGER_NAME).read_text())
    doc["body"]["entries"][1]["mechanism"] = "laplace"
    doc["sha256"] = hashlib.sha256(json.dumps(doc["body"], sort_keys=True).encode()).hexdigest()
    (tmp_path / LEDGER_NAME).write_text(json.dumps(doc))
    with pytest.raises(PrivacyError, match="unknown mechanism 'laplace'"):
        PrivacyLedger.load(tmp_path / LEDGER_NAME).spent()


def _format_1_ledger(folder, entries, accountant="rdp"):
    """A ledger exactly as format 1 wrote it: entries of (σ, q, steps), no mechanism."""
    body = {"format": 1, "dataset": "a" * 64, "accountant": accountant, "delta": 1e-5,
            "budget_epsilon": 3.0, "created": "2025-01-01T00:00:00", "entries": []}  # fmt: skip
    for i, c in enumerate(entries):
        body["entries"].append(
            {
                "run_id": "old",
                "job_id": "old",
                "round": i + 1,
                "release": 1,
                "message_id": "",
                "noise_multiplier": c.noise_multiplier,
                "sample_rate": c.sample_rate,
                "steps": c.steps,
                "epsilon_after": epsilon_of(entries[: i + 1], 1e-5, accountant),
                "time": "2025-01-01T00:00:00+00:00",
            }  # fmt: skip
        )
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (folder / LEDGER_NAME).write_text(json.dumps({"body": body, "sha256": digest}))
    (folder / "trained.json").write_text(json.dumps({"datasets": ["a" * 64]}))
    return folder / LEDGER_NAME


def test_a_format_1_ledger_loads_verifies_and_is_written_as_format_2(tmp_path):
    path = _format_1_ledger(tmp_path, HISTORY)
    old = PrivacyLedger.load(path)
    assert old.events == HISTORY and old.accountant == "rdp"
    assert old.spent() == pytest.approx(old.entries[-1]["epsilon_after"], rel=1e-9)
    assert old.verify() == []
    for verb in ("show", "verify"):  # the institution's tools read it as it is
        done = aidmp("ledger", verb, str(path))
        assert done.returncode == 0, done.stderr
    old.charge(Charge(1.1, 0.01, 100), run_id="new", round=1)
    doc = json.loads(path.read_text())["body"]
    assert doc["format"] == 2 and doc["migrated_from"] == 1
    assert [e["mechanism"] for e in doc["entries"]] == ["poisson-subsampled-gaussian"] * 4
    assert PrivacyLedger.load(path).verify() == []


def test_a_node_moves_an_rdp_ledger_to_pld_and_the_ledger_records_it(tmp_path):
    from aidmp.privacy.policy import DPPolicy
    from aidmp.privacy.release import open_ledger

    path = _format_1_ledger(tmp_path, HISTORY)
    rdp = PrivacyLedger.load(path).spent()
    policy = DPPolicy.model_validate({"dp-epsilon": 3.0, "state_dir": tmp_path})
    assert policy.accountant == "pld"
    ledger = open_ledger(policy, "a" * 64)
    assert ledger.accountant == "pld" and ledger.spent() < rdp
    (change,) = PrivacyLedger.load(path).accountant_changes
    assert (change["from"], change["to"], change["entries"]) == ("rdp", "pld", 3)
    assert change["spent_before"] == pytest.approx(rdp)
    ledger.charge(Charge(1.1, 0.01, 100), run_id="new", round=1)
    again = PrivacyLedger.load(path)
    assert [e["accountant"] for e in again.entries] == ["rdp"] * 3 + ["pld"]
    assert again.verify() == []  # each entry recomputed by the accountant that wrote it
    back = DPPolicy.model_validate(
        {"dp-epsilon": 3.0, "dp-accountant": "rdp", "state_dir": tmp_path}
    )
    assert open_ledger(back, "a" * 64).spent() == pytest.approx(
        epsilon_of(again.events, 1e-5, "rdp")
    )
    with pytest.raises(PrivacyError, match="budget is fixed"):
        open_ledger(DPPolicy.model_validate({"dp-epsilon": 4.0, "state_dir": tmp_path}), "a" * 64)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_planning_reaches_the_budget_under_each_accountant(accountant):
    shape = RoundShape(sample_rate=0.032, steps=31)  # the demo's
    earlier = (Charge(1.3, 0.032, 155),)
    for history in [(), earlier]:
        start = time.perf_counter()
        sigma = plan_noise_multiplier(history, 3.0, 1e-5, shape, 10, accountant)
        took = time.perf_counter() - start
        ten_rounds = [*history, *[shape.charge(sigma)] * 10]  # the ledger after the run
        total = epsilon_of(ten_rounds, 1e-5, accountant)
        assert 3.0 * (1 - 5e-3) < total <= 3.0  # σ within PLAN_TOLERANCE of the smallest
        assert took < 10  # about 0.5 s here; a node plans in its first round of a run
    pld = plan_noise_multiplier((), 3.0, 1e-5, shape, 10, "pld")
    assert pld < plan_noise_multiplier((), 3.0, 1e-5, shape, 10, "rdp")  # tighter: less noise


def test_ledger_show_names_other_mechanisms_and_accountant_changes(tmp_path):
    from aidmp.privacy.policy import DPPolicy
    from aidmp.privacy.release import open_ledger

    _format_1_ledger(tmp_path, HISTORY)
    ledger = open_ledger(
        DPPolicy.model_validate({"dp-epsilon": 3.0, "state_dir": tmp_path}), "a" * 64
    )
    ledger.charge(GaussianRelease(noise_std=4.0, sensitivity=2.0), run_id="stats", round=1)
    shown = subprocess.run(
        [sys.executable, "-m", "aidmp.cli", "ledger", "show", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "gaussian, sensitivity 2" in shown and "accountant rdp -> pld" in shown
    assert f"spent eps {ledger.spent():.4f} of 3 (pld)" in shown


@pytest.mark.parametrize(("sigma", "count"), [(50.3, 20), (2.0, 1), (1.0, 5), (0.7, 3)])
def test_plain_gaussian_releases_compose_in_closed_form_as_dp_accounting_says(sigma, count):
    """Evaluation figures and statistics are un-subsampled Gaussians: their composition is
    one Gaussian (μ² adds up), and its ε has a closed form (Balle and Wang 2018)."""
    import dp_accounting

    from aidmp.privacy.ledger import GaussianRelease

    reference = dp_accounting.pld.PLDAccountant()
    reference.compose(dp_accounting.GaussianDpEvent(sigma), count)
    ours = epsilon_of([GaussianRelease(sigma * 3.0, 3.0, 1)] * count, 1e-5)
    assert ours == pytest.approx(reference.get_epsilon(1e-5), rel=1e-3)
