"""The global model at a site: decrypted from a coordinator's checkpoint with the site's
own key, and scored on the site's own governed rows (`aidmp model decrypt`, `aidmp model
evaluate`). Both run at the institution; nothing here leaves it.
"""

from __future__ import annotations

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
