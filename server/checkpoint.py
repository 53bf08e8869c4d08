"""One checkpoint file per run: the global model, strategy state and round history.

Everything sits in a single .npz written atomically, so a crash can never leave a
model from round 5 beside a history from round 4. `allow_pickle=False` on load:
a checkpoint is data, never code.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aidmp.atomic import atomic_write_bytes
from aidmp.errors import AidmpError

CHECKPOINT_NAME = "checkpoint.npz"
FORMAT_VERSION = 1
# Run-config keys whose change makes a checkpoint meaningless to resume.
RESUME_MUST_MATCH = ("task", "strategy", "partition", "seed", "he")
# What a key means when a checkpoint from before that key existed lacks it.
_ABSENT_MEANS = {"he": False}


@dataclass
class Checkpoint:
    round: int
    model: dict[str, np.ndarray]
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    meta = {**ckpt.meta, "round": ckpt.round, "format": FORMAT_VERSION}
    # Any: numpy's stub reads **arrays as possibly holding savez's `allow_pickle`; these
    # keys (model/..., strategy/..., meta) never do.
    arrays: dict[str, Any] = {f"model/{k}": v for k, v in ckpt.model.items()}
    arrays |= {f"strategy/{k}": v for k, v in ckpt.strategy_state.items()}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def set_aside(path: Path) -> Path:
    """Rename a checkpoint that a new job would replace to checkpoint.<UTC time>.npz."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    kept = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    path.rename(kept)
    return kept


def load_checkpoint(path: Path) -> Checkpoint:
    if not path.is_file():
        raise AidmpError(f"no checkpoint at {path}; run without resume to start a new run")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            model = {k[6:]: data[k] for k in data.files if k.startswith("model/")}
            state = {k[9:]: data[k] for k in data.files if k.startswith("strategy/")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise AidmpError(
            f"checkpoint {path} is unreadable ({exc.__class__.__name__}: {exc}); "
            "restore it from a backup, or run without resume to start over"
        ) from None
    if meta.get("format") != FORMAT_VERSION:
        raise AidmpError(
            f"checkpoint {path} has format {meta.get('format')}, this aidmp reads "
            f"{FORMAT_VERSION}; resume it with the aidmp version that wrote it"
        )
    return Checkpoint(round=int(meta["round"]), model=model, strategy_state=state, meta=meta)


def check_resumable(ckpt: Checkpoint, path: Path, run_config: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint under a config that would change its meaning."""
    saved = ckpt.meta.get("run_config", {})
    for key in RESUME_MUST_MATCH:
        was = saved.get(key, _ABSENT_MEANS.get(key))
        if was != run_config[key]:
            raise AidmpError(
                f"cannot resume {path}: it was run with {key}={was!r}, "
                f"this run asks for {key}={run_config[key]!r}; "
                f"use the same {key} or start a new run"
            )
