"""Where a round begins: configure, send, aggregate, evaluate, checkpoint, report.

This is Flower's `Strategy.start` loop made resumable: it can begin at any round,
records every failed reply with its code and reason, skips (never crashes on) a
round that gets no usable replies, and hands each finished round to a callback
that checkpoints it and prints progress.
"""

from __future__ import annotations

import copy
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from logging import getLogger
from typing import Protocol, runtime_checkable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
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
    train_loss: float | None = None  # from nodes without DP only: under DP it stays there
    eval_replies: int = 0
    federated_loss: float | None = None
    federated_accuracy: float | None = None
    # The noise std of each federated figure: under DP a node's figures are noisy
    # (privacy/metrics.py), None when every one that went into it was exact.
    federated_loss_std: float | None = None
    federated_accuracy_std: float | None = None
    eval_withheld: int = 0  # replies without figures (a node's DP policy or budget)
    # institution -> the spend of its evaluation figures, as `privacy` holds training's
    metrics_privacy: dict[str, dict[str, float]] = field(default_factory=dict)
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

    @property
    def accuracy_std(self) -> float | None:
        """The headline accuracy's noise std: None if exact (central, or no DP figures)."""
        return None if self.central_accuracy is not None else self.federated_accuracy_std

    @property
    def loss_std(self) -> float | None:
        return None if self.central_loss is not None else self.federated_loss_std

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "accuracy_std": self.accuracy_std,
            "loss_std": self.loss_std,
        }


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
    """Remember how each node names itself, to name it if it later vanishes. `names`
    starts as the names the coordinator registered (`register-node --name`), which the
    replies carry already (server/registered_names.py)."""
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
) -> tuple[ArrayRecord | None, list[Message]]:
    """Fold replies into the strategy one at a time; record declines and rejections.
    Returns the new global arrays (None: not aggregated) and the replies."""
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
        return None, replies  # the running sum is dropped; begin_train starts afresh
    return strategy.finish_train(rnd)[0], replies


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


def wait_for_nodes(
    grid: Grid, strategy: Strategy, timeout: float, names: Mapping[int, str] | None = None
) -> None:
    """Wait until `min_available_nodes` are connected. Flower's FedAvg sizes its sample
    from the nodes connected *before* it waits for them, so a round that starts while a
    node is still connecting would leave that node out (FLOWER_NOTES' sampling quirk)."""
    connected_nodes(grid, _setting(strategy, "min_available_nodes"), timeout, names)


def _expiring(messages: Iterable[Message], ttl: float) -> list[Message]:
    """Messages that the SuperLink drops once the round has stopped waiting for them.

    Flower keeps an instruction deliverable for 12 hours by default, so a node that
    reconnects late (or after the coordinator restarted) would still train on a round
    nobody aggregates any more, and spend privacy budget on it."""
    out = list(messages)
    for m in out:
        m.metadata.ttl = ttl
    return out


def connected_nodes(
    grid: Grid, wanted: int, timeout: float, names: Mapping[int, str] | None = None
) -> list[int]:
    """The connected nodes, once `wanted` are connected or `timeout` seconds have passed.
    `names`: node id -> site name, for the waiting line."""
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    said = -1
    while len(nodes) < wanted and time.monotonic() < deadline:
        if len(nodes) != said:  # a line when the count changes, not every poll
            said = len(nodes)
            named = sorted((names or {}).get(n, f"node-{n}") for n in nodes)
            connected = ": " + ", ".join(named) if nodes else ""
            log.info("waiting for %d node(s) to connect (%d connected%s)", wanted, said, connected)
        time.sleep(0.2)
        nodes = list(grid.get_node_ids())
    return nodes


def ask_each(
    grid: Grid, nodes: Iterable[int], content: RecordDict, message_type: str, timeout: float
) -> tuple[list[Message], list[Message]]:
    """One job's messages (a query, a k-means round, an explanation, a decryption): the
    same content to each node, dropped by the SuperLink after `timeout`; the replies that
    came within it."""
    messages = _expiring(
        [
            Message(content=content.copy(), dst_node_id=node, message_type=message_type)
            for node in nodes
        ],
        timeout,
    )
    return messages, list(stream_replies(grid, messages, timeout))


def replier_name(reply: Message) -> str:
    """How a reply's node names itself (its "node" record), or its node id."""
    node = reply.content.config_records.get("node")
    if node is not None and "institution" in node:
        return str(node["institution"])
    return f"node-{reply.metadata.src_node_id}"


def figure(value: object) -> float | None:
    """A node's reported number as a float (None: absent, not a number, or a bool)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# A figure a node sends noisy (under DP, privacy/metrics.py) has its noise std beside it.
STD_SUFFIX = "-std"


def _number(value: object) -> float | None:
    """A one-number metric as a float (None: absent, or a list metric)."""
    return float(value) if isinstance(value, int | float) else None


def _weight_key(strategy: object) -> str:
    inner = getattr(strategy, "strategy", strategy)  # client-level DP wraps the strategy
    return str(getattr(inner, "weighted_by_key", "num-examples"))


def _reply_metrics(reply: Message) -> MetricRecord | None:
    if reply.has_error():
        return None
    return next(iter(reply.content.metric_records.values()), None)


def federated_figure(
    replies: Iterable[Message], key: str, weight_key: str
) -> tuple[float | None, float | None]:
    """The weighted mean of `key` over the replies that carry it, and its noise std.

    The coordinator computes it itself, not the strategy's metric averaging: a node under
    DP sends its figures noisy, with each one's noise std (`key`-std), or withholds them,
    and FedAvg would average the stds as figures, or refuse replies whose keys differ.
    Each reply weighs as the strategy weighs it (`weight_key`); with independent noises,
    the mean's std is √(Σ (wᵢ sᵢ)²) / Σ wᵢ. The std is None when every figure was exact.
    """
    total = weights = variance = 0.0
    noisy = False
    for reply in replies:
        metrics = _reply_metrics(reply)
        if metrics is None:
            continue
        value, w, std = (_number(metrics.get(k)) for k in (key, weight_key, key + STD_SUFFIX))
        if value is None or w is None or w <= 0:
            continue
        total += w * value
        weights += w
        if std is not None:
            variance += (w * std) ** 2
            noisy = True
    if weights == 0:
        return None, None
    return total / weights, (math.sqrt(variance) / weights if noisy else None)


def _consistent(replies: list[Message]) -> list[Message]:
    """The replies as Flower's strategies take them: every MetricRecord with the same keys.

    A federation may mix nodes under DP, whose replies carry no training loss, with nodes
    without it; Flower's FedAvg refuses to aggregate replies whose metric keys differ. The
    coordinator reads the figures itself (`federated_figure`), so the strategy gets only
    the keys every reply has (its weight among them); a reply is copied, never changed.
    """
    records = [m for m in (_reply_metrics(r) for r in replies) if m is not None]
    if not records:
        return replies
    shared = set.intersection(*(set(m) for m in records))
    out = []
    for reply in replies:
        metrics = _reply_metrics(reply)
        if metrics is None or set(metrics) == shared:
            out.append(reply)
            continue
        trimmed = copy.copy(reply)
        trimmed.content = RecordDict(
            {
                name: MetricRecord({k: v for k, v in record.items() if k in shared})
                if isinstance(record, MetricRecord)
                else record
                for name, record in reply.content.items()
            }
        )
        out.append(trimmed)
    return out


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
    registered_names: Mapping[int, str] | None = None,
) -> ArrayRecord:
    """Run rounds `first_round..last_round`; returns the final global arrays.

    `round_config(rnd)` builds a fresh ConfigRecord for each send (strategies add
    keys to it), with what a node needs to find its data and train.
    `registered_names`: node id -> the site's name at `register-node --name`.
    """
    # node id -> institution: as registered, then as each node names itself
    names: dict[int, str] = dict(registered_names or {})
    # Fewer updates than this are never aggregated: Flower's FedAvg would average even
    # one, and a mean of one update is that institution's update, to everyone who can
    # read the global model (every node, under HE).
    min_replies = max(1, _setting(strategy, "min_train_nodes"))
    weight_key = _weight_key(strategy)
    for rnd in range(first_round, last_round + 1):
        started = time.monotonic()
        # Flower samples nodes with Python's `random`. Seeding per round makes a run
        # repeatable, and a resumed run sample exactly as an uninterrupted one.
        random.seed(seed * 100_003 + rnd)
        record = RoundRecord(round=rnd)
        wait_for_nodes(grid, strategy, timeout, names)

        # --- training at the institutions -----------------------------------
        messages = _expiring(
            strategy.configure_train(rnd, arrays, round_config(rnd), grid), timeout
        )
        if isinstance(strategy, IncrementalStrategy):
            new_arrays, replies = _train_incrementally(
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
            new_arrays = None
            try:
                if record.train_replies >= min_replies:
                    new_arrays, _ = strategy.aggregate_train(rnd, _consistent(replies))
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
            record.train_loss, _ = federated_figure(replies, "train-loss", weight_key)

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
        # The coordinator's own weighted means (not the strategy's): see federated_figure.
        record.federated_loss, record.federated_loss_std = federated_figure(
            eval_replies, "eval-loss", weight_key
        )
        record.federated_accuracy, record.federated_accuracy_std = federated_figure(
            eval_replies, "eval-accuracy", weight_key
        )
        record.eval_withheld = sum(
            1 for m in eval_replies if (r := _reply_metrics(m)) is not None and "eval-loss" not in r
        )
        record.metrics_privacy = _privacy_spend(eval_replies)

        if isinstance(strategy, IncrementalStrategy):
            record.he_bytes_broadcast = strategy.bytes_broadcast

        # --- central evaluation on the held-out split (plaintext runs only) ---
        if central_eval is not None:
            record.central_loss, record.central_accuracy = central_eval(arrays)

        record.elapsed_s = time.monotonic() - started
        on_round_end(record, arrays)
    return arrays
