"""Errors that reach a user as one clear line: what is wrong and what to do."""


class AidmpError(Exception):
    """A problem a user can fix. The CLI prints its message without a traceback."""


class DeclineCode:
    """Flower error codes with which a node declines a round (0 to 8 are Flower's)."""

    DATA_UNAVAILABLE = 100  # the node has no usable data for this task
    BAD_CONFIG = 101  # the round's config is missing a key or has a wrong value
