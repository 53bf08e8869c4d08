"""ClientApp mods: Flower's update clipping for client-level DP, only when asked for.

`fixedclipping_mod` refuses any train message without a clipping norm in its
config, so installed as it is it would break every run without client-level DP.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from aidmp.round_config import CLIPPING_NORM_KEY, RECORD_NAME


def client_dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this node's update to the coordinator's norm if the round uses client-level DP.

    Only the key's presence is looked at here: a round config that does not parse is the
    handler's to decline (RoundConfig.from_record), and Flower's mod reads the norm itself.
    """
    config = msg.content.config_records.get(RECORD_NAME)
    if config is not None and CLIPPING_NORM_KEY in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)
