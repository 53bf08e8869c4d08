"""A deployed node's own data file and policy: governed, cached, declined with reasons.

The rows are real UCI Adult rows; the identifier columns added to them are made up.
"""

import hashlib
import json
import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.common.serde import recorddict_to_proto

from aidmp.client import governed as governed_module
from aidmp.client.app import app
from aidmp.config import RunConfig
from aidmp.errors import DeclineCode
from aidmp.governance.scenarios import made_up_pii
from aidmp.privacy.audit import AUDIT_NAME, verify_audit_log
from aidmp.server.round_settings import round_config_for
from aidmp.simulations.runner import bundled_policy
from aidmp.tasks import get_task


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    rows = get_task("adult").raw_train().iloc[:600].copy()
    rows["consent"] = "yes"
    rows = rows.join(made_up_pii(rows, np.random.default_rng(0)))
    rows.to_csv(folder / "rows.csv", index=False)
    return folder


def _train(site, node_config, seed=0, rnd=1, job_id=""):
    cfg = RunConfig(task="adult", dp=False, out_dir=str(site / "run"), seed=seed)
    torch.manual_seed(0)
    model = get_task("adult").build_model()
    config = round_config_for(cfg, rnd, job_id)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config})
    msg = Message(content, dst_node_id=3, message_type="train")
    # A node with its own data always states its DP choice (`node start --no-dp` here).
    node_config = {"dp": "false"} | node_config
    context = Context(
        run_id=5, node_id=3, node_config=node_config, state=RecordDict(), run_config={}
    )
    return app(msg, context)  # the whole ClientApp, mods (the audit trail) included


def test_a_node_trains_on_its_governed_file_and_reports_aggregates(site, monkeypatch):
    node = {"data": str(site / "rows.csv"), "policy": str(bundled_policy("adult")),
            "state-dir": str(site / "state"), "name": "hospital-a"}  # fmt: skip
    calls = []
    real = governed_module.govern
    monkeypatch.setattr(governed_module, "govern", lambda *a, **k: calls.append(1) or real(*a, **k))
    reply = _train(site, node)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    summary = reply.content["governance"]
    assert summary["decision"] == "admit"
    # The policy does not declare the made-up identifier columns: never named, only the kind.
    assert "email" in summary["pii-undeclared"]
    assert not any(entry.startswith("email=") for entry in summary.get("pii-columns", []))
    assert reply.content["metrics"]["num-examples"] < 600
    assert (site / "state" / "governance-report.html").is_file()
    _train(site, node)  # the same file and policy: not scanned again
    assert len(calls) == 1
    assert verify_audit_log(site / "state" / AUDIT_NAME) == []


def test_the_privacy_officer_gets_a_report_for_each_job_and_round(site, monkeypatch):
    """Each scan's report says when, for which job and round, and what was decided; k
    as asked and achieved; outliers per column; tables, not JSON. Every round's report
    is kept, and an index lists them. (A deployed node scans in every round: each
    message is a new process, so the cache is empty; here it is emptied by hand.)"""
    from aidmp.governance.report import HISTORY

    state = site / "state-officer"
    node = {"data": str(site / "rows.csv"), "policy": str(bundled_policy("adult")),
            "state-dir": str(state), "name": "hospital-a"}  # fmt: skip
    for rnd in (1, 2):
        monkeypatch.setattr(governed_module, "_cache", type(governed_module._cache)())
        assert not _train(site, node, rnd=rnd, job_id="job7").has_error()
    history = state / HISTORY
    assert sorted(p.name for p in history.glob("*.html")) == [
        "index.html", "job7-round-001.html", "job7-round-002.html"
    ]  # fmt: skip
    report = json.loads((history / "job7-round-002.json").read_text())
    assert (report["job_id"], report["round"], report["decision"]) == ("job7", 2, "admit")
    assert report["generated_at"].endswith("Z")
    by_column = report["outliers"]["by_column"]
    assert by_column and sum(by_column.values()) >= report["outliers_flagged"] > 0
    page = (history / "job7-round-002.html").read_text()
    assert "job job7, round 2" in page and "Decision: admit" in page
    k = report["k_anonymity"]
    assert k["achieved"] >= k["k"] == 5
    assert f'<td class="n">5</td><td class="n">{k["achieved"]}</td><td>met</td>' in page
    top = max(by_column, key=by_column.get)
    assert f'<td>{top}</td><td class="n">{by_column[top]:,}</td>' in page  # per column
    assert '{"' not in page and "&quot;" not in page  # tables, not JSON strings
    latest = (state / "governance-report.html").read_text()
    assert latest == page  # the latest is round 2's
    index = (history / "index.html").read_text()
    assert index.index("job7-round-002.html") < index.index("job7-round-001.html")


def test_an_unreadable_file_is_a_decline_not_a_crash(site):
    (site / "empty.csv").write_bytes(b"")
    node = {"data": str(site / "empty.csv"), "policy": str(bundled_policy("adult")),
            "state-dir": str(site / "state2")}  # fmt: skip
    reply = _train(site, node)
    assert reply.has_error() and reply.error.code == DeclineCode.GOVERNANCE
    assert "(data-unreadable)" in reply.error.reason and str(site) not in reply.error.reason


def test_a_broken_policy_is_a_decline_whose_line_only_the_node_logs(site, caplog):
    (site / "bad.yaml").write_text("label: income\ncolumns:\n  income: {type: text}\n")
    node = {"data": str(site / "rows.csv"), "policy": str(site / "bad.yaml"),
            "state-dir": str(site / "state3")}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="aidmp.client"):
        reply = _train(site, node)
    assert reply.has_error() and reply.error.code == DeclineCode.GOVERNANCE
    # The coordinator hears a fixed description and a code; the policy's text and path
    # stay in the node's own log.
    assert "(policy-invalid)" in reply.error.reason and "income" not in reply.error.reason
    assert "line 3, columns.income.type" in caplog.text


def test_a_failure_inside_the_node_is_an_audited_decline_without_data(site, monkeypatch):
    def broken(frame):
        raise ValueError("could not convert string to float: 'Jane Doe'")  # made-up value

    import dataclasses

    import aidmp.tasks.adult

    monkeypatch.setattr(
        aidmp.tasks.adult, "TASK", dataclasses.replace(aidmp.tasks.adult.TASK, encode=broken)
    )
    governed_module._cache.clear()
    node = {"data": str(site / "rows.csv"), "policy": str(bundled_policy("adult")),
            "state-dir": str(site / "state4")}  # fmt: skip
    reply = _train(site, node)
    assert reply.has_error() and "Jane" not in reply.error.reason
    assert "(task-mismatch)" in reply.error.reason
    records = [json.loads(x) for x in (site / "state4" / AUDIT_NAME).read_text().splitlines()]
    assert records[-1]["kind"] == "train-decline"


def test_the_audit_log_hashes_exactly_what_left(site):
    node = {"data": str(site / "rows.csv"), "policy": str(bundled_policy("adult")),
            "state-dir": str(site / "state5")}  # fmt: skip
    reply = _train(site, node)
    sent = recorddict_to_proto(reply.content).SerializeToString(deterministic=True)
    (record,) = [json.loads(x) for x in (site / "state5" / AUDIT_NAME).read_text().splitlines()]
    assert record["payload_sha256"] == hashlib.sha256(sent).hexdigest()
    assert record["payload_bytes"] == len(sent)


def test_each_release_draws_secret_noise_and_is_charged_once(site):
    """A node with its own data never seeds DP noise from the coordinator's run seed:
    the same round released twice (as after a coordinator restart) gets fresh noise,
    and the ledger enters it twice, as release 1 and 2, each under its message id."""
    node = {"data": str(site / "rows.csv"), "policy": str(bundled_policy("adult")),
            "state-dir": str(site / "state6"), "dp": "true", "dp-epsilon": "50"}  # fmt: skip
    first, second = _train(site, node), _train(site, node)
    assert not first.has_error() and not second.has_error()
    a = first.content["arrays"].to_torch_state_dict()
    b = second.content["arrays"].to_torch_state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # same model, data and run seed
    assert [first.content["node"]["release"], second.content["node"]["release"]] == [1, 2]
    entries = json.loads((site / "state6" / "ledger.json").read_text())["body"]["entries"]
    assert [(e["round"], e["release"]) for e in entries] == [(1, 1), (1, 2)]
    audit = [json.loads(x) for x in (site / "state6" / AUDIT_NAME).read_text().splitlines()]
    assert [r["details"].get("release") for r in audit] == [1, 2]
    assert [r["epsilon_charged"] for r in audit] == [
        pytest.approx(entries[0]["epsilon_after"]),
        pytest.approx(entries[1]["epsilon_after"] - entries[0]["epsilon_after"]),
    ]


def test_a_simulated_node_keeps_the_run_seed_so_a_run_repeats():
    from aidmp.privacy.release import release_seed

    assert release_seed(1234, own_data=False) == 1234
    assert release_seed(1234, own_data=True) is None  # no seed: the CSPRNG, keyed afresh


def test_the_coordinator_seed_does_not_move_the_rows_a_node_trains_on(site):
    """A node with its own data splits train from validation by its own seed, so every
    job charges the same ledger, whatever seed the coordinator picks."""
    node = {"data": str(site / "rows.csv"), "policy": str(bundled_policy("adult")),
            "state-dir": str(site / "state7"), "dp": "true", "dp-epsilon": "50"}  # fmt: skip
    first, other_job = _train(site, node, seed=0), _train(site, node, seed=7)
    assert not first.has_error() and not other_job.has_error(), other_job.error.reason
    entries = json.loads((site / "state7" / "ledger.json").read_text())["body"]["entries"]
    assert len(entries) == 2
