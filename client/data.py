"""Where a node's data comes from, loaded once per process and kept.

Flower may call the ClientApp many times in one process (a Ray actor in
simulation, a long-lived process in deployment); loading and partitioning per
message would repeat seconds of work every round.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import UserConfigValue

from aidmp.errors import AidmpError
from aidmp.node_config import has_own_data
from aidmp.round_config import RoundConfig
from aidmp.tasks import load_dataset
from aidmp.tasks.data import LocalData
from aidmp.tasks.partition import institution_data


# Enough for every virtual institution one process serves: Flower's Ray engine runs a
# few actors (one per CPU), each serving hundreds of institutions at 1,000.
@functools.lru_cache(maxsize=2048)
def simulated_institution(
    task: str, partition: str, seed: int, num_institutions: int, index: int
) -> LocalData:
    return institution_data(load_dataset(task), num_institutions, partition, seed, index)


def local_data(node_config: Mapping[str, UserConfigValue], config: RoundConfig) -> LocalData:
    """This node's data for the round's task.

    A simulated institution is named by Flower's node config (`partition-id`,
    `num-partitions`); the split itself comes from the round config, so every node
    of a run splits the same way.
    """
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise AidmpError(
            "this node has no data configured; start it with "
            '--node-config "partition-id=0 num-partitions=N" to serve a simulated split'
        )
    return simulated_institution(
        config.task,
        config.partition,
        config.seed,
        int(node_config["num-partitions"]),
        int(node_config["partition-id"]),
    )


@functools.lru_cache(maxsize=2048)
def _fingerprint(task: str, data: LocalData) -> str:
    digest = hashlib.sha256(task.encode())
    for part in (data.x_train, data.y_train):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()


def dataset_id(task: str, data: LocalData) -> str:
    """A fingerprint of `data`'s training rows: a simulated institution's ledger key
    (`ledger_key`), and what every ledger was keyed to before it was keyed to its source."""
    return _fingerprint(task, data)


def ledger_key(node_config: Mapping[str, UserConfigValue], config: RoundConfig) -> str:
    """The key of this node's privacy ledger: its data source, the population it protects.

    The node config's own `dataset-id` if it names one (`aidmp node start --dataset-id`).
    Else, for a node with its own data, the data file's resolved path and the task. Not a
    hash of the file's content, nor of the rows governance lets through (the key before
    this one): a policy edit or a row added to the file changes those, and a new key
    opened a new ledger, a fresh budget for the same people. The file is where those
    people's rows come from; a node whose file moves names its `dataset-id`. For a
    simulated institution, its split of the task's rows before governance (task,
    partition, seed and index are its population): the fingerprint of those rows, as
    simulated ledgers have been keyed, so existing simulation folders keep their ledgers.
    """
    if "dataset-id" in node_config:
        return str(node_config["dataset-id"])
    if has_own_data(node_config):
        source = f"{config.task}\0{Path(str(node_config['data'])).resolve()}"
        return "source:" + hashlib.sha256(source.encode()).hexdigest()
    return dataset_id(config.task, local_data(node_config, config))


def node_state_dir(context: Any, state_root: str) -> Path | None:
    """Where this node keeps its ledger, audit log and reports: its own `state-dir`, or
    in simulation the run's `state-root`/<institution> (the round config's `state_root`)."""
    if "state-dir" in context.node_config:
        return Path(str(context.node_config["state-dir"]))
    if state_root and not has_own_data(context.node_config):  # the node decides
        name = institution_name(context.node_config, context.node_id)
        return Path(state_root) / name
    return None


def institution_name(node_config: Mapping[str, object], node_id: int) -> str:
    """How reports name this node: its own `name`, its simulated index, or its node id."""
    if "name" in node_config:
        return str(node_config["name"])
    if "partition-id" in node_config:
        return f"institution-{node_config['partition-id']}"
    return f"node-{node_id}"
