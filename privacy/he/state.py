"""The encrypted global state, as the coordinator stores it and as it crosses the wire.

The coordinator holds G (the global model) and, for FedAvgM, M (η times the server
momentum) as serialized CKKS ciphertexts it cannot read. It stores them as uint8
arrays in its ArrayRecord and checkpoint, and sends them to nodes as bytes in a
ConfigRecord named "he". Beside the ciphertexts travel only the model's length,
the key fingerprint, and the values the check slots must decrypt to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import tenseal as ts
from flwr.app import Array, ArrayRecord, ConfigRecord, ConfigRecordValues

from aidmp.errors import HeError
from aidmp.privacy.he.packing import decrypt_vector

if TYPE_CHECKING:  # torch is imported where a model is touched: a node that decrypts a
    import torch  # sum loads none

WIRE_KEY = "he"  # RecordDict key of the encrypted global state, coordinator -> node
UPDATE_KEY = "he-update"  # RecordDict key of a node's encrypted update, node -> coordinator
_META = "he.meta"


def flatten_state(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Every parameter and buffer, in state-dict order, as one float64 vector."""
    if not state:
        return np.empty(0)
    return np.concatenate([t.detach().cpu().double().numpy().ravel() for t in state.values()])


def unflatten_state(
    vector: np.ndarray, template: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The inverse of `flatten_state`, shaped and typed like `template`."""
    import torch

    out, offset = {}, 0
    for key, tensor in template.items():
        n = tensor.numel()
        out[key] = torch.from_numpy(vector[offset : offset + n].copy()).reshape(tensor.shape)
        out[key] = out[key].to(tensor.dtype)
        offset += n
    if offset != len(vector):
        raise HeError(f"the decrypted model has {len(vector)} values, this task's {offset}")
    return out


def _scalar(value: ConfigRecordValues) -> int | float | str | bool:
    """A wire value that int() or float() may read; a list or bytes is a TypeError."""
    if isinstance(value, list | bytes):
        raise TypeError(f"a {type(value).__name__} where a number belongs")
    return value


def _blobs(value: ConfigRecordValues) -> list[bytes]:
    """A wire value that must be a list of ciphertexts; anything else is a TypeError."""
    if not isinstance(value, list) or not all(isinstance(b, bytes) for b in value):
        raise TypeError(f"a {type(value).__name__} where a list of ciphertexts belongs")
    return [b for b in value if isinstance(b, bytes)]


@dataclass
class EncryptedGlobal:
    size: int  # parameters in the model
    fingerprint: str  # of the public context it is encrypted under
    model: list[bytes]  # G
    model_check: float  # what G's check slots decrypt to
    momentum: list[bytes] | None = None  # M (FedAvgM only, after its first round)
    momentum_check: float = 0.0
    # m: nodes weight their update by n/m (privacy/he/packing.py, "Large federations").
    weight_unit: float = 1.0

    def _meta(self) -> dict[str, int | float | str]:
        return {
            "size": self.size,
            "fingerprint": self.fingerprint,
            "model-check": self.model_check,
            "momentum-check": self.momentum_check,
            "weight-unit": self.weight_unit,
        }

    # --- the coordinator's ArrayRecord and checkpoint -----------------------------
    def to_arrays(self) -> ArrayRecord:
        arrays = {f"he.model.{i}": b for i, b in enumerate(self.model)}
        arrays |= {f"he.momentum.{i}": b for i, b in enumerate(self.momentum or [])}
        arrays[_META] = json.dumps(self._meta()).encode()
        return ArrayRecord({k: Array(np.frombuffer(b, dtype=np.uint8)) for k, b in arrays.items()})

    @classmethod
    def from_arrays(cls, arrays: ArrayRecord | Mapping[str, np.ndarray]) -> EncryptedGlobal:
        blobs = {
            k: (v.numpy() if isinstance(v, Array) else np.asarray(v)).tobytes()
            for k, v in arrays.items()
        }
        if _META not in blobs:
            raise HeError(
                "this global state holds no ciphertexts: it comes from a plaintext run "
                "and cannot continue under HE"
            )
        meta = json.loads(blobs[_META].decode())

        def series(prefix: str) -> list[bytes]:
            keys = sorted(
                (k for k in blobs if k.startswith(prefix)), key=lambda k: int(k[len(prefix) :])
            )
            return [blobs[k] for k in keys]

        momentum = series("he.momentum.")
        return cls(
            size=int(meta["size"]),
            fingerprint=str(meta["fingerprint"]),
            model=series("he.model."),
            model_check=float(meta["model-check"]),
            momentum=momentum or None,
            momentum_check=float(meta["momentum-check"]),
            weight_unit=float(meta.get("weight-unit", 1.0)),  # states from before units
        )

    # --- the wire, coordinator -> node --------------------------------------------
    def to_wire(self) -> ConfigRecord:
        record: dict[str, ConfigRecordValues] = {**self._meta(), "model": list(self.model)}
        if self.momentum:
            record["momentum"] = list(self.momentum)
        return ConfigRecord(record)

    @classmethod
    def from_wire(cls, record: ConfigRecord) -> EncryptedGlobal:
        try:
            momentum = record.get("momentum")
            return cls(
                size=int(_scalar(record["size"])),
                fingerprint=str(record["fingerprint"]),
                model=_blobs(record["model"]),
                model_check=float(_scalar(record["model-check"])),
                momentum=_blobs(momentum) if momentum else None,
                momentum_check=float(_scalar(record["momentum-check"])),
                weight_unit=float(_scalar(record.get("weight-unit", 1.0))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HeError(f"the encrypted global model arrived incomplete ({exc})") from None

    # --- the node ---------------------------------------------------------------
    def decrypt(self, context: ts.Context) -> tuple[np.ndarray, np.ndarray | None]:
        """(w_t, M_t) in plaintext; M_t is None when there is no momentum yet."""
        model = decrypt_vector(context, self.model, self.size, self.model_check, "global model")
        momentum = None
        if self.momentum:
            momentum = decrypt_vector(
                context, self.momentum, self.size, self.momentum_check, "server momentum"
            )
        return model, momentum
