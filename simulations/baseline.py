"""The centralized baseline: the same model trained on the pooled training data.

It shows the price of federation: what the institutions would reach if they could
put their rows in one place. It trains for as many epochs as one institution does
over the whole run (rounds x local epochs), with the same batch size and rate.
"""

from __future__ import annotations

import time

import torch

from aidmp.config import RunConfig
from aidmp.tasks import get_task, load_dataset


def centralized_baseline(cfg: RunConfig) -> dict[str, float]:
    task = get_task(cfg.task)
    data = load_dataset(cfg.task)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    started = time.monotonic()
    task.train(
        model,
        data.x_train,
        data.y_train,
        epochs=cfg.num_rounds * cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=cfg.seed,
    )
    loss, accuracy = task.evaluate(model, data.x_test, data.y_test)
    return {
        "accuracy": accuracy,
        "loss": loss,
        "epochs": cfg.num_rounds * cfg.local_epochs,
        "wall_seconds": time.monotonic() - started,
    }
