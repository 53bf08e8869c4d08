"""The global model at a site: decrypted from a coordinator's checkpoint with the site's
own key, and scored on the site's own governed rows (`aidmp model decrypt`, `aidmp model
evaluate`). Both run at the institution; nothing here leaves it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aidmp.errors import AidmpError
from aidmp.tasks.model_file import ModelFile


def model_from_checkpoint(
    arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], rnd: int, keys: Path | None
) -> ModelFile:
    """The checkpoint's global model as a `ModelFile`: decrypted with `keys` (the site's
    institution.ckks) when the run was encrypted, read as it is otherwise."""
    import torch

    from aidmp.tasks import get_task

    run_config = meta.get("run_config", {})
    task = get_task(str(run_config.get("task", "")))
    template = task.build_model().state_dict()
    if run_config.get("he"):
        from aidmp.privacy.he.keys import load_context
        from aidmp.privacy.he.state import EncryptedGlobal, unflatten_state

        if keys is None:
            raise AidmpError(
                "this checkpoint's model is encrypted (he=true); give --keys with this "
                "site's institution.ckks, the key the job's sites hold"
            )
        params, _ = EncryptedGlobal.from_arrays(arrays).decrypt(load_context(keys, "institution"))
        state = unflatten_state(params, template)
    else:
        missing = sorted(set(template) - set(arrays))
        if missing:
            raise AidmpError(f"the checkpoint has no {missing[0]!r}: not a {task.name} model")
        state = {k: torch.from_numpy(np.array(arrays[k])).to(v.dtype) for k, v in template.items()}
    return ModelFile(task.name, rnd, str(meta.get("job_id", "")), state)


def evaluate_on_own_rows(model: ModelFile, data: Path, policy_file: Path) -> dict[str, float]:
    """Loss and accuracy of `model` on every row of `data` that the site's governance
    admits (the same pipeline a round runs), with the majority class's share beside them:
    a model worth keeping beats it."""
    from aidmp.governance.load import load_table
    from aidmp.governance.pipeline import govern, site_secret
    from aidmp.governance.policy import load_policy
    from aidmp.tasks import get_task

    task = get_task(model.task)
    if task.encode is None:
        raise AidmpError(f"task '{task.name}' has no tabular schema to read {data} with")
    policy, _ = load_policy(policy_file)
    result = govern(load_table(data, encoding=policy.encoding, delimiter=policy.delimiter),
                    policy, site_secret(policy))  # fmt: skip
    if not result.admitted:
        raise AidmpError(
            f"governance declines {data}: {'; '.join(result.local_reasons)}; "
            f"`aidmp govern check {data} --policy {policy_file}` shows the whole check"
        )
    x, y = task.encode(result.frame)
    net = task.build_model()
    try:
        net.load_state_dict(model.state_dict)
    except RuntimeError as exc:
        raise AidmpError(f"the model file does not fit task '{task.name}' ({exc})") from None
    loss, accuracy = task.evaluate(net, x, y)
    majority = float(np.bincount(y).max() / len(y)) if len(y) else 0.0
    return {"rows": len(y), "loss": loss, "accuracy": accuracy, "majority_rate": majority}


MODEL_PREFIX = "model-"


def kept_model_path(state_dir: Path, job_id: str) -> Path:
    """Where a site keeps a job's final model: its state folder, `model-<job>.pt`."""
    return state_dir / f"{MODEL_PREFIX}{job_id}.pt"


def receive_final_model(msg: Any, context: Any) -> Any:
    """The end of a deployed job: the coordinator's final global model (ciphertext under
    HE), decrypted with this site's own key and kept in its state folder as a file that
    `torch.load` reads. A simulated institution keeps nothing (its researcher holds the
    checkpoint). The reply says only whether the model was kept."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from aidmp.client.data import institution_name, node_state_dir
    from aidmp.errors import RoundConfigError
    from aidmp.node_config import has_own_data
    from aidmp.privacy.he.state import WIRE_KEY
    from aidmp.round_config import RECORD_NAME, RoundConfig
    from aidmp.tasks import get_task
    from aidmp.tasks.model_file import save_model

    config = RoundConfig.from_record(msg.content.config_records.get(RECORD_NAME))
    name = institution_name(context.node_config, context.node_id)
    state_dir = node_state_dir(context, config.state_root)
    kept = False
    if has_own_data(context.node_config) and state_dir is not None:
        model = get_task(config.task).build_model()
        if WIRE_KEY in msg.content.config_records:
            from aidmp.privacy.he.node import HeRound

            HeRound.open(msg.content.config_records[WIRE_KEY], context.node_config,
                         config).load_into(model)  # fmt: skip
        else:
            arrays = msg.content.array_records.get("arrays")
            if arrays is None:
                raise RoundConfigError("the final model arrived without its arrays")
            model.load_state_dict(arrays.to_torch_state_dict())
        path = kept_model_path(state_dir, config.job_id)
        save_model(path, ModelFile(config.task, config.server_round, config.job_id,
                                   model.state_dict()))  # fmt: skip
        logging.getLogger("aidmp.site").info(
            "[%s] job %s: the final model (round %d) is kept at %s",
            name, config.job_id, config.server_round, path,
        )  # fmt: skip
        kept = True
    node = ConfigRecord({"institution": name, "model-kept": kept})
    return Message(RecordDict({"node": node}), reply_to=msg)
