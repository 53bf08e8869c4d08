"""Governance in a federation, with made-up PII, on the in-process engine
(simulations/inprocess.py: the real ClientApp, every message through Flower's protobuf
both ways; Ray itself is tested in tests/test_simulation.py).

Institutions 0 and 1 hold invented names, e-mails, phones, SSN-shaped numbers and
dates of birth (governance/scenarios.py); institution 2 has lost a column. Every
reply that reaches the coordinator is recorded: no identifier value may be in it,
and no governance figure below the policy's minimum count.
"""

import json
from pathlib import Path

import pytest
from flwr.app import Message
from flwr.common.serde import recorddict_to_proto

from aidmp.client.governed import _source
from aidmp.config import RunConfig
from aidmp.errors import DeclineCode
from aidmp.governance.policy import load_policy
from aidmp.privacy.audit import AUDIT_NAME, verify_audit_log
from aidmp.round_config import RoundConfig
from aidmp.server.report import REPORT_NAME
from aidmp.server.round_settings import round_config_for
from aidmp.simulations.runner import bundled_policy
from tests.recording import run_recorded

INSTITUTIONS = 3
SCENARIO = "pii:0,1;dirty:1;broken:2"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gov-sim")
    received: list[Message] = []
    cfg = RunConfig(
        task="adult", partition="iid", seed=1, num_rounds=1, dp=True, dp_epsilon=5.0,
        governance_policy=str(bundled_policy("adult")), governance_scenario=SCENARIO,
        out_dir=str(out),
    )  # fmt: skip
    cfg = run_recorded(cfg, INSTITUTIONS, received, engine="inprocess")
    return cfg, out, received


def _identifiers(cfg: RunConfig, index: int) -> set[str]:
    """The made-up identifier values institution `index` held, regenerated."""
    policy, _ = load_policy(Path(cfg.governance_policy))
    node = {"partition-id": index, "num-partitions": INSTITUTIONS}
    config = RoundConfig.from_record(round_config_for(cfg, 1))  # as a node parses it
    _, load = _source(node, config, policy)
    frame = load()
    values: set[str] = set()
    for column in ("name", "email", "phone", "ssn", "date_of_birth"):
        values |= set(frame[column].astype(str))
    return values


def test_no_identifier_value_reaches_the_coordinator(run):
    cfg, _, received = run
    assert received, "nothing was recorded"
    wire = b"".join(
        recorddict_to_proto(m.content).SerializeToString() if not m.has_error()
        else m.error.reason.encode()
        for m in received
    )  # fmt: skip
    for index in (0, 1):
        identifiers = _identifiers(cfg, index)
        assert len(identifiers) > 1000
        leaked = [v for v in identifiers if v.encode() in wire]
        assert not leaked, leaked[:5]


def test_no_governance_figure_under_the_minimum_count_leaves(run):
    _, _, received = run
    summaries = [
        dict(m.content["governance"]) for m in received
        if not m.has_error() and "governance" in m.content.config_records
    ]  # fmt: skip
    assert len(summaries) == 2  # institutions 0 and 1 trained
    for summary in summaries:
        counts = {
            k: v for k, v in summary.items() if isinstance(v, int) and not isinstance(v, bool)
        }
        assert all(v == 0 or v >= 10 for v in counts.values()), counts
        assert "rows-in" not in summary
        # The bundled policy does not declare the made-up identifier columns: their names
        # never leave, only the kinds of data found in them.
        assert "email" in summary["pii-undeclared"]


def test_each_decision_is_reported_and_the_broken_node_declines(run):
    _, out, _ = run
    report = json.loads((out / REPORT_NAME).read_text())
    by = report["governance"]["by_institution"]
    assert by["institution-0"]["decision"] == "admit"
    assert by["institution-1"]["decision"] == "admit"
    assert by["institution-1"]["removed-duplicates"] > 0  # the dirty institution was cleaned
    assert by["institution-2"] == {
        "round": 1, "decision": "decline", "reason": "governance: schema: column 'age' missing"
    }  # fmt: skip
    (failure,) = report["per_round"][0]["train_failures"]
    assert failure["code"] == DeclineCode.GOVERNANCE


def test_every_node_audited_what_it_sent_and_kept_its_report(run):
    _, out, _ = run
    for index in range(INSTITUTIONS):
        folder = out / "institutions" / f"institution-{index}"
        assert verify_audit_log(folder / AUDIT_NAME) == []
        records = [json.loads(line) for line in (folder / AUDIT_NAME).read_text().splitlines()]
        kinds = [r["kind"] for r in records]
        assert kinds[0] == ("train-decline" if index == 2 else "train-reply")
        assert (folder / "governance-report.html").is_file()
        local = json.loads((folder / "governance-report.json").read_text())
        assert local["decision"] == ("decline" if index == 2 else "admit")
        if index < 2:
            assert (
                records[0]["epsilon_charged"] > 0 and records[0]["governance_decision"] == "admit"
            )
