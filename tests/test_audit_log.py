"""The outbound audit log: hash-chained, append-only, every tampering named by line."""

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from aidmp.errors import AidmpError, DeclineCode
from aidmp.privacy.audit import (
    AUDIT_NAME,
    GENESIS,
    AuditEntry,
    AuditLog,
    AuditProblem,
    payload_digest,
    summarize,
    verify_audit_log,
)

ROOT = Path(__file__).resolve().parents[1]


def _entry(round_: int = 1, kind: str = "train-reply", **kw) -> AuditEntry:
    digest, size = payload_digest(f"payload {round_} {kind}".encode())
    fields = {
        "run": "run-1",
        "round": round_,
        "kind": kind,
        "payload_sha256": digest,
        "payload_bytes": size,
        "epsilon_charged": 0.25,
        "governance_decision": "admit",
        "policy_sha256": "ab" * 32,
        "details": {},
    }
    fields.update(kw)
    return AuditEntry(**fields)


def _log(tmp_path: Path, n: int = 5) -> Path:
    path = tmp_path / "node" / AUDIT_NAME
    log = AuditLog(path)
    for r in range(1, n + 1):
        log.append(_entry(r))
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines), encoding="utf-8")


def _hash(record: dict) -> str:
    # The format as documented, computed independently of the module.
    body = {k: v for k, v in record.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_append_then_verify_is_intact(tmp_path):
    path = _log(tmp_path)
    assert verify_audit_log(path) == []
    assert [r["seq"] for r in AuditLog(path).records()] == [1, 2, 3, 4, 5]


def test_each_entry_holds_the_previous_hash(tmp_path):
    path = tmp_path / AUDIT_NAME
    log = AuditLog(path)
    written = [log.append(_entry(1)), log.append(_entry(2, details={"note": "é ✓", "n": (1, 2)}))]
    written.append(log.append(_entry(3, kind="decline", epsilon_charged=None)))
    records = log.records()
    assert records == written  # what append returns is what is on disk (tuple -> list)
    assert records[0]["prev"] == GENESIS
    for before, after in zip(records, records[1:], strict=False):
        assert after["prev"] == before["hash"]
    for record, line in zip(records, _lines(path), strict=True):
        assert record["hash"] == _hash(record)
        assert list(json.loads(line)) == sorted(record)  # keys sorted on the line
        assert line.endswith("\n") and line.count("\n") == 1
    assert "é ✓" in path.read_text(encoding="utf-8")  # ensure_ascii=False
    assert records[1]["details"] == {"note": "é ✓", "n": [1, 2]}


def test_edited_line_is_named(tmp_path):
    path = _log(tmp_path)
    lines = _lines(path)
    record = json.loads(lines[1])
    record["epsilon_charged"] = 0.01  # under-report the cost, keep the old hash
    lines[1] = json.dumps(record, sort_keys=True) + "\n"
    _write_lines(path, lines)
    assert verify_audit_log(path) == [
        AuditProblem(2, 2, "edited: its hash does not match its content")
    ]


def test_edit_with_recomputed_hash_breaks_the_chain_at_the_next_line(tmp_path):
    path = _log(tmp_path)
    lines = _lines(path)
    record = json.loads(lines[1])
    record["payload_bytes"] = 1
    record["hash"] = _hash(record)
    lines[1] = json.dumps(record, sort_keys=True) + "\n"
    _write_lines(path, lines)
    assert verify_audit_log(path) == [
        AuditProblem(3, 3, "chain broken: prev hash does not match line 2's hash (seq 2)")
    ]


def test_deleted_line_is_one_removal(tmp_path):
    path = _log(tmp_path)
    lines = _lines(path)
    del lines[2]
    _write_lines(path, lines)
    assert verify_audit_log(path) == [
        AuditProblem(3, 4, "removed: seq 3 is missing (before seq 4)")
    ]


def test_deleted_first_lines_are_a_removal(tmp_path):
    path = _log(tmp_path)
    _write_lines(path, _lines(path)[2:])
    assert verify_audit_log(path) == [
        AuditProblem(1, 3, "removed: seqs 1-2 are missing (before seq 3)")
    ]


def test_swapped_lines_are_one_reorder(tmp_path):
    path = _log(tmp_path)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _write_lines(path, lines)
    assert verify_audit_log(path) == [
        AuditProblem(3, 2, "reordered: seq 2 comes after seq 3 (line 2)")
    ]


def test_forged_line_with_wrong_prev_is_detected(tmp_path):
    path = _log(tmp_path, n=3)
    forged = dict(AuditLog(path).records()[-1])
    forged.update(seq=4, round=4, epsilon_charged=0.0, prev="f" * 64)
    forged["hash"] = _hash(forged)  # a correct-looking hash over the forged content
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(forged, sort_keys=True) + "\n")
    assert verify_audit_log(path) == [
        AuditProblem(4, 4, "chain broken: prev hash does not match line 3's hash (seq 3)")
    ]


def test_inserted_copy_of_an_entry_is_detected(tmp_path):
    path = _log(tmp_path, n=4)
    lines = _lines(path)
    lines.insert(3, lines[1])  # seq 2 again, after seq 3
    _write_lines(path, lines)
    assert verify_audit_log(path) == [
        AuditProblem(4, 2, "inserted or duplicated: seq 2 is also on line 2")
    ]


def test_garbled_line_is_one_problem_not_a_cascade(tmp_path):
    path = _log(tmp_path)
    lines = _lines(path)
    lines[2] = "{not json\n"
    _write_lines(path, lines)
    problems = verify_audit_log(path)
    assert len(problems) == 1
    assert problems[0].line == 3 and problems[0].problem.startswith("not valid JSON")


def test_every_problem_is_reported(tmp_path):
    path = _log(tmp_path, n=8)
    lines = _lines(path)
    edited = json.loads(lines[1])
    edited["kind"] = "evaluate-reply"
    lines[1] = json.dumps(edited) + "\n"
    lines[4] = "\n"
    del lines[6]
    _write_lines(path, lines)
    assert [(p.line, p.problem.split(":")[0]) for p in verify_audit_log(path)] == [
        (2, "edited"),
        (5, "empty line"),
        (7, "removed"),
    ]


def test_truncated_last_line_is_reported_and_append_refuses(tmp_path):
    path = _log(tmp_path, n=3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # a crash mid-write of line 3
    assert verify_audit_log(path) == [
        AuditProblem(3, None, "truncated: the last line is incomplete (a write cut short?)")
    ]
    with pytest.raises(AidmpError, match=r"incomplete line 3") as info:
        AuditLog(path).append(_entry(4))
    assert str(path) in str(info.value)
    assert info.value.decline_code == DeclineCode.PRIVACY_POLICY
    assert path.read_bytes() == data[: len(data) - 40]  # nothing chained onto it


def test_append_refuses_when_the_last_entry_was_edited(tmp_path):
    path = _log(tmp_path, n=3)
    lines = _lines(path)
    lines[2] = lines[2].replace('"round":3', '"round":30')
    _write_lines(path, lines)
    with pytest.raises(AidmpError, match=r"line 3: its hash does not match"):
        AuditLog(path).append(_entry(4))


def test_append_checks_only_the_tail(tmp_path):
    # An edit further back is verify's to find; append reads only the last line.
    path = _log(tmp_path, n=3)
    lines = _lines(path)
    lines[0] = lines[0].replace('"round":1', '"round":10')
    _write_lines(path, lines)
    assert AuditLog(path).append(_entry(4))["seq"] == 4
    assert [p.line for p in verify_audit_log(path)] == [1]


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(AidmpError, match="no audit log at"):
        verify_audit_log(tmp_path / AUDIT_NAME)
    with pytest.raises(AidmpError, match="no audit log at"):
        summarize(tmp_path / AUDIT_NAME)
    assert AuditLog(tmp_path / AUDIT_NAME).records() == []  # a node that sent nothing yet


_WRITER = """
import sys
from aidmp.privacy.audit import AuditEntry, AuditLog, payload_digest
log, who = AuditLog(sys.argv[1]), sys.argv[2]
for i in range(50):
    digest, size = payload_digest(f"{who} {i}".encode())
    log.append(AuditEntry(run="r", round=i, kind="train-reply", payload_sha256=digest,
               payload_bytes=size, epsilon_charged=0.1, governance_decision="admit",
               policy_sha256=None, details={"writer": who}))
"""


def test_two_processes_appending_at_once_keep_the_chain(tmp_path):
    path = tmp_path / AUDIT_NAME
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), who], cwd=ROOT)
        for who in ("a", "b")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    records = AuditLog(path).records()
    assert [r["seq"] for r in records] == list(range(1, 101))
    assert sorted(r["details"]["writer"] for r in records) == ["a"] * 50 + ["b"] * 50
    assert verify_audit_log(path) == []


def test_records_survive_reopening_and_summarize(tmp_path):
    path = tmp_path / "deep" / "er" / AUDIT_NAME  # parent folders are created
    first = AuditLog(path)
    first.append(_entry(1))
    first.append(_entry(1, kind="evaluate-reply", epsilon_charged=None))
    again = AuditLog(path)
    last = again.append(_entry(2, run="run-2", epsilon_charged=0.5))
    assert last["seq"] == 3 and last["prev"] == first.records()[1]["hash"]
    assert [r["kind"] for r in AuditLog(path).records()] == [
        "train-reply",
        "evaluate-reply",
        "train-reply",
    ]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    summary = summarize(path)
    assert summary["entries"] == 3
    assert summary["by_kind"] == {"evaluate-reply": 1, "train-reply": 2}
    assert summary["runs"] == ["run-1", "run-2"]
    assert summary["epsilon_charged"] == pytest.approx(0.75)
    assert summary["payload_bytes"] == sum(r["payload_bytes"] for r in again.records())
    assert summary["last_seq"] == 3 and summary["last_hash"] == last["hash"]
    assert verify_audit_log(path) == []


def test_payload_digest():
    assert payload_digest(b"abc") == (hashlib.sha256(b"abc").hexdigest(), 3)


@pytest.mark.parametrize(
    "bad",
    [
        {"payload_sha256": "xyz"},
        {"payload_bytes": -1},
        {"epsilon_charged": float("nan")},
        {"policy_sha256": "AB" * 32},
        {"details": {"obj": object()}},
        {"round": True},
    ],
)
def test_bad_entries_are_refused_where_they_are_made(bad):
    with pytest.raises(ValueError, match="audit entry"):
        _entry(**bad)
