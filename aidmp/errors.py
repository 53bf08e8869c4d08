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
    return f"{what} '{where}': {first['msg']} (got {first.get('input')!r})"
