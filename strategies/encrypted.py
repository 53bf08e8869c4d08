"""FedAvg and FedAvgM over CKKS ciphertexts: the coordinator never sees an update.

The global state this strategy passes around (the `arrays` of Flower's Strategy
API, and the checkpoint) is an `EncryptedGlobal` packed as uint8 arrays. Each
round the coordinator sums the nodes' encrypted n_i·u_i as replies arrive
(`accumulate_train`, one running sum, never every update in memory), multiplies
by the plaintext 1/W, and adds the result to the encrypted model. The arithmetic
and its error bound are in privacy/he/packing.py.

Sampling, evaluation and metric averaging are Flower's FedAvg, unchanged:
evaluation is federated, since the coordinator cannot read the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from logging import getLogger
from typing import Any

import tenseal as ts
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from aidmp.errors import HeError
from aidmp.privacy.he.keys import fingerprint
from aidmp.privacy.he.packing import (
    EncryptedSum,
    add_vectors,
    encrypt_initial_global,
    weight_unit_for,
)
from aidmp.privacy.he.state import UPDATE_KEY, WIRE_KEY, EncryptedGlobal, flatten_state
from aidmp.round_config import HE_MOMENTUM_KEY, HE_SERVER_LR_KEY, PROXIMAL_MU_KEY

log = getLogger("aidmp.server")


class EncryptedFedAvg(FedAvg):
    """FedAvg (momentum 0) or FedAvgM on encrypted updates, with a public context only."""

    def __init__(
        self,
        context: ts.Context,
        *,
        server_momentum: float = 0.0,
        server_learning_rate: float = 1.0,
        proximal_mu: float = 0.0,
        distributed_sample_rate: float | None = None,
        distributed_learning_rate: float = 1.0,
        **fedavg: Any,  # FedAvg's own keyword arguments (sampling, weighting)
    ) -> None:
        super().__init__(**fedavg)
        if context.is_private():
            raise HeError(
                "the coordinator was given a secret CKKS context; it must only hold the "
                "public coordinator.ckks"
            )
        self.context = context
        self.fingerprint = fingerprint(context)
        self.server_momentum = server_momentum
        self.server_learning_rate = server_learning_rate
        self.proximal_mu = proximal_mu  # FedProx: the term is applied at the nodes
        # dp-mode=distributed: replies are shares of one DP-SGD step (privacy/distributed.py),
        # summed and multiplied by −η·m/(q·Σn), never averaged; None for FedAvg's mean.
        self.distributed_sample_rate = distributed_sample_rate
        self.distributed_learning_rate = distributed_learning_rate
        self._current: EncryptedGlobal | None = None
        self._sum: EncryptedSum | None = None
        self._weight = 0.0  # Σ n/m over this round's replies: what the sum is divided by
        self._examples = 0.0  # Σ n: sets the next round's weight unit m
        self._next_unit: float | None = None  # m after a round that could not be divided
        self._metrics: list[RecordDict] = []
        self.bytes_received = 0  # ciphertext bytes nodes sent this round
        self.bytes_broadcast = 0  # ciphertext bytes the coordinator sent this round

    @property
    def weight_unit(self) -> float:
        """The weight unit m of the current global state (1 before the first round)."""
        return self._current.weight_unit if self._current is not None else 1.0

    # --- the global state --------------------------------------------------------
    def initial_state(self, model_state: Mapping[str, torch.Tensor]) -> ArrayRecord:
        """G_0: the freshly initialised model, encrypted under the public key."""
        params = flatten_state(model_state)
        model = encrypt_initial_global(self.context, params)
        return EncryptedGlobal(len(params), self.fingerprint, model, 1.0).to_arrays()

    def open_state(self, arrays: ArrayRecord) -> EncryptedGlobal:
        state = EncryptedGlobal.from_arrays(arrays)
        if state.fingerprint != self.fingerprint:
            raise HeError(
                f"the stored global model is encrypted under key fingerprint "
                f"{state.fingerprint[:16]}..., the coordinator's key is "
                f"{self.fingerprint[:16]}...; resume with the keys the run began with"
            )
        return state

    # --- sending -------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid
    ) -> Iterable[Message]:
        self._current = self.open_state(arrays)
        if self._next_unit is not None:  # the last round's W asked for another unit
            self._current = replace(self._current, weight_unit=self._next_unit)
        config[HE_MOMENTUM_KEY] = self.server_momentum
        config[HE_SERVER_LR_KEY] = self.server_learning_rate
        if self.proximal_mu > 0:
            config[PROXIMAL_MU_KEY] = self.proximal_mu
        self.bytes_broadcast = 0
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid
    ) -> Iterable[Message]:
        self._current = self.open_state(arrays)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def _construct_messages(
        self, record: RecordDict, node_ids: list[int], message_type: str
    ) -> Iterable[Message]:
        # FedAvg would send the ArrayRecord; nodes get the ciphertexts as bytes instead.
        assert self._current is not None
        wire = self._current.to_wire()
        size = sum(len(b) for b in self._current.model + (self._current.momentum or []))
        self.bytes_broadcast += size * len(node_ids)
        encrypted = RecordDict(
            {WIRE_KEY: wire, self.configrecord_key: record[self.configrecord_key]}
        )
        return super()._construct_messages(encrypted, node_ids, message_type)

    # --- aggregating, one reply at a time ----------------------------------------
    def begin_train(self, server_round: int) -> None:
        self._sum = EncryptedSum(self.context)
        self._weight = 0.0
        self._examples = 0.0
        self._metrics = []
        self.bytes_received = 0

    def accumulate_train(self, reply: Message, who: str) -> str | None:
        """Add one reply to the running sum; returns why it was rejected, if it was."""
        assert self._sum is not None, "begin_train first"
        if reply.has_error():
            return None  # the node declined; run_rounds records its reason
        content = reply.content
        update = content.config_records.get(UPDATE_KEY)
        if update is None:
            return "sent no encrypted update in an encrypted round; it was not aggregated"
        if update.get("fingerprint") != self.fingerprint:
            return (
                f"encrypted under key fingerprint {str(update.get('fingerprint'))[:16]}..., "
                f"the run's is {self.fingerprint[:16]}...; not aggregated"
            )
        metrics = content.metric_records.get("metrics")
        weight = None if metrics is None else metrics.get(self.weighted_by_key)
        if metrics is None or not isinstance(weight, (int, float)) or weight <= 0:
            return f"reported no positive '{self.weighted_by_key}'; not aggregated"
        raw = update.get("chunks")
        if not isinstance(raw, list) or not all(isinstance(c, bytes) for c in raw):
            return "sent an update whose chunks are not ciphertext bytes; not aggregated"
        chunks = [c for c in raw if isinstance(c, bytes)]  # every one of them, typed
        try:
            self._sum.add(chunks, who)
        except HeError as exc:
            return f"{exc}; not aggregated"
        assert self._current is not None
        self._weight += float(weight) / self._current.weight_unit
        self._examples += float(weight)
        self._metrics.append(RecordDict({"metrics": metrics}))
        self.bytes_received += sum(len(b) for b in chunks)
        return None

    def finish_train(self, server_round: int) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """G_{t+1} = G_t + Σ/W (and M_{t+1} = Σ/W for FedAvgM); None if nothing arrived."""
        assert self._sum is not None and self._current is not None
        if self._sum.count == 0:
            return None, None
        total_weight, unit = self._weight, weight_unit_for(self._examples)
        if self.distributed_sample_rate is not None:
            if self._sum.count < self.min_train_nodes:
                # Too few noise shares: the sum is dropped here, never sent to anyone.
                log.warning("round %d not aggregated: %d contributions, %d needed",
                            server_round, self._sum.count, self.min_train_nodes)  # fmt: skip
                self._sum = None
                return None, None
            # Σ (g_i+z_i)/m × −η·m/(q·Σn): the expected batch q·Σn is public (Σn reported).
            scaled = self.distributed_sample_rate * self._examples / self.distributed_learning_rate
            total_weight = -scaled / self._current.weight_unit
            unit = weight_unit_for(scaled)
        try:
            mean, mean_check = self._sum.mean(total_weight)
        except HeError as exc:
            # Only before the coordinator has seen a round's W (a job's first round, with
            # over ~67,000 examples): the nodes weighted by an outdated unit. Skip the
            # round rather than take a wrong step; the next one uses the right unit.
            log.warning("round %d not aggregated: %s; the next round uses weight unit %g",
                        server_round, exc, unit)  # fmt: skip
            self._next_unit, self._sum = unit, None
            return None, None
        self._next_unit = None
        current = self._current
        if self.distributed_sample_rate is not None:
            # Each share's check slot holds 1/m, not its weight: the sum's holds count/m.
            mean_check *= self._sum.count / current.weight_unit / total_weight
        model = add_vectors(self.context, current.model, mean)
        self._current = EncryptedGlobal(
            size=current.size,
            fingerprint=self.fingerprint,
            model=model,
            model_check=current.model_check + mean_check,
            momentum=[v.serialize() for v in mean] if self.server_momentum > 0 else None,
            momentum_check=mean_check if self.server_momentum > 0 else 0.0,
            weight_unit=unit,
        )
        self._sum = None
        metrics = self.train_metrics_aggr_fn(self._metrics, self.weighted_by_key)
        return self._current.to_arrays(), metrics

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's one-call form of begin/accumulate/finish."""
        self.begin_train(server_round)
        for reply in replies:
            reason = self.accumulate_train(reply, f"node {reply.metadata.src_node_id}")
            if reason:
                log.warning(
                    "round %d: node %d %s", server_round, reply.metadata.src_node_id, reason
                )
        return self.finish_train(server_round)
