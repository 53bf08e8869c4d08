"""Sites named as the coordinator registered their keys (`register-node --name`).

A node names itself in its replies (`node start --name`, or its state folder's name). A
registered name is tied to the key the node authenticated with, so it wins: a node
cannot take another site's name, and two nodes started without `--name` are not merged
into one site. `RegisteredNames` wraps the ServerApp's Grid and rewrites each reply's
self-name before anything reads it, so rounds, queries, k-means jobs and the final model
all name a site alike. Sites never registered with a name keep their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import getLogger
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

log = getLogger("aidmp.server")


def adopt_registered_name(reply: Message, names: Mapping[int, str], warned: set[int]) -> Message:
    """`reply`, its "node" record naming the site as registered (a warning, once per
    node, when it called itself otherwise)."""
    registered = names.get(reply.metadata.src_node_id)
    node = None if reply.has_error() else reply.content.config_records.get("node")
    if registered is None or node is None:
        return reply
    said = node.get("institution")
    if said != registered:
        if reply.metadata.src_node_id not in warned:
            warned.add(reply.metadata.src_node_id)
            log.warning(
                "node %d was registered as %s but calls itself %s; it is shown as %s",
                reply.metadata.src_node_id, registered, said, registered,
            )  # fmt: skip
        node["institution"] = registered
    return reply


class RegisteredNames(Grid):
    """A Grid whose replies name each registered site by its registered name."""

    def __init__(self, grid: Grid, names: Mapping[int, str]) -> None:
        self._grid = grid
        self._names = dict(names)
        self._warned: set[int] = set()

    def __getattr__(self, name: str) -> Any:  # pull_interval and the like
        return getattr(self._grid, name)

    @property
    def run(self) -> Any:
        return self._grid.run

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._adopt(m) for m in self._grid.pull_messages(message_ids)]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return [self._adopt(m) for m in self._grid.send_and_receive(messages, timeout=timeout)]

    def _adopt(self, reply: Message) -> Message:
        return adopt_registered_name(reply, self._names, self._warned)
