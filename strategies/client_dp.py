"""Client-level DP for plaintext runs: Flower's client-side fixed-clipping wrapper.

Each node clips its update to `clipping_norm` (`fixedclipping_mod` on the
ClientApp); the coordinator averages the clipped updates with equal weights and
adds Gaussian noise of std σ·C/k to the mean of k updates. Flower's
`RdpAccountant` (`flwr[dp]`) composes one Gaussian release per round.

One change to Flower's wrapper: it skips the whole round if any node declines,
so one institution out of budget would stall everyone. Here a declined or failed
reply is dropped and the noise is calibrated to the k replies that remain, so
every release still has noise multiplier σ and the accountant's event stays true.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import getLogger

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

log = getLogger("aidmp.strategies")

# Accounted client-level DP needs equal weights: every node reports weight 1 under
# this key (FedAvg's usual `num-examples` would make a large node's update count more).
CLIENT_WEIGHT_KEY = "client-weight"


class ClientLevelDP(DifferentialPrivacyClientSideFixedClipping):
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        usable = [m for m in replies if not m.has_error()]
        if len(usable) < len(replies):
            log.info(
                "round %d: %d node(s) declined; client-level DP noise is calibrated to the "
                "%d that replied",
                server_round,
                len(replies) - len(usable),
                len(usable),
            )
        if not usable:
            self._pop_pending_event(server_round)  # nothing released, nothing to account
            return None, None
        sampled = self.num_sampled_clients
        self.num_sampled_clients = len(usable)
        try:
            return super().aggregate_train(server_round, usable)
        finally:
            self.num_sampled_clients = sampled
