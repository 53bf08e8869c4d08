"""The outbound audit log: an append-only, hash-chained record of what left this site.

Every message a node sends out (a training reply, an evaluation reply, a decline) gets
one line in `audit.jsonl` *before* it is sent, so that nothing can leave unrecorded.
The line holds what was sent, not the data itself: the SHA-256 and size of the
serialized payload, the ε it cost, the governance decision and the policy it was taken
under, plus a few small facts in `details`.

Format: one JSON object per line, keys sorted, UTF-8:

    {"details": {...}, "epsilon_charged": 0.12 | null, "governance_decision": "admit" |
     "decline" | null, "hash": "<64 hex>", "kind": "train-reply", "payload_bytes": 1234,
     "payload_sha256": "<64 hex>", "policy_sha256": "<64 hex>" | null,
     "prev": "<64 hex>", "round": 3, "run": "...", "seq": 17,
     "time": "2025-01-01T12:00:00.123+00:00"}

`seq` counts from 1 with no gaps. `prev` is the `hash` of the entry with seq - 1 (64
zeros for seq 1). `hash` is the SHA-256 hex of the canonical JSON of the record without
its `hash` key: `json.dumps(record, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`, UTF-8. Editing any entry therefore breaks either its own hash or
the next entry's `prev`.

Writing (`AuditLog.append`) is append-only and crash-safe: under an exclusive `flock`
on the log, it reads only the last line (from the end of the file), refuses to chain
onto a last line that is incomplete or does not verify, then writes the new line with a
single `write` to a file opened with O_APPEND, and fsyncs. Earlier lines are never
rewritten. POSIX only (fcntl); the lock does not hold across machines on a network
file system.

`verify_audit_log` reads the whole log and reports every problem it finds, each with
its line number, one problem per event rather than a cascade:

* "edited: its hash does not match its content": the line changed after it was written
  (the next line's `prev` is checked against the stored hash, so one edit is one
  problem).
* "chain broken: prev hash does not match line N's hash (seq S)": this entry does not
  follow the one before it in the chain: a forged entry, or line N was replaced by an
  entry with a recomputed hash.
* "chain broken: the first entry's prev is not 64 zeros": seq 1 is not the start of a log.
* "removed: seq S is missing (before seq T)" (or "seqs A-B are missing ..."): once per
  gap, at the entry after the gap. A gap that unreadable lines in the same place account for is not
  reported twice (the unreadable lines are).
* "reordered: seq S comes after seq T (line N)": an entry earlier in the sequence
  appears later in the file. Links are checked by seq, not by file position, so a
  swap is one problem, not three.
* "inserted or duplicated: seq S is also on line N": two entries with one seq; the
  one that fits the chain (own hash, `prev`, next entry's `prev`) is taken as genuine,
  else the first.
* "truncated: the last line is incomplete (a write cut short?)", "empty line",
  "not valid JSON (...)", "not a JSON object", "malformed: ...": unreadable lines.

What a hash chain cannot show, by itself: whole entries cut off the end of the log, and
a log rewritten from some point on with all hashes recomputed. Both need an anchor kept
elsewhere: `summarize` returns the last seq and hash for an administrator to record
(or a coordinator to collect). An edited `seq` field can also show up as an edit plus a
gap or reorder; those follow from the one edit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import re
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidmp.errors import AidmpError, DeclineCode, snippet

AUDIT_NAME = "audit.jsonl"
# The CLI command that runs `verify_audit_log`; named in error messages. Keep it in
# step with aidmp/cli.py.
VERIFY_COMMAND = "aidmp audit verify"
GENESIS = "0" * 64
RECORD_KEYS = frozenset(
    {
        "seq",
        "time",
        "run",
        "round",
        "kind",
        "payload_sha256",
        "payload_bytes",
        "epsilon_charged",
        "governance_decision",
        "policy_sha256",
        "details",
        "prev",
        "hash",
    }
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TAIL_CHUNK = 8192


class AuditError(AidmpError):
    """The audit log is missing, damaged or cannot be written. A node must not send
    what it cannot record, so it declines the round as a privacy-policy problem."""

    decline_code = DeclineCode.PRIVACY_POLICY


@dataclass(frozen=True)
class AuditEntry:
    """One outbound message as the node describes it; the log adds seq, time and hashes."""

    run: str
    round: int
    kind: str  # e.g. "train-reply", "evaluate-reply", "decline"
    payload_sha256: str  # SHA-256 hex of the serialized outbound payload
    payload_bytes: int
    epsilon_charged: float | None
    governance_decision: str | None  # "admit" / "decline" / None
    policy_sha256: str | None
    details: dict[str, object] = field(default_factory=dict)  # small, JSON-serializable

    def __post_init__(self) -> None:
        # Checked here, at the caller, so a bad entry fails where it was made and never
        # reaches the log (where it could only be recorded or lost).
        if not isinstance(self.run, str) or not self.run:
            raise ValueError(f"audit entry: run must be a non-empty string, got {self.run!r}")
        if not _is_int(self.round) or self.round < 0:
            raise ValueError(f"audit entry: round must be an int >= 0, got {self.round!r}")
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"audit entry: kind must be a non-empty string, got {self.kind!r}")
        if not _is_sha256(self.payload_sha256):
            raise ValueError(
                f"audit entry: payload_sha256 must be 64 lowercase hex digits, "
                f"got {self.payload_sha256!r}"
            )
        if not _is_int(self.payload_bytes) or self.payload_bytes < 0:
            raise ValueError(
                f"audit entry: payload_bytes must be an int >= 0, got {self.payload_bytes!r}"
            )
        eps = self.epsilon_charged
        if eps is not None:
            if isinstance(eps, bool) or not isinstance(eps, int | float):
                raise ValueError(f"audit entry: epsilon_charged must be a number, got {eps!r}")
            if not math.isfinite(eps) or eps < 0:
                raise ValueError(
                    f"audit entry: epsilon_charged must be finite and >= 0, got {eps!r}"
                )
            # Always a float in the log, so 0 and 0.0 are one record, one hash.
            object.__setattr__(self, "epsilon_charged", float(eps))
        if self.governance_decision is not None and not isinstance(self.governance_decision, str):
            raise ValueError(
                "audit entry: governance_decision must be a string or None, "
                f"got {self.governance_decision!r}"
            )
        if self.policy_sha256 is not None and not _is_sha256(self.policy_sha256):
            raise ValueError(
                f"audit entry: policy_sha256 must be 64 lowercase hex digits or None, "
                f"got {self.policy_sha256!r}"
            )
        if not isinstance(self.details, dict) or not all(isinstance(k, str) for k in self.details):
            raise ValueError("audit entry: details must be a dict with string keys")
        try:
            _canonical(self.details)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"audit entry: details must be plain JSON ({exc})") from None


@dataclass(frozen=True)
class AuditProblem:
    """One problem `verify_audit_log` found."""

    line: int  # 1-based line number in the file
    seq: int | None  # the entry's seq where it could be read
    problem: str  # human-readable, starting with the kind of problem ("edited: ...")


def payload_digest(data: bytes) -> tuple[str, int]:
    """(SHA-256 hex, length) of a serialized outbound payload, for an `AuditEntry`."""
    return hashlib.sha256(data).hexdigest(), len(data)


class AuditLog:
    """The audit log of one node: `append` as messages leave, `records` to read back."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, entry: AuditEntry) -> dict[str, object]:
        """Record `entry` as the next line and return the record as written.

        Raises AuditError if the log's last line is incomplete or does not verify
        (nothing is chained onto a damaged log), or if the write fails.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc.strerror}") from None
        try:
            # Held from reading the tail to the fsync, so two processes on one node
            # cannot both take the same seq; closing the fd releases it.
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            last_seq, last_hash = self._tail(fd, size)
            record = _seal(
                {
                    "seq": last_seq + 1,
                    # Taken under the lock, so times follow seq (unless the clock jumps).
                    "time": _now(),
                    "run": entry.run,
                    "round": entry.round,
                    "kind": entry.kind,
                    "payload_sha256": entry.payload_sha256,
                    "payload_bytes": entry.payload_bytes,
                    "epsilon_charged": entry.epsilon_charged,
                    "governance_decision": entry.governance_decision,
                    "policy_sha256": entry.policy_sha256,
                    "details": entry.details,
                    "prev": last_hash,
                }
            )
            self._write(fd, size, (_line(record) + "\n").encode("utf-8"))
        finally:
            os.close(fd)
        if size == 0:
            # A new file: its folder entry must survive a power cut too.
            _fsync_dir(self.path.parent)
        return record

    def records(self) -> list[dict[str, object]]:
        """Every entry, in file order; [] if the log does not exist yet.

        Reading only: hashes and the chain are `verify_audit_log`'s job. A line that is
        not a JSON object, or an incomplete last line, is an AuditError.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise AuditError(f"cannot read audit log {self.path}: {exc.strerror}") from None
        return _parse_all(self.path, raw)

    # --- internals -------------------------------------------------------------
    def _tail(self, fd: int, size: int) -> tuple[int, str]:
        """(seq, hash) of the last line, read backwards from the end of the file; a
        last line that is incomplete or fails its own hash is an AuditError."""
        if size == 0:
            return 0, GENESIS
        if os.pread(fd, 1, size - 1) != b"\n":
            line = _count_newlines(fd, size) + 1
            raise AuditError(
                f"audit log {self.path} ends with an incomplete line {line} (a write cut "
                "short?); nothing is appended to a damaged log: check it with "
                f"`{VERIFY_COMMAND}`, then an administrator must inspect it: remove the "
                "incomplete line if it is a cut-short write (keep a copy), or move the log "
                "aside to start a new one"
            )
        raw = _last_line(fd, size)
        record, problem = _parse_line(raw)
        if record is not None and _hash_of(record) != record["hash"]:
            problem = "its hash does not match its content (edited?)"
        if problem is not None:
            line = _count_newlines(fd, size)
            raise AuditError(
                f"audit log {self.path} line {line}: {problem}; nothing is appended to a log "
                f"whose last entry does not verify: check it with `{VERIFY_COMMAND}`, then "
                "an administrator must inspect it and move the log aside (keep it) to start "
                "a new one"
            )
        assert record is not None
        return int(record["seq"]), str(record["hash"])

    def _write(self, fd: int, size: int, data: bytes) -> None:
        # One write() of one whole line: with O_APPEND it lands at the end of the file.
        try:
            written = os.write(fd, data)
        except OSError as exc:
            _undo_partial(fd, size)
            raise AuditError(f"cannot write to audit log {self.path}: {exc.strerror}") from None
        if written != len(data):
            # A short write (disk full) would leave half a line; take it back, under the
            # lock, so the log stays whole and the next append is not refused.
            _undo_partial(fd, size)
            raise AuditError(
                f"cannot write to audit log {self.path}: only {written} of {len(data)} "
                "bytes written (disk full?)"
            )
        try:
            os.fsync(fd)
        except OSError as exc:
            raise AuditError(
                f"audit log {self.path}: the entry was written but not synced to disk "
                f"({exc.strerror}); it may be lost on a power cut"
            ) from None


def verify_audit_log(path: Path) -> list[AuditProblem]:
    """Every problem in the audit log at `path`, in line order; [] means intact.

    A missing or unreadable file is an AuditError, not a problem list. See the module
    docstring for what is detected and how one event is reported once.
    """
    path = Path(path)
    problems: list[AuditProblem] = []
    entries: list[_Entry] = []  # the lines that could be read, in file order
    unreadable: list[int] = []  # line numbers of the lines that could not
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
    except FileNotFoundError:
        raise AuditError(f"no audit log at {path}") from None
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                problems.append(
                    AuditProblem(
                        number, None, "truncated: the last line is incomplete (a write cut short?)"
                    )
                )
                unreadable.append(number)
                continue
            record, problem = _parse_line(raw[:-1])
            if record is None:
                problems.append(AuditProblem(number, None, str(problem)))
                unreadable.append(number)
                continue
            intact = _hash_of(record) == record["hash"]
            if not intact:
                problems.append(
                    AuditProblem(
                        number, record["seq"], "edited: its hash does not match its content"
                    )
                )
            entries.append(_Entry(number, record["seq"], record["prev"], record["hash"], intact))
    problems += _check_structure(entries, unreadable)
    problems.sort(key=lambda p: p.line)  # stable: per line, in the order found
    return problems


def summarize(path: Path) -> dict[str, object]:
    """What left this site, in totals, for the CLI to print. A missing log is an
    AuditError. Reads only: check integrity with `verify_audit_log`.

    Keys: entries, by_kind ({kind: count}), by_decision ({decision: count}, "none" for
    None), payload_bytes (total), runs (sorted), epsilon_charged (the plain sum over
    entries, which is an upper bound by basic composition, not the accountant's ε),
    first_time, last_time, last_seq, last_hash (the anchor to record elsewhere).
    """
    path = Path(path)
    if not path.exists():
        raise AuditError(f"no audit log at {path}")
    records: list[dict[str, Any]] = AuditLog(path).records()
    by_kind = Counter(str(r.get("kind")) for r in records)
    by_decision = Counter(str(r.get("governance_decision") or "none") for r in records)
    payload = sum(int(r.get("payload_bytes") or 0) for r in records)
    epsilon = math.fsum(
        float(r["epsilon_charged"]) for r in records if r.get("epsilon_charged") is not None
    )
    last = records[-1] if records else {}
    return {
        "entries": len(records),
        "by_kind": dict(sorted(by_kind.items())),
        "by_decision": dict(sorted(by_decision.items())),
        "payload_bytes": payload,
        "runs": sorted({str(r.get("run")) for r in records}),
        "epsilon_charged": epsilon,
        "first_time": records[0].get("time") if records else None,
        "last_time": last.get("time"),
        "last_seq": last.get("seq"),
        "last_hash": last.get("hash"),
    }


# --- records and hashes --------------------------------------------------------------
def _canonical(obj: object) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _hash_of(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()


def _seal(body: dict[str, Any]) -> dict[str, object]:
    # Hash what a reader will parse back, not the caller's objects: a tuple in details
    # reads back as a list, and the hash must be of what is read.
    normal = json.loads(_canonical(body))
    normal["hash"] = _hash_of(normal)
    return normal


def _line(record: dict[str, object]) -> str:
    return _canonical(record)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf, which no writer here produces
        raise ValueError(f"number out of range: {snippet(text)}")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last of two equal keys; a line that says two things is not a
    # record anyone can rely on.
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a well-formed line (its hash not yet checked), else
    (None, problem)."""
    if not raw.strip():
        return None, "empty line"
    try:
        record = json.loads(
            raw,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            object_pairs_hook=_no_duplicate_keys,
        )
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
        return None, f"not valid JSON ({reason})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    missing = RECORD_KEYS - record.keys()
    if missing:
        return None, f"malformed: missing key(s) {', '.join(sorted(missing))}"
    extra = record.keys() - RECORD_KEYS
    if extra:
        return None, f"malformed: unexpected key(s) {', '.join(map(snippet, sorted(extra)[:3]))}"
    if not _is_int(record["seq"]) or record["seq"] < 1:
        return None, f"malformed: seq must be a positive integer, got {snippet(record['seq'])}"
    if not isinstance(record["prev"], str) or not isinstance(record["hash"], str):
        return None, "malformed: prev and hash must be strings"
    return record, None


def _parse_all(path: Path, raw: bytes) -> list[dict[str, object]]:
    if raw and not raw.endswith(b"\n"):
        last = raw.count(b"\n") + 1
        raise AuditError(
            f"audit log {path} line {last}: the last line is incomplete (a write cut "
            f"short?); check it with `{VERIFY_COMMAND}`"
        )
    records = []
    # Split on "\n" only, as verify does; JSON escapes every other line break.
    for number, line in enumerate(raw.split(b"\n")[:-1], start=1):
        record, problem = _parse_line(line)
        if record is None:
            raise AuditError(
                f"audit log {path} line {number}: {problem}; check it with `{VERIFY_COMMAND}`"
            )
        records.append(record)
    return records


# --- reading the tail ------------------------------------------------------------------
def _last_line(fd: int, size: int) -> bytes:
    """The last line without its newline; reads backwards in growing chunks, so an
    append costs the same on a log of 10 lines or 100,000."""
    end = size - 1  # the final newline
    start = end
    chunk = _TAIL_CHUNK
    buf = b""
    while start > 0:
        new_start = max(0, start - chunk)
        buf = os.pread(fd, start - new_start, new_start) + buf
        start = new_start
        cut = buf.rfind(b"\n")
        if cut != -1:
            return buf[cut + 1 :]
        chunk *= 2  # one long line should not cost a read per 8 KiB
    return buf


def _count_newlines(fd: int, size: int) -> int:
    # Only on the error path, to name a line number.
    count, offset = 0, 0
    while offset < size:
        block = os.pread(fd, min(1 << 20, size - offset), offset)
        if not block:
            break
        count += block.count(b"\n")
        offset += len(block)
    return count


def _undo_partial(fd: int, size: int) -> None:
    # If even this fails, verify reports the incomplete line and append refuses it.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, size)


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- verifying the structure -----------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    line: int
    seq: int
    prev: str
    hash: str  # as stored: the next entry links to what was written, edited or not
    intact: bool  # its own hash matches its content


def _check_structure(entries: list[_Entry], unreadable: list[int]) -> list[AuditProblem]:
    """Duplicates, gaps, order and chain links among the readable entries."""
    problems: list[AuditProblem] = []
    by_seq: dict[int, list[_Entry]] = {}
    for e in entries:
        by_seq.setdefault(e.seq, []).append(e)

    # 1. One genuine entry per seq: the one that fits the chain best, then the first.
    genuine: dict[int, _Entry] = {}
    for seq in sorted(by_seq):
        candidates = by_seq[seq]
        if len(candidates) == 1:
            genuine[seq] = candidates[0]
            continue
        before = genuine.get(seq - 1)
        want_prev = GENESIS if seq == 1 else (before.hash if before else None)
        next_prevs = {e.prev for e in by_seq.get(seq + 1, [])}
        best = max(
            candidates,
            key=lambda e: (e.intact, e.prev == want_prev, e.hash in next_prevs, -e.line),
        )
        genuine[seq] = best
        for e in candidates:
            if e is not best:
                problems.append(
                    AuditProblem(
                        e.line,
                        seq,
                        f"inserted or duplicated: seq {seq} is also on line {best.line}",
                    )
                )

    # 2. Gaps, once each, at the entry after the gap; unless unreadable lines between
    # the entries either side of the gap account for it (they are reported already).
    present = sorted(genuine)
    for i, seq in enumerate(present):
        low = present[i - 1] if i else 0
        if seq - low <= 1:
            continue
        missing = seq - low - 1
        after = genuine[seq].line
        before_line = genuine[low].line if low else 0
        lo, hi = sorted((before_line, after))
        garbled = bisect_left(unreadable, hi) - bisect_left(unreadable, lo + 1)
        if garbled >= missing:
            continue
        which = f"seq {low + 1} is" if missing == 1 else f"seqs {low + 1}-{seq - 1} are"
        note = f" ({garbled} unreadable line(s) nearby)" if garbled else ""
        problems.append(
            AuditProblem(after, seq, f"removed: {which} missing (before seq {seq}){note}")
        )

    # 3. Order in the file: an entry after one with a higher seq was moved.
    last: _Entry | None = None
    for e in entries:
        if genuine.get(e.seq) is not e:
            continue  # a duplicate, reported above
        if last is not None and e.seq < last.seq:
            problems.append(
                AuditProblem(
                    e.line,
                    e.seq,
                    f"reordered: seq {e.seq} comes after seq {last.seq} (line {last.line})",
                )
            )
        last = e

    # 4. Links, by seq rather than file position (a moved entry still links to its
    # predecessor). Skipped where either end is edited or the predecessor is missing:
    # those are reported already.
    for seq, e in sorted(genuine.items()):
        if not e.intact:
            continue
        if seq == 1:
            if e.prev != GENESIS:
                problems.append(
                    AuditProblem(
                        e.line, seq, "chain broken: the first entry's prev is not 64 zeros"
                    )
                )
            continue
        before = genuine.get(seq - 1)
        if before is None or not before.intact:
            continue
        if e.prev != before.hash:
            problems.append(
                AuditProblem(
                    e.line,
                    seq,
                    f"chain broken: prev hash does not match line {before.line}'s hash "
                    f"(seq {seq - 1})",
                )
            )
    return problems
