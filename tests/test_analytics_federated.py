"""Federated statistics end to end: the coordinator's run_analysis, the real ClientApp's
query handler (governance, the node's cap and budget, real ledgers, real noise) and the
audit trail, in process (simulations/inprocess.py); one slow test on Flower's Ray engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from flwr.app import Message

from aidmp.analytics import load_query, parse_query, plan_query
from aidmp.cli import main as cli_main
from aidmp.config import RunConfig
from aidmp.errors import DeclineCode
from aidmp.governance.policy import load_policy
from aidmp.privacy.audit import AUDIT_NAME, AuditLog, verify_audit_log
from aidmp.privacy.ledger import LEDGER_NAME, PrivacyLedger
from aidmp.server.analysis import ANALYSIS_NAME, ANALYSIS_PLOT, run_analysis
from aidmp.simulations.inprocess import InProcessGrid
from aidmp.simulations.runner import bundled_policy, prepare
from aidmp.tasks import get_task
from tests.recording import RecordingGrid

EXAMPLE = Path(__file__).resolve().parents[1] / "simulations" / "queries" / "adult.yaml"
SMALL_QUERY = """
epsilon: 1.0
statistics:
  - {name: rows, count: {}}
  - {name: mean_age, mean: {column: age, bounds: [17, 90]}}
  - {name: hours, histogram: {column: hours-per-week, bins: [1, 20, 35, 40, 45, 60, 99]}}
"""


def _cfg(out: Path, institutions: int = 3, **extra: object) -> RunConfig:
    cfg = RunConfig.from_flower(
        {
            "task": "adult",
            "partition": "dirichlet:0.5",
            "out-dir": str(out),
            "governance-policy": str(bundled_policy("adult")),
            "dp": True,
            "dp-epsilon": 3.0,
            "central-eval": False,
            **extra,
        }
    )
    return prepare(cfg, institutions)


def _run(tmp_path: Path, query_text: str = SMALL_QUERY, institutions: int = 3,
         node_config=None, received: list[Message] | None = None, **extra: object):  # fmt: skip
    cfg = _cfg(tmp_path / "out", institutions, **extra)
    grid = InProcessGrid(institutions, node_config=node_config)
    target = RecordingGrid(grid, received) if received is not None else grid
    query = parse_query(query_text)
    result = run_analysis(target, query, cfg, run_id=str(grid.run.run_id), quiet=True)
    return cfg, query, result


def _ledger(cfg: RunConfig, name: str) -> PrivacyLedger:
    return PrivacyLedger.load(Path(cfg.out_dir) / "institutions" / name / LEDGER_NAME)


def _independent_epsilon(query_text: str, delta: float) -> float:
    """dp_accounting's PLD accountant over the query's events, one Gaussian each."""
    policy = load_policy(bundled_policy("adult"))[0]
    plan = plan_query(parse_query(query_text), policy)
    accountant = PLDAccountant(value_discretization_interval=1e-4)
    accountant.compose(
        dp_accounting.ComposedDpEvent(
            [dp_accounting.GaussianDpEvent(e.noise_multiplier) for e in plan.events()]
        )
    )
    return float(accountant.get_epsilon(delta))


def test_epsilon_charged_matches_an_independent_accountant(tmp_path):
    cfg, query, result = _run(tmp_path)
    expected = _independent_epsilon(SMALL_QUERY, query.delta)
    charged = result["privacy"]["epsilon_by_institution"]
    assert sorted(charged) == ["institution-0", "institution-1", "institution-2"]
    for name, eps in charged.items():
        ledger = _ledger(cfg, name)
        assert ledger.spent() == pytest.approx(eps, rel=1e-9)  # the node's own figure
        assert eps == pytest.approx(expected, rel=5e-3)
        assert eps <= query.epsilon + 1e-9
        (entry,) = ledger.entries
        assert entry["release_kind"] == "analytics" and entry["mechanism"] == "gaussian"
        assert ledger.verify() == []


def test_a_query_over_budget_is_declined_and_the_ledger_untouched(tmp_path):
    # Each institution's budget (0.5) is below the query's ε (1.0).
    cfg, _, result = _run(tmp_path, **{"dp-epsilon": 0.5})
    declined = result["institutions"]["declined"]
    assert len(declined) == 3 and result["institutions"]["answered"] == []
    assert {f["code"] for f in declined} == {DeclineCode.BUDGET_EXHAUSTED}
    assert all(s["value"] is None for s in result["statistics"].values())
    for i in range(3):
        path = Path(cfg.out_dir) / "institutions" / f"institution-{i}" / LEDGER_NAME
        assert not path.exists() or PrivacyLedger.load(path).entries == []


def test_the_node_cap_declines_a_query_asking_too_much(tmp_path):
    cap = {0: {"analytics-max-epsilon": 0.5}}
    cfg, _, result = _run(tmp_path, node_config=lambda i: cap.get(i, {}))
    (failure,) = result["institutions"]["declined"]
    assert failure["institution"] == "institution-0"
    assert failure["code"] == DeclineCode.BUDGET_EXHAUSTED
    assert "analytics-max-epsilon" in str(failure["reason"])
    assert result["institutions"]["answered"] == ["institution-1", "institution-2"]
    path = Path(cfg.out_dir) / "institutions" / "institution-0" / LEDGER_NAME
    assert not path.exists() or PrivacyLedger.load(path).entries == []


def test_a_node_without_dp_releases_nothing(tmp_path):
    _, _, result = _run(tmp_path, node_config=lambda i: {"dp": False} if i == 1 else {})
    (failure,) = result["institutions"]["declined"]
    assert failure["institution"] == "institution-1"
    assert failure["code"] == DeclineCode.PRIVACY_POLICY
    assert result["statistics"]["rows"]["institutions"] == 2


def test_counts_below_min_count_never_leave_a_node(tmp_path):
    query = """
epsilon: 1.0
min_count: 40
statistics:
  - {name: rows, count: {}}
  - {name: very_old, count: {where: "age > 88"}}
  - {name: hours, histogram: {column: hours-per-week, bins: [1, 2, 3, 40, 99]}}
  - {name: mean_old, mean: {column: age, bounds: [17, 90], where: "age > 88"}}
"""
    received: list[Message] = []
    _, _, result = _run(tmp_path, query, received=received)
    replies = [m for m in received if not m.has_error()]
    assert len(replies) == 3
    seen_withheld = 0
    for reply in replies:
        # What a reply carries: the partial, the node's privacy spend, its governance
        # summary; no rows, no paths.
        assert set(reply.content.config_records) == {"analytics", "node", "governance"}
        assert not reply.content.array_records and not reply.content.metric_records
        text = json.dumps({k: dict(v) for k, v in reply.content.config_records.items()})
        assert "/" + "tmp" not in text and str(tmp_path) not in text
        partial = json.loads(str(reply.content.config_records["analytics"]["partial"]))
        assert partial["min_count"] >= 40
        for stat in partial["statistics"].values():
            comps = stat["components"]
            counts = comps["count"]["value"] if "count" in comps else None
            cells = comps["counts"]["value"] if "counts" in comps else []
            for value in ([counts] if counts is not None else []) + cells:
                if value is not None:
                    assert value >= 40
            seen_withheld += stat["withheld"]
    assert seen_withheld > 0  # the query's small figures were there to withhold
    assert result["statistics"]["very_old"]["withheld"] > 0


def _own_data_csv(path: Path) -> Path:
    raw = get_task("adult").raw_train().iloc[:3000].copy()
    raw["consent"] = "yes"
    raw.to_csv(path, index=False)
    return path


def test_a_node_with_its_own_data_uses_its_own_policy_and_cap(tmp_path):
    data = _own_data_csv(tmp_path / "site-a.csv")
    own = {
        "data": str(data),
        "policy": str(bundled_policy("adult")),
        "dp": True,
        "dp-epsilon": 2.0,
        "state-dir": str(tmp_path / "site-a"),
        "name": "site-a",
    }
    # The run asks for a budget of 3 at every node; site-a keeps its own 2 and answers.
    cfg, _, result = _run(tmp_path, node_config=lambda i: own if i == 0 else {})
    assert "site-a" in result["institutions"]["answered"]
    ledger = PrivacyLedger.load(tmp_path / "site-a" / LEDGER_NAME)
    assert ledger.budget == 2.0 and len(ledger.entries) == 1
    assert result["privacy"]["epsilon_by_institution"]["site-a"] == pytest.approx(ledger.spent())
    # Its own cap below the query's ε: declined, whatever the run's settings.
    capped = own | {"analytics-max-epsilon": 0.25, "state-dir": str(tmp_path / "site-b")}
    _, _, result = _run(tmp_path / "again", node_config=lambda i: capped if i == 0 else {})
    (failure,) = result["institutions"]["declined"]
    assert failure["institution"] == "site-a"
    assert failure["code"] == DeclineCode.BUDGET_EXHAUSTED
    assert (
        not (tmp_path / "site-b" / LEDGER_NAME).exists()
        or not PrivacyLedger.load(tmp_path / "site-b" / LEDGER_NAME).entries
    )


def test_the_audit_log_verifies_and_records_the_analytics_release(tmp_path):
    cfg, _, _ = _run(tmp_path, institutions=2)
    for i in range(2):
        folder = Path(cfg.out_dir) / "institutions" / f"institution-{i}"
        assert verify_audit_log(folder / AUDIT_NAME) == []
        (record,) = AuditLog(folder / AUDIT_NAME).records()
        assert record["kind"] == "query.analytics-reply"
        details = record["details"]
        assert isinstance(details, dict) and details["release_kind"] == "analytics"
        (entry,) = PrivacyLedger.load(folder / LEDGER_NAME).entries
        assert entry["message_id"] == details["reply_to"]  # the release the ledger charged
        assert record["epsilon_charged"] == pytest.approx(entry["epsilon_after"])


def test_analysis_json_has_the_documented_shape(tmp_path):
    cfg, query, result = _run(tmp_path, EXAMPLE.read_text(), institutions=2)
    out = Path(cfg.out_dir)
    on_disk = json.loads((out / ANALYSIS_NAME).read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert (out / ANALYSIS_PLOT).stat().st_size > 0
    assert set(on_disk) >= {"format", "query", "statistics", "privacy", "institutions"}
    assert set(on_disk["query"]) >= {"digest", "epsilon", "delta", "canonical"}
    assert set(on_disk["privacy"]) >= {
        "epsilon_per_institution", "delta", "epsilon_by_institution", "declined",
    }  # fmt: skip
    assert [s.name for s in query.statistics] == list(on_disk["statistics"])
    for stat in on_disk["statistics"].values():
        assert set(stat) >= {"kind", "value", "std_error", "ci95", "epsilon", "institutions",
                             "withheld"}  # fmt: skip
    rows = on_disk["statistics"]["rows"]
    assert rows["ci95"][0] < rows["value"] < rows["ci95"][1]
    assert len(on_disk["statistics"]["hours"]["value"]) == 6


def test_a_bad_query_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "q.yaml"
    bad.write_text("epsilon: -1\nstatistics: []\n")
    assert cli_main(["analyze", "--query", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aidmp: error:") and "\n" not in err


@pytest.mark.slow
def test_aidmp_analyze_on_flowers_ray_engine(tmp_path, capsys):
    out = tmp_path / "analysis"
    code = cli_main(
        ["analyze", "--query", str(EXAMPLE), "--out", str(out), "--institutions", "3",
         "--task", "adult", "--govern"]
    )  # fmt: skip
    assert code == 0
    result = json.loads((out / ANALYSIS_NAME).read_text())
    assert result["institutions"]["answered"] == [f"institution-{i}" for i in range(3)]
    query, _ = load_query(EXAMPLE)
    for eps in result["privacy"]["epsilon_by_institution"].values():
        assert 0 < eps <= query.epsilon
    assert (out / ANALYSIS_PLOT).is_file()
    assert "statistic" in capsys.readouterr().out  # the budget table came first


def test_a_deployed_run_carries_the_query_in_its_run_config(tmp_path):
    """`aidmp run --analysis Q.yaml`: the query travels as the run config's `analysis`
    (a TOML file, since the JSON is long and quoted), and the ServerApp answers it with
    run_analysis instead of training."""
    import tomllib

    from flwr.app import Context, RecordDict

    from aidmp.cli.coordinator import analysis_run_config
    from aidmp.server.app import main as server_main

    out = tmp_path / "out"
    toml = analysis_run_config(
        f"num-rounds=2 out-dir='{out}' min-nodes=2 central-eval=false", str(EXAMPLE), tmp_path
    )
    pairs = tomllib.loads(Path(toml).read_text())
    cfg = RunConfig.from_flower(pairs)
    query, digest = load_query(EXAMPLE)
    assert parse_query(cfg.analysis).digest() == digest and cfg.num_rounds == 2
    # In simulation the run config also names the governance policy; a deployed node
    # would use its own.
    run_config = pairs | {"governance-policy": str(bundled_policy("adult")),
                          "partition": "iid"}  # fmt: skip
    grid = InProcessGrid(2)
    context = Context(
        run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(),
        run_config=run_config,
    )  # fmt: skip
    server_main(grid, context)
    result = json.loads((out / ANALYSIS_NAME).read_text())
    assert result["query"]["digest"] == digest
    assert result["institutions"]["answered"] == ["institution-0", "institution-1"]
    assert not (out / "checkpoint.npz").exists()  # nothing trained


def test_a_deployed_query_must_state_its_metadata(tmp_path):
    from aidmp.cli.coordinator import analysis_run_config
    from aidmp.errors import AidmpError

    query = tmp_path / "q.yaml"
    query.write_text("epsilon: 1\nstatistics:\n  - {name: e, histogram: {column: education}}\n")
    with pytest.raises(AidmpError, match="states every bound"):
        analysis_run_config("", str(query), tmp_path)


def test_under_he_the_coordinator_receives_only_ciphertexts(tmp_path):
    """--he: each partial's values leave as CKKS ciphertext; the plaintext skeleton only
    says which were withheld; the coordinator adds ciphertexts under the public key and
    the researcher decrypts the one sum. Same noise (same seeds) as in plaintext, so the
    figures agree to the CKKS error."""
    from aidmp.privacy.he.keys import simulation_keys

    keys = tmp_path / "keys"
    simulation_keys(keys)
    received: list[Message] = []
    _, _, plain = _run(tmp_path / "plain")

    import aidmp.simulations.analysis as sim

    cfg = _cfg(tmp_path / "he", 3, he=True, **{"he-keys": str(keys)})
    grid = InProcessGrid(3)
    result = run_analysis(
        RecordingGrid(grid, received), parse_query(SMALL_QUERY), cfg,
        run_id=str(grid.run.run_id), quiet=True, decrypt=sim._researcher_decrypts(cfg),
    )  # fmt: skip
    replies = [m for m in received if not m.has_error()]
    assert len(replies) == 3
    for reply in replies:
        answer = reply.content.config_records["analytics"]
        assert "partial" not in answer and answer["chunks"]
        assert all(isinstance(c, bytes) and len(c) > 1000 for c in answer["chunks"])
        skeleton = json.loads(str(answer["skeleton"]))
        for stat in skeleton["statistics"].values():
            for comp in stat["components"].values():
                values = comp["value"] if isinstance(comp["value"], list) else [comp["value"]]
                assert all(v in (None, 0.0) for v in values)  # no figure in plaintext
    assert result["he"] is True
    for i in range(3):  # each node's audit log says the reply was encrypted
        log = Path(cfg.out_dir) / "institutions" / f"institution-{i}" / AUDIT_NAME
        (record,) = AuditLog(log).records()
        assert record["details"]["encrypted"] is True  # type: ignore[index]
    for name, stat in plain["statistics"].items():
        assert _as_floats(result["statistics"][name]["value"]) == pytest.approx(
            _as_floats(stat["value"]), abs=1e-3
        )
        assert _as_floats(result["statistics"][name]["std_error"]) == pytest.approx(
            _as_floats(stat["std_error"]), rel=1e-6
        )  # a mean's depends on the (decrypted) count


def _as_floats(value):
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


def test_a_node_holding_a_key_answers_no_plaintext_query(tmp_path):
    """A node with its own data and its own CKKS key sends nothing in plaintext: a query
    without he is declined (104) before any budget is charged."""
    from aidmp.privacy.he.keys import key_ceremony

    key_ceremony(tmp_path / "keys")
    own = {
        "data": str(_own_data_csv(tmp_path / "site-a.csv")),
        "policy": str(bundled_policy("adult")),
        "dp": True,
        "dp-epsilon": 2.0,
        "state-dir": str(tmp_path / "site-a"),
        "he-keys": str(tmp_path / "keys" / "institution.ckks"),
        "name": "site-a",
    }
    _, _, result = _run(tmp_path / "run", node_config=lambda i: own if i == 0 else {})
    (failure,) = result["institutions"]["declined"]
    assert failure["institution"] == "site-a" and failure["code"] == DeclineCode.HE_KEYS
    ledger = tmp_path / "site-a" / LEDGER_NAME
    assert not ledger.exists() or not PrivacyLedger.load(ledger).entries


def test_a_deployed_coordinator_has_a_site_decrypt_the_sum_and_a_site_decrypts_nothing_else(
    tmp_path,
):
    """A deployed coordinator holds the public key only: under HE it adds the encrypted
    partials, then asks a site that answered to decrypt that one sum (`query.decrypt`,
    server/key_holder.py). The figures equal the researcher's decryption in simulation.
    A site refuses (103) to decrypt for a release its own ledger did not charge."""
    from flwr.app import ConfigRecord, RecordDict

    from aidmp.privacy.he.keys import simulation_keys
    from aidmp.server.round_settings import round_config_for

    keys = tmp_path / "keys"
    simulation_keys(keys)
    received: list[Message] = []
    _, _, plain = _run(tmp_path / "plain")
    cfg = _cfg(tmp_path / "he", 3, he=True, **{"he-keys": str(keys)})
    grid = InProcessGrid(3)
    result = run_analysis(
        RecordingGrid(grid, received), parse_query(SMALL_QUERY), cfg,
        run_id=str(grid.run.run_id), quiet=True,
    )  # fmt: skip
    (decrypted,) = [m for m in received if "decrypted" in m.content.config_records]
    asked = {m.metadata.src_node_id for m in received if "analytics" in m.content.config_records}
    assert decrypted.metadata.src_node_id in asked  # a site that answered
    for name, stat in plain["statistics"].items():
        assert _as_floats(result["statistics"][name]["value"]) == pytest.approx(
            _as_floats(stat["value"]), abs=1e-3
        )
    # The decryption is audited at the site that made it, and charged nothing.
    audits = [
        AuditLog(Path(cfg.out_dir) / "institutions" / f"institution-{i}" / AUDIT_NAME).records()
        for i in range(3)
    ]
    decryptions = [r for log in audits for r in log if r["kind"] == "query.decrypt-reply"]
    assert len(decryptions) == 1 and decryptions[0]["epsilon_charged"] is None

    # The same sum again, but naming a release no node's ledger charged: every site refuses.
    record = decrypted  # any reply will do for the node id
    content = RecordDict(
        {
            "config": round_config_for(cfg, 1, "another-job"),
            "decrypt": ConfigRecord(
                {"chunks": [b"\0" * 64], "size": 3, "contributions": 3,
                 "fingerprint": "x", "release": "not-a-release"}
            ),
        }
    )  # fmt: skip
    from aidmp.privacy.he.keys import fingerprint, key_file_for, load_context

    public = load_context(key_file_for(keys, "coordinator"), "coordinator")
    content["decrypt"]["fingerprint"] = fingerprint(public)
    msg = Message(content=content, dst_node_id=record.metadata.src_node_id,
                  message_type="query.decrypt")  # fmt: skip
    (reply,) = grid.send_and_receive([msg], timeout=60)
    assert reply.has_error() and reply.error.code == 103
    assert "its ledger has no such release" in reply.error.reason
