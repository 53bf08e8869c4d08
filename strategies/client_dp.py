"""Client-level DP for plaintext runs, with a fixed denominator.

Each node clips its update to `clipping_norm` C (`fixedclipping_mod` on the ClientApp).
The coordinator sums the k' clipped updates that arrived, adds N(0, σ²C²) to the sum,
and divides by k, the number of nodes *sampled* for the round. So the released model
is g + (Σ Δ_i + N(0, σ²C²)) / k whatever k' turns out to be: adding or removing one
institution moves the sum by at most C, which is exactly the Gaussian event with noise
multiplier σ that Flower's `RdpAccountant` composes each round.

Why not Flower's wrapper as it is: it skips the whole round if any node declines (one
institution out of budget would stall everyone), and its noise σC/k on a mean over the
k' that replied is only right when k' = k. The earlier version of this module divided
by k' and shrank the noise to σC/k' instead; that is still noise multiplier σ on a sum,
but it lets the denominator (and so the released scale) depend on who replied, which
the accountant's fixed-k event does not describe. A fixed k is the standard DP-FedAvg
estimator (McMahan et al. 2018, "Learning differentially private recurrent language
models"): unbiased for the mean over the sample, and its noise never depends on replies.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from logging import getLogger

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid, PrivacyAccountant
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy

log = getLogger("aidmp.strategies")

# Accounted client-level DP needs equal weights: every node reports weight 1 under
# this key (FedAvg's usual `num-examples` would make a large node's update count more).
CLIENT_WEIGHT_KEY = "client-weight"


class ClientLevelDP(DifferentialPrivacyClientSideFixedClipping):
    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
        *,
        accountant: PrivacyAccountant | None = None,
    ) -> None:
        super().__init__(
            strategy,
            noise_multiplier,
            clipping_norm,
            num_sampled_clients,
            accountant=accountant,
        )
        self._sent: dict[int, ArrayRecord] = {}  # round -> the global model sent out
        # The coordinator's noise: fresh OS entropy per process, never a run seed that
        # a participant could know and subtract.
        self._rng = np.random.default_rng(secrets.randbits(128))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = {server_round: arrays}  # one round in flight at a time
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        event = self._pop_pending_event(server_round)
        usable = [m for m in replies if not m.has_error()]
        sent = self._sent.pop(server_round, None)
        if not usable or sent is None:
            return None, None  # nothing released, nothing to account
        if len(usable) < len(replies):
            log.info(
                "round %d: %d node(s) declined; the sum of the %d updates that arrived is "
                "noised and divided by the %d sampled",
                server_round,
                len(replies) - len(usable),
                len(usable),
                self.num_sampled_clients,
            )
        self._validate_uniform_weights(usable)
        # The base strategy's equal-weight mean of the returned models is g + ΣΔ/k'.
        mean, metrics = self.strategy.aggregate_train(server_round, usable)
        if mean is None:
            return None, metrics
        released = self.fixed_denominator_release(sent, mean, len(usable))
        self._compose_release(event)
        return released, metrics

    def fixed_denominator_release(
        self, sent: ArrayRecord, mean: ArrayRecord, replied: int
    ) -> ArrayRecord:
        """g + (ΣΔ + N(0, σ²C²)) / k, from g and the mean g + ΣΔ/k' of the k' models."""
        k = self.num_sampled_clients
        std = self.noise_multiplier * self.clipping_norm  # on the sum
        out = {}
        for name, g_arr in sent.items():
            g = g_arr.numpy().astype(np.float64)
            total = (mean[name].numpy().astype(np.float64) - g) * replied  # ΣΔ
            noisy = total + self._rng.normal(0.0, std, size=g.shape)
            out[name] = Array((g + noisy / k).astype(g_arr.numpy().dtype))
        log.info(
            "client-level DP: noise std %.4g on the sum of %d updates, divided by %d sampled",
            std,
            replied,
            k,
        )
        return ArrayRecord(out)
