"""Where a round begins: configure, send, aggregate, evaluate, checkpoint, report.

This is Flower's `Strategy.start` loop made resumable: it can begin at any round,
records every failed reply with its code and reason, skips (never crashes on) a
round that gets no usable replies, and hands each finished round to a callback
that checkpoints it and prints progress.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from logging import getLogger
from typing import Protocol, runtime_checkable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import Strategy

from aidmp.errors import DeclineCode

log = getLogger("aidmp.server")

CentralEval = Callable[[ArrayRecord], tuple[float, float]]  # arrays -> (loss, accuracy)


@dataclass
class RoundRecord:
    """What the coordinator learned in one round. One entry of `per_round`."""

    round: int
    train_replies: int = 0
    train_failures: list[dict[str, object]] = field(default_factory=list)
    train_loss: float | None = None
    eval_replies: int = 0
    federated_loss: float | None = None
    federated_accuracy: float | None = None
    central_loss: float | None = None
    central_accuracy: float | None = None
    privacy: dict[str, dict[str, float]] = field(default_factory=dict)  # institution -> spend
    # institution -> the run's settings its node refused, its own applying (client/app.py)
    refused: dict[str, str] = field(default_factory=dict)
    governance: dict[str, dict[str, object]] = field(default_factory=dict)  # institution ->
    he_bytes_received: int | None = None  # ciphertext from the nodes (HE runs)
    he_bytes_broadcast: int | None = None  # ciphertext to the nodes, train and evaluate
    aggregated: bool = False
    elapsed_s: float = 0.0

    @property
    def accuracy(self) -> float | None:
        """The headline figure: held-out (central) if measured, else federated."""
        return (
            self.central_accuracy if self.central_accuracy is not None else self.federated_accuracy
        )

    @property
    def loss(self) -> float | None:
        return self.central_loss if self.central_loss is not None else self.federated_loss

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"accuracy": self.accuracy, "loss": self.loss}


_NAMED_REASON = re.compile(r"^\[(?P<name>[^\]]+)\] (?P<reason>.*)$", re.DOTALL)


def _failures(
    replies: Iterable[Message],
    sent_to: dict[str, int] | None = None,
    names: dict[int, str] | None = None,
) -> list[dict[str, object]]:
    """Failed replies; our nodes put their name in brackets before the reason.

    When a node vanishes, the SuperLink answers for it (code 5, from its own node id),
    so the node is found from the message the reply answers (`sent_to`), and named as
    it named itself in an earlier reply (`names`)."""
    failures = []
    for m in replies:
        if not m.has_error():
            continue
        match = _NAMED_REASON.match(m.error.reason or "")
        node = (sent_to or {}).get(m.metadata.reply_to_message_id, m.metadata.src_node_id)
        failures.append(
            {
                "node": node,
                "institution": match["name"] if match else (names or {}).get(node, f"node-{node}"),
                "code": m.error.code,
                "reason": match["reason"] if match else m.error.reason,
            }
        )
    return failures


def _silent(
    messages: list[Message], replies: Iterable[Message], timeout: float, names: dict[int, str]
) -> list[dict[str, object]]:
    """The nodes that were sent a message and did not answer within the timeout."""
    answered = {m.metadata.reply_to_message_id for m in replies}
    return [
        {
            "node": m.metadata.dst_node_id,
            "institution": names.get(m.metadata.dst_node_id, f"node-{m.metadata.dst_node_id}"),
            "code": DeclineCode.NO_REPLY,
            "reason": f"no reply within the round timeout ({timeout:g} s)",
        }
        for m in messages
        if m.metadata.message_id not in answered
    ]


def _refusals(replies: Iterable[Message]) -> dict[str, str]:
    """What each node refused of the run's DP settings (the node decides)."""
    out = {}
    for m in replies:
        node = None if m.has_error() else m.content.config_records.get("node")
        if node is not None and isinstance(node.get("refused"), str):
            out[str(node["institution"])] = str(node["refused"])
    return out


def _privacy_spend(replies: Iterable[Message]) -> dict[str, dict[str, float]]:
    """ε spent, ε of this round, δ and budget left, per institution that trained under DP."""
    spend = {}
    for m in replies:
        node = None if m.has_error() else m.content.config_records.get("node")
        if node is not None and "epsilon-spent" in node:
            spend[str(node["institution"])] = {
                k: float(v)
                for k, v in node.items()
                if k != "institution" and isinstance(v, int | float)  # spend figures only
            }
    return spend


@runtime_checkable
class IncrementalStrategy(Protocol):
    """A strategy that aggregates each reply as it arrives (strategies/encrypted.py)."""

    bytes_received: int
    bytes_broadcast: int

    def begin_train(self, server_round: int) -> None: ...

    def accumulate_train(self, reply: Message, who: str) -> str | None: ...

    def finish_train(self, server_round: int) -> tuple[ArrayRecord | None, MetricRecord | None]: ...


def stream_replies(grid: Grid, messages: Iterable[Message], timeout: float) -> Iterator[Message]:
    """Flower's `send_and_receive`, but yielding each reply as soon as it is pulled, so
    the caller can fold it in and let it go."""
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    interval = min(float(getattr(grid, "pull_interval", 0.1)), 0.5)
    while pending and time.monotonic() < deadline:
        pulled = list(grid.pull_messages(pending))
        for reply in pulled:
            pending.discard(reply.metadata.reply_to_message_id)
            yield reply
        if pending and not pulled:
            time.sleep(interval)


def _learn_names(replies: Iterable[Message], names: dict[int, str]) -> None:
    """Remember how each node names itself, to name it if it later vanishes."""
    for m in replies:
        if not m.has_error() and "node" in m.content.config_records:
            names[m.metadata.src_node_id] = _institution(m)


def _sent_to(messages: list[Message]) -> dict[str, int]:
    """message id -> destination node, for the messages a grid has pushed."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in messages}


def _institution(reply: Message) -> str:
    node = None if reply.has_error() else reply.content.config_records.get("node")
    if node is not None and "institution" in node:
        return str(node["institution"])
    return f"node-{reply.metadata.src_node_id}"


def _train_incrementally(
    grid: Grid,
    strategy: IncrementalStrategy,
    messages: Iterable[Message],
    rnd: int,
    timeout: float,
    record: RoundRecord,
    names: dict[int, str],
    min_replies: int,
) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """Fold replies into the strategy one at a time; record declines and rejections."""
    strategy.begin_train(rnd)
    messages, replies = list(messages), []
    for reply in stream_replies(grid, messages, timeout):
        replies.append(reply)
        _learn_names([reply], names)
        record.train_failures += _failures([reply], _sent_to(messages), names)
        record.privacy |= _privacy_spend([reply])
        record.refused |= _refusals([reply])
        record.governance |= _governance([reply])
        who = _institution(reply)
        rejected = strategy.accumulate_train(reply, who)
        if rejected:
            log.warning("round %d: %s %s", rnd, who, rejected)
            record.train_failures.append(
                {"node": reply.metadata.src_node_id, "institution": who,
                 "code": DeclineCode.HE_KEYS, "reason": f"rejected by the coordinator: {rejected}"}
            )  # fmt: skip
        elif not reply.has_error():
            record.train_replies += 1
    record.train_failures += _silent(messages, replies, timeout, names)
    record.he_bytes_received = strategy.bytes_received
    if record.train_replies < min_replies:
        return None, None  # the running sum is dropped; begin_train starts afresh
    return strategy.finish_train(rnd)


def _governance(replies: Iterable[Message]) -> dict[str, dict[str, object]]:
    """Each admitted node's governance summary (aggregates only) as it sent it."""
    out: dict[str, dict[str, object]] = {}
    for m in replies:
        if m.has_error() or "governance" not in m.content.config_records:
            continue
        out[_institution(m)] = dict(m.content.config_records["governance"])
    return out


def _setting(strategy: Strategy, name: str) -> int:
    inner = getattr(strategy, "strategy", strategy)  # client-level DP wraps the strategy
    return int(getattr(inner, name, 0))


def wait_for_nodes(grid: Grid, strategy: Strategy, timeout: float) -> None:
    """Wait until `min_available_nodes` are connected. Flower's FedAvg sizes its sample
    from the nodes connected *before* it waits for them, so a round that starts while a
    node is still connecting would leave that node out (FLOWER_NOTES' sampling quirk)."""
    wanted = _setting(strategy, "min_available_nodes")
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < wanted and time.monotonic() < deadline:
        time.sleep(0.2)


def _expiring(messages: Iterable[Message], ttl: float) -> list[Message]:
    """Messages that the SuperLink drops once the round has stopped waiting for them.

    Flower keeps an instruction deliverable for 12 hours by default, so a node that
    reconnects late (or after the coordinator restarted) would still train on a round
    nobody aggregates any more, and spend privacy budget on it."""
    out = list(messages)
    for m in out:
        m.metadata.ttl = ttl
    return out


def _metric(metrics: MetricRecord | None, key: str) -> float | None:
    value = None if metrics is None else metrics.get(key)
    return float(value) if isinstance(value, int | float) else None  # not a list metric


def run_rounds(
    grid: Grid,
    strategy: Strategy,
    arrays: ArrayRecord,
    *,
    first_round: int,
    last_round: int,
    round_config: Callable[[int], ConfigRecord],
    timeout: float,
    seed: int,
    central_eval: CentralEval | None,
    on_round_end: Callable[[RoundRecord, ArrayRecord], None],
) -> ArrayRecord:
    """Run rounds `first_round..last_round`; returns the final global arrays.

    `round_config(rnd)` builds a fresh ConfigRecord for each send (strategies add
    keys to it), with what a node needs to find its data and train.
    """
    names: dict[int, str] = {}  # node id -> institution, as nodes name themselves
    # Fewer updates than this are never aggregated: Flower's FedAvg would average even
    # one, and a mean of one update is that institution's update, to everyone who can
    # read the global model (every node, under HE).
    min_replies = max(1, _setting(strategy, "min_train_nodes"))
    for rnd in range(first_round, last_round + 1):
        started = time.monotonic()
        # Flower samples nodes with Python's `random`. Seeding per round makes a run
        # repeatable, and a resumed run sample exactly as an uninterrupted one.
        random.seed(seed * 100_003 + rnd)
        record = RoundRecord(round=rnd)
        wait_for_nodes(grid, strategy, timeout)

        # --- training at the institutions -----------------------------------
        messages = _expiring(
            strategy.configure_train(rnd, arrays, round_config(rnd), grid), timeout
        )
        if isinstance(strategy, IncrementalStrategy):
            new_arrays, train_metrics = _train_incrementally(
                grid, strategy, messages, rnd, timeout, record, names, min_replies
            )
        else:
            replies = list(grid.send_and_receive(messages, timeout=timeout))
            _learn_names(replies, names)
            record.train_failures = _failures(replies, _sent_to(messages), names)
            record.train_replies = len(replies) - len(record.train_failures)
            record.train_failures += _silent(messages, replies, timeout, names)
            record.privacy = _privacy_spend(replies)
            record.refused = _refusals(replies)
            record.governance = _governance(replies)
            new_arrays, train_metrics = None, None
            try:
                if record.train_replies >= min_replies:
                    new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
            except InconsistentMessageReplies as exc:
                log.warning("round %d: replies could not be aggregated (%s)", rnd, exc)
        if new_arrays is None:
            log.warning(
                "round %d skipped: %d usable training replies, %d needed (min-nodes); "
                "%d failed: %s; the global model is unchanged",
                rnd,
                record.train_replies,
                min_replies,
                len(record.train_failures),
                "; ".join(str(f["reason"]) for f in record.train_failures) or "none sent",
            )
        else:
            arrays, record.aggregated = new_arrays, True
        record.train_loss = _metric(train_metrics, "train-loss")

        # --- federated evaluation on each institution's own validation rows ---
        eval_replies = list(
            grid.send_and_receive(
                _expiring(
                    strategy.configure_evaluate(rnd, arrays, round_config(rnd), grid), timeout
                ),
                timeout=timeout,
            )
        )
        record.eval_replies = sum(not m.has_error() for m in eval_replies)
        try:
            eval_metrics = strategy.aggregate_evaluate(rnd, eval_replies)
        except InconsistentMessageReplies as exc:
            log.warning("round %d: evaluation replies inconsistent (%s)", rnd, exc)
            eval_metrics = None
        record.federated_loss = _metric(eval_metrics, "eval-loss")
        record.federated_accuracy = _metric(eval_metrics, "eval-accuracy")

        if isinstance(strategy, IncrementalStrategy):
            record.he_bytes_broadcast = strategy.bytes_broadcast

        # --- central evaluation on the held-out split (plaintext runs only) ---
        if central_eval is not None:
            record.central_loss, record.central_accuracy = central_eval(arrays)

        record.elapsed_s = time.monotonic() - started
        on_round_end(record, arrays)
    return arrays
