"""A trained global model as a file a site keeps: `torch.load(FILE)` gives a dict with the
task's name, the round it is from, the job, and the model's `state_dict`.

`aidmp model decrypt` writes one from a coordinator's checkpoint (decrypting it under HE
with the site's own key); `aidmp model evaluate` scores one on the site's own governed
rows. Loaded with `weights_only=True`: the file holds tensors, strings and numbers only,
so loading one never runs code from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidmp.errors import AidmpError

FORMAT = "aidmp-model/1"


@dataclass(frozen=True)
class ModelFile:
    task: str
    round: int
    job_id: str
    state_dict: dict[str, Any]  # name -> torch.Tensor


def save_model(path: Path, model: ModelFile) -> None:
    """Write `model` atomically (a reader never sees half a file)."""
    import io

    import torch

    from aidmp.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(
        {"format": FORMAT, "task": model.task, "round": model.round, "job_id": model.job_id,
         "state_dict": model.state_dict},
        buffer,
    )  # fmt: skip
    atomic_write_bytes(path, buffer.getvalue())


def load_model(path: Path) -> ModelFile:
    """The model in `path`, or an error that says what the file is not."""
    import pickle

    import torch

    if not path.is_file():
        raise AidmpError(f"no model file at {path}; write one with `aidmp model decrypt`")
    try:
        content = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise AidmpError(f"{path} is not a model file aidmp wrote ({exc})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise AidmpError(f"{path} is not a model file aidmp wrote (no {FORMAT!r} header)")
    return ModelFile(
        task=str(content["task"]),
        round=int(content["round"]),
        job_id=str(content["job_id"]),
        state_dict=dict(content["state_dict"]),
    )
