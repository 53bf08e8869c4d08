"""Sites named as the coordinator registered their keys (`register-node --name`).

A node names itself in its replies (`node start --name`, or its state folder's name). A
registered name is tied to the key the node authenticated with, so it wins: a node
cannot take another site's name, and two nodes started without `--name` are not merged
into one site. `RegisteredNames` wraps the ServerApp's Grid and rewrites each reply's
self-name before anything reads it, so rounds, queries, k-means jobs and the final model
all name a site alike. Sites never registered with a name keep their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from logging import getLogger
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

log = getLogger("aidmp.server")


# A node's error replies carry its name in brackets before the reason (client/decline.py).
_BRACKETED = re.compile(r"^\[(?P<name>[^\]]+)\] (?P<rest>.*)$", re.DOTALL)


def _said(reply: Message) -> str | None:
    """The name a reply gives its site: its "node" record's, or an error's brackets."""
    if reply.has_error():
        found = _BRACKETED.match(reply.error.reason or "")
        return found["name"] if found else None
    node = reply.content.config_records.get("node")
    return None if node is None or "institution" not in node else str(node["institution"])


def _name_as(reply: Message, name: str) -> None:
    if reply.has_error():
        found = _BRACKETED.match(reply.error.reason or "")
        assert found is not None
        reply.error.__dict__["_reason"] = f"[{name}] {found['rest']}"  # Error has no setter
    else:
        reply.content.config_records["node"]["institution"] = name


def adopt_registered_name(reply: Message, names: Mapping[int, str], warned: set[int]) -> Message:
    """`reply`, naming its site as registered. A node registered under a name is shown by
    it whatever it calls itself; a node registered under none may not use another's
    registered name (it is shown as node-<id>). A warning, once per node, when a reply's
    name is replaced. Declines are renamed too: their reasons begin with the name."""
    node_id = reply.metadata.src_node_id
    said = _said(reply)
    if said is None:
        return reply
    shown = names.get(node_id)
    if shown is None:
        if said not in names.values():
            return reply
        shown = f"node-{node_id}"  # another site's registered name: not this node's
    if said != shown:
        if node_id not in warned:
            warned.add(node_id)
            log.warning(
                "node %d calls itself %s; it is shown as %s (the name its key was "
                "registered under%s)",
                node_id, said, shown, "" if node_id in names else ": none, and the name "
                "it gives is another site's",
            )  # fmt: skip
        _name_as(reply, shown)
    return reply


class RegisteredNames(Grid):
    """A Grid whose replies name each registered site by its registered name."""

    def __init__(self, grid: Grid, names: Mapping[int, str]) -> None:
        self._grid = grid
        self._names = dict(names)
        self._warned: set[int] = set()

    def __getattr__(self, name: str) -> Any:  # pull_interval and the like
        if name.startswith("_"):  # not yet set (a copy being made): never recurse
            raise AttributeError(name)
        return getattr(self._grid, name)

    def get_nodes(self) -> Any:
        return self._grid.get_nodes()

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
