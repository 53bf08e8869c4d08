"""Nothing an attacker feeds a node reaches the coordinator, and nothing it feeds a node
makes a local report, a draft or an error message dangerous or huge.

Every identifier in these tests is made up.
"""

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from flwr.app import ArrayRecord, Context, Message, RecordDict

from aidmp.client.app import app
from aidmp.config import RunConfig
from aidmp.errors import AidmpError, DeclineCode, PrivacyError
from aidmp.governance.draft import draft_policy
from aidmp.governance.pipeline import govern
from aidmp.governance.policy import GovernanceError, Policy, load_policy
from aidmp.governance.report import coordinator_summary, local_report
from aidmp.governance.report_html import render_report
from aidmp.governance.scenarios import made_up_pii
from aidmp.server.round_settings import round_config_for
from aidmp.simulations.runner import bundled_policy
from aidmp.tasks import get_task

SECRET = b"site-secret-for-tests"
# What a spreadsheet takes for the start of a formula.
FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _people(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    first, last = ["Ann", "Bob", "Cara", "Dan", "Eve"], ["Smith", "Jones", "Brown", "Lee"]
    return pd.DataFrame(
        {
            "patient": [f"{first[i % 5]} {last[i // 5 % 4]}" for i in range(n)],
            "contact": [f"person{i}@example.org" for i in range(n)],
            "tel": [f"+1 555-01{i % 100:02d}-{i:04d}" for i in range(n)],
            "ident": [f"{123 + i:03d}-{12 + i % 80:02d}-{1000 + i:04d}" for i in range(n)],
            "age": rng.integers(20, 70, n),
            "y": rng.integers(0, 2, n),
        }
    )


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """`aidmp ARGS` in this process; the logger it sets up is put back as it was."""
    from aidmp.cli import main

    logger = logging.getLogger("aidmp")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    capsys.readouterr()
    try:
        code = main(list(args))
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
    out = capsys.readouterr()
    return code, out.out, out.err


def _strings(obj):
    """Every string key and value in a JSON-like tree."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _strings(v)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    rows = get_task("adult").raw_train().iloc[:400].copy()
    rows["consent"] = "yes"
    rows = rows.join(made_up_pii(rows, np.random.default_rng(0)))
    rows.to_csv(folder / "rows.csv", index=False)
    return folder


def _message(kind: str, drop: tuple[str, ...], out_dir: Path) -> Message:
    cfg = RunConfig(task="adult", dp=False, out_dir=str(out_dir), seed=0)
    torch.manual_seed(0)
    record = round_config_for(cfg, 1)
    for key in drop:
        del record[key]
    model = get_task("adult").build_model()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": record})
    return Message(content, dst_node_id=3, message_type=kind)


def _send(node_config: dict, kind: str = "train", drop: tuple[str, ...] = ()) -> Message:
    """The node's reply; the coordinator's run folder is next to the node's data."""
    out_dir = Path(str(node_config["data"])).parent / "coordinator-run"
    context = Context(
        run_id=5, node_id=3, node_config=node_config, state=RecordDict(), run_config={}
    )
    return app(_message(kind, drop, out_dir), context)  # the whole ClientApp, mods included


# --- a file without its header line ---------------------------------------------------------
def test_a_headerless_csv_is_refused_and_its_first_row_never_becomes_names(tmp_path, capsys):
    data = tmp_path / "rows.csv"
    _people().to_csv(data, index=False)
    policy = tmp_path / "policy.yaml"
    assert _cli(capsys, "govern", "init", str(data), "--out", str(policy), "--label", "y")[0] == 0
    headerless = tmp_path / "headerless.csv"
    headerless.write_text(data.read_text().split("\n", 1)[1])
    first_row = [v for v in headerless.read_text().splitlines()[0].split(",") if len(v) > 3]

    code, out, err = _cli(capsys, "govern", "check", str(headerless), "--policy", str(policy))
    assert code != 0 and "PASS" not in out
    assert "look like data, not a header" in err
    assert not [v for v in first_row if v in out + err]

    drafted = tmp_path / "drafted-from-headerless.yaml"
    code, out, err = _cli(capsys, "govern", "init", str(headerless), "--out", str(drafted))
    assert code != 0 and not drafted.exists()
    assert "look like data, not a header" in err


def test_the_coordinator_summary_names_no_column_the_policy_does_not_declare():
    frame = _people()
    frame["alice@example.org"] = [f"p{i}@example.org" for i in range(len(frame))]
    policy = Policy.model_validate(
        {"label": "y", "columns": {"age": {"type": "int"}, "y": {"type": "int"}}, "min_rows": 5}
    )
    result = govern(frame, policy, SECRET)
    assert result.admitted, result.reasons
    summary = coordinator_summary(result, policy, "sha")
    named = {k.split(":", 1)[1] for k in summary if k.startswith("missing-rate:")}
    named |= {entry.split("=", 1)[0] for entry in summary["pii-columns"]}
    assert named <= set(policy.columns)
    assert "alice" not in json.dumps(summary) and "contact" not in json.dumps(summary)
    assert {"email", "phone", "us_ssn"} <= set(summary["pii-undeclared"])


def test_a_node_given_a_headerless_file_declines_without_quoting_it(site, tmp_path):
    rows = (site / "rows.csv").read_text().split("\n", 1)[1]
    (tmp_path / "headerless.csv").write_text(rows)
    node = {"data": str(tmp_path / "headerless.csv"), "policy": str(bundled_policy("adult")),
            "state-dir": str(tmp_path / "state"), "name": "site-a"}  # fmt: skip
    reply = _send(node)
    assert reply.has_error() and reply.error.code == DeclineCode.GOVERNANCE
    reason = reply.error.reason
    assert "header-looks-like-data" in reason
    assert str(tmp_path) not in reason and "/" not in reason.replace("/n", "")
    assert not [v for v in rows.splitlines()[0].split(",") if len(v) > 3 and v in reason]


# --- errors that would echo their input ------------------------------------------------------
def test_a_data_file_given_as_the_policy_is_not_echoed(tmp_path, capsys):
    data = tmp_path / "rows.csv"
    _people().to_csv(data, index=False)
    code, out, err = _cli(capsys, "govern", "check", str(data), "--policy", str(data))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "mapping" in err and "example.org" not in err and "Ann" not in err


def test_a_node_reason_for_a_governance_failure_is_a_fixed_description_and_a_code(site, tmp_path):
    node = {"data": str(site / "rows.csv"), "policy": str(site / "rows.csv"),
            "state-dir": str(tmp_path / "state"), "name": "site-a"}  # fmt: skip
    reply = _send(node)
    assert reply.has_error() and reply.error.code == DeclineCode.GOVERNANCE
    reason = reply.error.reason
    assert reason.startswith("[site-a] governance failed (policy-invalid):"), reason
    assert str(site) not in reason and "example.org" not in reason and "age" not in reason
    (tmp_path / "empty.csv").write_bytes(b"")
    reply = _send(
        node | {"data": str(tmp_path / "empty.csv"), "policy": str(bundled_policy("adult"))}
    )
    assert "(data-unreadable)" in reply.error.reason and str(tmp_path) not in reply.error.reason


def test_a_decline_names_no_local_path(site, tmp_path, monkeypatch):
    from aidmp.client import train_handler

    state = tmp_path / "state"

    def refuse(*args, **kwargs):
        raise PrivacyError(f"ledger {state}/ledger-x.json is unreadable; see /etc/aidmp/x.yaml")

    monkeypatch.setattr(train_handler, "governed_data", refuse)
    node = {"data": str(site / "rows.csv"), "policy": str(bundled_policy("adult")),
            "state-dir": str(state), "name": "site-a"}  # fmt: skip
    reply = _send(node)
    assert reply.error.code == DeclineCode.PRIVACY_POLICY
    assert str(tmp_path) not in reply.error.reason and "/etc/aidmp" not in reply.error.reason
    assert "<state-dir>" in reply.error.reason  # still says which of its folders


def test_an_error_quotes_at_most_a_short_escaped_snippet():
    from pydantic import BaseModel, ValidationError

    from aidmp.errors import describe_validation_error, snippet

    assert snippet("x" * 1000) == repr("x" * 40) + "…"
    assert snippet("a\nb\x00") == repr("a\nb\x00") and "\n" not in snippet("a\nb")
    assert snippet([[1] * 10] * 10) == "a list of 10 item(s)"

    class Model(BaseModel):
        n: int

    with pytest.raises(ValidationError) as err:
        Model.model_validate({"n": "person0@example.org\n" * 1000})
    text = describe_validation_error("dp policy", err.value)
    assert len(text) < 200 and "\n" not in text


# --- formulas and huge cells ------------------------------------------------------------------
EVIL = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1+1", "\r=1+1"]
HUGE = "A" * 10_000_000


def _evil_frame(n: int = 120) -> pd.DataFrame:
    frame = _people(n).drop(columns=["contact", "tel", "ident", "patient"])
    frame["note"] = [EVIL[i % len(EVIL)] for i in range(n)]
    frame["code"] = ["c1", "c2", "<script>alert(1)</script>"] * (n // 3)
    frame.loc[0, "code"] = HUGE
    frame["age"] = frame["age"].astype(object)
    frame.loc[1, "age"] = HUGE  # an invalid value: the report keeps examples of those
    frame.loc[2, "age"] = EVIL[0]
    return frame


def test_a_draft_copies_no_formula_and_no_huge_cell():
    draft = draft_policy(_evil_frame(), label="y")
    text = yaml.safe_dump(draft)
    assert len(text) < 10_000
    for value in _strings(draft):
        assert not value.startswith(FORMULA) and len(value) <= 200, value[:50]


def test_reports_and_the_summary_hold_no_formula_and_no_huge_cell():
    frame = _evil_frame()
    frame[EVIL[0]] = 1  # a column named like a formula, which the policy declares
    columns = {"age": {"type": "int"}, "note": {"type": "str"}, "code": {"type": "str"},
               "y": {"type": "int"}, EVIL[0]: {"type": "int"}}  # fmt: skip
    policy = Policy.model_validate(
        {"label": "y", "columns": columns, "min_rows": 5, "missing": "keep"}
    )
    result = govern(frame, policy, SECRET)
    report = local_report(result, policy, "sha", "rows.csv")
    assert len(json.dumps(report)) < 100_000
    for value in _strings(report):
        assert not value.startswith(FORMULA) and len(value) <= 1200, value[:50]
    summary = report["sent_to_coordinator"]
    for key in summary:
        assert not key.split(":", 1)[-1].startswith(FORMULA), key
    for entry in summary["pii-columns"]:
        assert not entry.startswith(FORMULA)
    page = render_report(report)
    assert "<script>" not in page and len(page) < 200_000


# --- policy files that cost memory or crash ---------------------------------------------------
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ["- &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"- &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(GovernanceError) as err:
        load_policy(path)
    assert time.perf_counter() - start < 5
    assert "\n" not in str(err.value) and len(str(err.value)) < 300

    path.write_text("label: y\ncolumns: {y: &t {type: int}, z: *t}\n")
    with pytest.raises(GovernanceError, match=r"line 2: YAML aliases \(\*name\) are not allowed"):
        load_policy(path)


def test_a_huge_or_deeply_nested_policy_is_one_clear_line(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("label: y\ncolumns: {y: {type: int}}\n# " + "x" * 2_000_000 + "\n")
    with pytest.raises(GovernanceError, match="a policy is at most"):
        load_policy(path)
    path.write_text("label: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(GovernanceError, match="nested too deeply"):
        load_policy(path)


def test_an_unknown_encoding_is_one_clear_line(tmp_path, capsys):
    data = tmp_path / "rows.csv"
    _people().to_csv(data, index=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text("label: y\ncolumns: {y: {type: int}}\nencoding: nope-enc\n")
    with pytest.raises(GovernanceError, match="line 3, encoding: .*unknown text encoding"):
        load_policy(policy)
    code, out, err = _cli(capsys, "govern", "check", str(data), "--policy", str(policy))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "encoding" in err


# --- DP without an audit log ------------------------------------------------------------------
def test_node_start_refuses_dp_without_a_state_folder_it_can_audit_to(site, tmp_path):
    from aidmp.client.supernode import node_config

    args = {"data": site / "rows.csv", "policy": bundled_policy("adult"), "keys": None,
            "name": "site-a", "dp_epsilon": 3.0}  # fmt: skip
    with pytest.raises(AidmpError, match="audit log"):
        node_config(**args, state_dir=None)
    (tmp_path / "state" / "audit.jsonl").mkdir(parents=True)  # not a file it can append to
    with pytest.raises(AidmpError, match="append"):
        node_config(**args, state_dir=tmp_path / "state")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(AidmpError, match="is a file"):
        node_config(**args, state_dir=tmp_path / "a-file")
    assert "state-dir=" in node_config(**args, state_dir=tmp_path / "fine")


@pytest.mark.parametrize("drop", [(), ("state-root",)])
@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_a_dp_node_with_no_state_folder_of_its_own_declines_instead_of_sending(site, kind, drop):
    node = {"data": str(site / "rows.csv"), "policy": str(bundled_policy("adult")),
            "name": "site-a", "dp": True, "dp-epsilon": 3.0}  # fmt: skip
    reply = _send(node, kind, drop)
    assert reply.has_error() and reply.error.code == DeclineCode.PRIVACY_POLICY
    assert "no state-dir of its own" in reply.error.reason


def test_a_tampered_audit_line_is_reported_without_its_content(tmp_path):
    from aidmp.privacy.audit import RECORD_KEYS, verify_audit_log

    record = dict.fromkeys(RECORD_KEYS, "x") | {"seq": "=" + "9" * 100_000}
    path = tmp_path / "audit.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(record | {"y" * 100_000: 1}) + "\n")
    problems = [p.problem for p in verify_audit_log(path)]
    assert len(problems) == 2 and all(len(p) < 300 for p in problems), problems


def test_a_site_sees_a_line_for_each_release_and_its_decline(site, tmp_path, caplog):
    """A privacy officer's console: each reply that left, its round, the governance
    decision, ε spent and left, and bytes; a decline with its reason."""
    node = {"data": str(site / "rows.csv"), "policy": str(bundled_policy("adult")),
            "state-dir": str(tmp_path / "state"), "name": "site-a", "dp": True,
            "dp-epsilon": 5.0}  # fmt: skip
    with caplog.at_level(logging.INFO, logger="aidmp.site"):
        reply = _send(node)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    (line,) = [r.getMessage() for r in caplog.records if "bytes sent" in r.getMessage()]
    assert line.startswith("[site-a] round 1 train-reply: ") and "bytes sent" in line
    assert "governance admit" in line and "spent" in line and "left" in line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="aidmp.site"):
        _send(node | {"dp-epsilon": 0.0})  # a budget that allows nothing
    (line,) = [r.getMessage() for r in caplog.records if "bytes sent" in r.getMessage()]
    assert line.startswith("[site-a] round 1 train-decline: ") and "declined:" in line


def test_a_report_with_non_finite_figures_still_renders():
    """A one-row profile has no std (NaN): the page shows a dash, and the round goes on."""
    from aidmp.governance.report_html import _cell

    assert _cell(float("nan")) == _cell(float("inf")) == '<td class="muted">—</td>'
    assert (
        _cell(1234.5678) == '<td class="n">1,235</td>' and _cell(0.5) == '<td class="n">0.500</td>'
    )


def test_a_line_torn_by_a_crash_costs_the_governance_index_only_that_line(tmp_path):
    from aidmp.governance.report import HISTORY, HISTORY_INDEX, write_reports

    def report(rnd):
        return {"job_id": "j1", "round": rnd, "decision": "admit", "source": "rows.csv",
                "policy_sha256": "s", "reasons": [], "rows_in": 10, "rows_used": 10,
                "generated_at": f"2026-12-02T08:0{rnd}:00Z", "sent_to_coordinator": {}}  # fmt: skip

    write_reports(report(1), tmp_path)
    with (tmp_path / HISTORY / HISTORY_INDEX).open("a") as index:
        index.write('{"page": "j1-round-00')  # the power went out here
    write_reports(report(2), tmp_path)
    page = (tmp_path / HISTORY / "index.html").read_text()
    assert "j1-round-001.html" in page and "j1-round-002.html" in page
