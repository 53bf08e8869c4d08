"""An institution's side of an encrypted round: its key, the global model, its update.

Where a key lives: the node's own `he-keys` node config names its secret context
(`institution.ckks`). Only in simulation, where the researcher plays every node,
may the round config name it instead. A node declines (code 104) when it has no
key, when the coordinator's state was encrypted under another key fingerprint, or
when a check slot does not decrypt to the announced value.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tenseal as ts
from flwr.app import ConfigRecord

from aidmp.errors import HeError
from aidmp.node_config import has_own_data
from aidmp.privacy.he.keys import fingerprint, key_file_for, load_context
from aidmp.privacy.he.packing import check_range, encrypt_update
from aidmp.privacy.he.state import EncryptedGlobal, flatten_state, unflatten_state
from aidmp.round_config import RoundConfig

if TYPE_CHECKING:  # only for the model a training round loads and encrypts
    import torch

KEYS_CONFIG = "he-keys"


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> tuple[ts.Context, str]:
    # Keyed by modification time too, so a rotated key file is read again.
    context = load_context(Path(path), "institution")
    return context, fingerprint(context)


def node_keys(node_config: Mapping[str, object], run_keys: str) -> tuple[ts.Context, str]:
    """This node's secret context and its fingerprint (cached per process). `run_keys`
    is the round config's `he-keys`, used only in simulation where the node names none:
    a node with its own data uses its own key or none."""
    raw = node_config.get(KEYS_CONFIG) or ("" if has_own_data(node_config) else run_keys)
    if not raw:
        raise HeError(
            "this round is encrypted but the node has no CKKS key; start it with "
            "--node-config \"he-keys='/path/to/institution.ckks'\""
        )
    path = key_file_for(Path(str(raw)), "institution")
    if not path.is_file():
        raise HeError(f"no key file at {path}; copy institution.ckks from the key ceremony there")
    return _load(str(path.resolve()), path.stat().st_mtime_ns)


@dataclass
class HeRound:
    """The decrypted global state of one round, and how to encrypt the reply."""

    context: ts.Context
    fingerprint: str
    global_params: np.ndarray
    momentum: np.ndarray | None
    weight_unit: float = 1.0  # the coordinator's m: this node sends encrypt((n/m)·u)

    @classmethod
    def open(
        cls,
        record: ConfigRecord,
        node_config: Mapping[str, object],
        round_config: RoundConfig,
    ) -> HeRound:
        context, own = node_keys(node_config, round_config.he_keys)
        state = EncryptedGlobal.from_wire(record)
        if state.fingerprint != own:
            raise HeError(
                f"the coordinator's model is encrypted under key fingerprint "
                f"{state.fingerprint[:16]}..., this node holds {own[:16]}...; both must "
                "come from the same key ceremony (compare `aidmp keys inspect`)"
            )
        params, momentum = state.decrypt(context)
        if not (state.weight_unit >= 1 and math.log2(state.weight_unit).is_integer()):
            raise HeError(f"the coordinator announced weight unit {state.weight_unit:.6g}, "
                          "not a power of two of at least 1")  # fmt: skip
        return cls(context, own, params, momentum, state.weight_unit)

    def load_into(self, model: torch.nn.Module) -> None:
        model.load_state_dict(unflatten_state(self.global_params, model.state_dict()))

    def encrypt_reply(
        self, model: torch.nn.Module, weight: float, momentum: float, server_lr: float
    ) -> ConfigRecord:
        """encrypt((n/m)·u) with u = β·M_t + η·(w_local − w_t); see privacy/he/packing.py."""
        local = flatten_state(model.state_dict())
        check_range(self.context, local, "this node's trained model")
        update = server_lr * (local - self.global_params)
        if self.momentum is not None and momentum > 0:
            update += momentum * self.momentum
        chunks = encrypt_update(self.context, update, weight / self.weight_unit)
        return ConfigRecord({"chunks": chunks, "fingerprint": self.fingerprint})

    def encrypt_share(self, noisy_gradient_sum: np.ndarray) -> ConfigRecord:
        """Distributed DP (privacy/distributed.py): encrypt((g_i + z_i)/m), check 1/m. The
        coordinator sums these and multiplies by −η·m/(q·Σn): one DP-SGD step on G."""
        share = np.asarray(noisy_gradient_sum, dtype=np.float64)
        chunks = encrypt_update(self.context, share, 1.0 / self.weight_unit)
        return ConfigRecord({"chunks": chunks, "fingerprint": self.fingerprint})
