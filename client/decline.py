"""What a node says when it declines, and when it must decline rather than send.

A decline's reason crosses to the coordinator, which is honest but curious: it carries
no input content, no file contents and no local paths (DESIGN.md, "Parties and
trust"). An error that may quote its input or name a path says so with its
`public_reason` (a GovernanceError's is a fixed description and a code); whatever
else an error says is scrubbed of the node's own paths, and of anything else that
looks like an absolute path, and cut short. The full message stays in the node's log.

A node with its own data that trains under DP keeps a privacy ledger and an audit log
in its own state folder. Without one it would send updates that nothing at the site
records, so it declines instead (`require_own_state_dir`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context, Error, Message

from aidmp.client.data import institution_name
from aidmp.errors import AidmpError, PrivacyError
from aidmp.node_config import has_own_data, truthy

log = logging.getLogger("aidmp.client")

MAX_REASON_CHARS = 500
# An absolute (or home-relative) POSIX path, or a Windows one, starting a token.
_PATH = re.compile(r"(?<![\w.~/<>-])~?/[^\s'\"`,;()\[\]{}<>]+|\b[A-Za-z]:\\[^\s'\"`,;]+")
# Node config keys whose values are the node's own files and folders.
PATH_KEYS = ("data", "policy", "state-dir", "he-keys")


def scrub(text: str, node_config: Mapping[str, object]) -> str:
    """`text` with the node's own paths named by their config key (`<data>`), any other
    absolute path as `<path>`, and at most MAX_REASON_CHARS characters."""
    forms: dict[str, str] = {}
    for key in PATH_KEYS:
        value = node_config.get(key)
        if isinstance(value, str) and value:
            for form in (value, str(Path(value).expanduser().resolve())):
                forms.setdefault(form, f"<{key}>")
    for form in sorted(forms, key=len, reverse=True):  # the longest first
        text = text.replace(form, forms[form])
    text = _PATH.sub("<path>", text)
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def public_reason(exc: AidmpError, node_config: Mapping[str, object]) -> str:
    """The reason a node may send for `exc`."""
    text = exc.public_reason if exc.public_reason is not None else str(exc)
    return scrub(text, node_config)


def decline(msg: Message, context: Context, code: int, reason: str) -> Message:
    """The error reply, its reason prefixed with the node's name and scrubbed."""
    name = institution_name(context.node_config, context.node_id)
    reason = scrub(reason, context.node_config)
    return Message(Error(code=code, reason=f"[{name}] {reason}"), reply_to=msg)


def decline_for(msg: Message, context: Context, exc: AidmpError) -> Message:
    """Decline with `exc`'s code and its public reason; the full message goes to the log."""
    name = institution_name(context.node_config, context.node_id)
    log.warning("[%s] declined (code %s): %s", name, exc.decline_code, exc)
    return decline(msg, context, exc.decline_code, public_reason(exc, context.node_config))


def dp_on(node_config: Mapping[str, object], round_dp: bool | None = None) -> bool:
    """Whether this node trains under DP: its own `dp` setting, else the run's."""
    if "dp" in node_config:
        return truthy(node_config["dp"])
    return bool(round_dp)


def require_own_state_dir(node_config: Mapping[str, object], round_dp: bool | None = None) -> None:
    """Refuse (PrivacyError, code 103) a node with its own data under DP that has no
    `state-dir` of its own: no ledger, and no audit log of what it sends."""
    own = has_own_data(node_config)
    if own and dp_on(node_config, round_dp) and not node_config.get("state-dir"):
        raise PrivacyError(
            "DP is on but this node has no state-dir of its own, so it could keep no "
            "privacy ledger and no audit log of what it sends; it sends nothing until "
            "it is started with one (aidmp node start --ledger DIR, or --node-config "
            "\"state-dir='/path/kept/across/runs'\")"
        )
