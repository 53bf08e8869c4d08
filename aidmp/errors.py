"""Errors that reach a user as one clear line: what is wrong and what to do."""

from pydantic import ValidationError


class DeclineCode:
    """Flower error codes with which a node declines a round (0 to 8 are Flower's)."""

    DATA_UNAVAILABLE = 100  # the node has no usable data for this task
    BAD_CONFIG = 101  # the round's config is missing a key or has a wrong value
    BUDGET_EXHAUSTED = 102  # this round would take the node past its privacy budget
    PRIVACY_POLICY = 103  # the node's DP policy or ledger is invalid or unverifiable
    HE_KEYS = 104  # CKKS keys missing, of the wrong kind, or not the run's; bad ciphertext
    GOVERNANCE = 105  # the node's data governance declined: schema, quality, consent, k
    # Never sent by a node: the coordinator records it for a node that did not answer
    # within the round timeout (it may be slow, cut off, or gone without a word).
    NO_REPLY = 106


class AidmpError(Exception):
    """A problem a user can fix. The CLI prints its message without a traceback; a node
    declines the round with `decline_code` and the message as the reason."""

    decline_code = DeclineCode.DATA_UNAVAILABLE
    # What a node sends instead of the message when the message may name local paths or
    # quote input (client/decline.py); None: the message is fit to send.
    public_reason: str | None = None


class PrivacyError(AidmpError):
    """The node's DP policy or ledger forbids training: invalid, unreadable or foreign."""

    decline_code = DeclineCode.PRIVACY_POLICY


class HeError(AidmpError):
    """A CKKS key or ciphertext problem: wrong key, other keys, damaged ciphertext."""

    decline_code = DeclineCode.HE_KEYS


class RoundConfigError(AidmpError):
    """The round config a node received lacks a key or has one of the wrong type."""

    decline_code = DeclineCode.BAD_CONFIG


def describe_validation_error(what: str, exc: ValidationError) -> str:
    """pydantic's first complaint as one line: which key, what is wrong, what was given."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{what} '{where}': {first['msg']} (got {snippet(first.get('input'))})"


SNIPPET_CHARS = 40


def snippet(value: object, limit: int = SNIPPET_CHARS) -> str:
    """A short, escaped quote of untrusted input for a message shown locally.

    Text is cut to `limit` characters and repr-escaped (no newlines or control
    characters); a container is described by its type and length, never expanded (a
    YAML alias bomb is billions of items deep); a huge number by its size. Text sent
    to the coordinator quotes no input at all, not even this.
    """
    if isinstance(value, str | bytes):
        cut = value[:limit]
        return repr(cut) + ("…" if len(value) > limit else "")
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"a {value.bit_length()}-bit number"
    if isinstance(value, list | tuple | dict | set | frozenset):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    return f"a value of type {type(value).__name__}"
