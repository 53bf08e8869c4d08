"""A whole federation in one process: a Flower `Grid` that hands each message straight to
our ClientApp, with no Ray, no SuperLink and no SuperNode.

The coordinator's side is unchanged: `server.federation.run_federation(grid, cfg)` runs
on this grid exactly as on Flower's simulation grid or a deployed SuperLink. Each
virtual institution is one Flower node: a node id, a node config like the one Flower's
simulation gives (`partition-id`, `num-partitions`, plus anything the caller adds), and
one `Context` whose `state` persists from message to message. Each message is delivered
to the real ClientApp object (`aidmp.client.app.app`, with its mods: the audit trail,
client-level DP clipping), so governance, the privacy ledgers, HE and the audit log all
run as they do in a Ray actor or a deployed node.

What it keeps from Flower's runtimes:
- Messages cross a wire: the node receives, and the coordinator gets back, a copy
  decoded from Flower's protobuf encoding (as in deployment), never the sender's object.
- Metadata is Flower's: the grid assigns message ids, replies carry `reply_to` and
  swap source and destination, an instruction must come from the SuperLink's node id,
  and an instruction whose TTL has run out is answered by the "SuperLink" with
  Flower's MESSAGE_UNAVAILABLE error instead of reaching the node.
- An exception in the ClientApp becomes an error reply with code 2 and Flower's
  reason format, and, as in Flower, the node's context is not updated by that call.
- `TaskIdentity` (the process-wide identity Flower's `Message` constructor reads) is
  the SuperLink's while the coordinator runs, and the node's while its ClientApp runs.

What it drops: parallelism and timing (nodes run one after another, each instruction
when the coordinator pulls for it), and transport failures. A broken message is a
programming error here, so it raises instead of being logged and dropped.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from flwr.app import Context, Error, Message, RecordDict
from flwr.app.user_config import UserConfig
from flwr.clientapp import ClientApp
from flwr.common.constant import (
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    SUPERLINK_NODE_ID,
    ErrorCode,
)
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
)
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
from flwr.server.superlink.linkstate.utils import (
    create_message_error_unavailable_ins_message,
    message_ttl_has_expired,
)
from flwr.server.utils.validator import validate_message
from flwr.serverapp import Grid
from flwr.supercore.date import now
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger("aidmp.simulations")

NodeConfigFn = Callable[[int], Mapping[str, bool | int | float | str]]


def _wire_copy(message: Message) -> Message:
    """The message as the other side decodes it from Flower's protobuf encoding."""
    proto = ProtoMessage.FromString(message_to_proto(message).SerializeToString())
    return message_from_proto(proto)


class InProcessGrid(Grid):
    """`num_nodes` virtual institutions served by `client_app` in this process.

    `node_config(i)` adds to (or overrides) node i's config, which starts as Flower's
    simulation gives it: `{"partition-id": i, "num-partitions": num_nodes}`.
    `run_config` is what each node's `context.run_config` holds (empty, as under
    `flwr.simulation.run_simulation`, unless given).
    """

    pull_interval = 0.0  # replies are ready when pulled: no need to wait between pulls

    def __init__(
        self,
        num_nodes: int,
        *,
        client_app: ClientApp | None = None,
        node_config: NodeConfigFn | None = None,
        run_config: UserConfig | None = None,
        run_id: int | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ValueError("an in-process federation needs at least one node")
        if client_app is None:
            from aidmp.client.app import app  # the real one, mods and all

            client_app = app
        self.client_app: ClientApp = client_app
        # Flower's ids are random 64-bit integers; ours too, so no code can mistake a
        # node id for a partition id. `secrets`, not `random`: the round loop seeds
        # Python's `random` for Flower's sampling, and the grid must not disturb it.
        self._run = Run.create_empty(run_id if run_id is not None else secrets.randbits(63))
        self._task_id = secrets.randbits(63) or 1
        self._run.primary_task_id = self._task_id
        self._contexts: dict[int, Context] = {}
        for index in range(num_nodes):
            node_id = 0
            while node_id in (0, SUPERLINK_NODE_ID) or node_id in self._contexts:
                node_id = secrets.randbits(63)
            config: UserConfig = {PARTITION_ID_KEY: index, NUM_PARTITIONS_KEY: num_nodes}
            config |= dict(node_config(index)) if node_config is not None else {}
            self._contexts[node_id] = Context(
                run_id=self._run.run_id,
                node_id=node_id,
                node_config=config,
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
        self._pending: dict[str, Message] = {}  # instruction id -> the instruction, as sent
        self._replies: dict[str, Message] = {}  # instruction id -> its reply, not yet pulled
        self.act_as_superlink()

    # --- the Grid interface ------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        if not isinstance(run, Run):
            raise TypeError(f"`run` must be an instance of Run, got {type(run).__name__}")
        if run.run_id != self._run.run_id:
            raise RuntimeError(f"Cannot find the run with ID: {run.run_id}")
        self._run = replace(run)

    @property
    def run(self) -> Run:
        return replace(self._run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            meta = msg.metadata
            if meta.reply_to_message_id or meta.delivered_at:
                raise ValueError(f"not an instruction a coordinator can send: {meta}")
            meta.__dict__["_message_id"] = str(uuid.uuid4())  # as Flower's grids do
            errors = validate_message(msg, is_reply_message=False)
            if meta.run_id != self._run.run_id:
                errors.append(f"run id {meta.run_id} is not this grid's run {self._run.run_id}")
            if meta.dst_node_id not in self._contexts:
                errors.append(f"no node with id {meta.dst_node_id}")
            if errors:
                raise ValueError(f"invalid message to node {meta.dst_node_id}: {errors}")
            self._pending[meta.message_id] = _wire_copy(msg)
            ids.append(meta.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies to `message_ids` that are ready, after running the ClientApp for the
        first of them still waiting: a caller that pulls in a loop folds in one reply at a
        time, as it would from a busy SuperLink. An id this grid does not hold (never
        pushed, or its reply already pulled) is answered, as by Flower's SuperLink, with
        a MESSAGE_UNAVAILABLE error."""
        wanted = list(dict.fromkeys(message_ids))
        waiting = next((m for m in wanted if m in self._pending), None)
        if waiting is not None:
            self._replies[waiting] = self._deliver(self._pending.pop(waiting))
        for m in wanted:
            if m not in self._pending and m not in self._replies:
                self._replies[m] = create_message_error_unavailable_ins_message(m, self._run.run_id)
        return [self._replies.pop(m) for m in wanted if m in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        ids = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while ids and (deadline is None or time.monotonic() < deadline):
            pulled = self.pull_messages(ids)
            replies += pulled
            ids -= {m.metadata.reply_to_message_id for m in pulled}
        return replies

    # --- the nodes ---------------------------------------------------------------------
    def context(self, partition_id: int) -> Context:
        """Node `partition_id`'s context as it stands (its state persists between calls)."""
        for context in self._contexts.values():
            if context.node_config[PARTITION_ID_KEY] == partition_id:
                return context
        raise KeyError(partition_id)

    def act_as_superlink(self) -> None:
        """Messages built from now on come from the SuperLink in this grid's run (Flower's
        `Message` reads the sender from the process-wide `TaskIdentity`)."""
        self._set_identity(SUPERLINK_NODE_ID)

    def _set_identity(self, node_id: int) -> None:
        TaskIdentity.task_id = self._task_id
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = node_id

    def _deliver(self, instruction: Message) -> Message:
        """Run the node's ClientApp on `instruction`; the reply as the coordinator gets it."""
        meta = instruction.metadata
        if message_ttl_has_expired(meta, now().timestamp()):
            # Past its TTL the SuperLink no longer hands the instruction out.
            return create_message_error_unavailable_ins_message(meta.message_id, meta.run_id)
        meta.delivered_at = now().isoformat()
        stored = self._contexts[meta.dst_node_id]
        # The node works on a copy: as in Flower, a call that raises leaves its state alone.
        context = context_from_proto(context_to_proto(stored))
        self._set_identity(meta.dst_node_id)
        try:
            reply = self.client_app(instruction, context)
            if context.run_config != stored.run_config:
                raise ValueError("The `run_config` field of the `Context` cannot be modified.")
            self._contexts[meta.dst_node_id] = context
        except Exception as exc:  # what Flower's runtimes do with a ClientApp exception
            log.error("the ClientApp of node %d raised", meta.dst_node_id, exc_info=True)
            reason = str(type(exc)) + ":<'" + str(exc) + "'>"
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                reply_to=instruction,
            )
        finally:
            self.act_as_superlink()
        return self._check_reply(reply, instruction)

    def _check_reply(self, reply: Message, instruction: Message) -> Message:
        if not isinstance(reply, Message):
            raise TypeError(f"the ClientApp returned {type(reply).__name__}, not a Message")
        reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        errors = validate_message(reply, is_reply_message=True)
        ins, res = instruction.metadata, reply.metadata
        if res.reply_to_message_id != ins.message_id or res.src_node_id != ins.dst_node_id:
            errors.append("the reply does not answer the message the node was sent")
        if errors:
            raise RuntimeError(f"node {ins.dst_node_id} sent an invalid reply: {errors}")
        return _wire_copy(reply)
