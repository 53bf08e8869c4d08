"""A node's data after local governance, run before every round and cached.

The policy is the node's own (`--node-config "policy='/etc/aidmp/policy.yaml'"`);
only in simulation does the run config's `governance-policy` stand in for every
node. The data is the node's own file (`data='/srv/data/rows.csv'`), or in
simulation its partition of the task's raw rows with the run's scenario applied.

The pipeline's result is cached by a fingerprint of the data (its file's size and
modification time, or the simulated split) and the policy's SHA-256: unchanged
data is not scanned again. The full report is written to the node's state folder
when the data is scanned (the latest, and one per job and round it was scanned for);
a declined node raises GovernanceError (code 105) with reasons that carry no values
and no small counts.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from flwr.app import UserConfigValue

from aidmp.governance.load import load_table
from aidmp.governance.pipeline import govern, site_secret
from aidmp.governance.policy import GovernanceError, Policy, load_policy
from aidmp.governance.report import coordinator_summary, local_report, write_reports
from aidmp.governance.scenarios import apply_scenario, parse_scenario
from aidmp.node_config import has_own_data
from aidmp.round_config import RoundConfig
from aidmp.tasks import get_task, load_dataset
from aidmp.tasks.data import LocalData
from aidmp.tasks.partition import local_split, partition_indices

# Results kept per process: a deployed node needs one; a Ray actor in a simulation serves
# hundreds of virtual institutions (governed rows are small: an institution's share).
CACHE_SIZE = 2048


@dataclass(frozen=True)
class Governed:
    """What governance let this node train on, and what it may tell the coordinator."""

    data: LocalData
    summary: dict[str, Any]
    policy_sha256: str
    admitted: bool
    reasons: tuple[str, ...]
    # The governed rows themselves (cleaned, columns as the policy names them) and the
    # policy: what analytics (client/analytics_handler.py) computes its statistics on.
    frame: pd.DataFrame | None = None
    policy: Policy | None = None


_log = logging.getLogger("aidmp.client")
_cache: OrderedDict[tuple[Any, ...], Governed] = OrderedDict()


def policy_path(node_config: Mapping[str, UserConfigValue], run_policy: str) -> str | None:
    """The node's own `policy`; only in simulation the run's (the round config's
    `governance_policy`) where the node names none. None: governance is off."""
    own = node_config.get("policy")
    if own:
        return str(own)
    return None if has_own_data(node_config) else run_policy or None


def governed_data(
    node_config: Mapping[str, UserConfigValue],
    config: RoundConfig,
    state_dir: Path | None,
) -> Governed | None:
    """This node's governed data, or None when it has no policy (governance off)."""
    path = policy_path(node_config, config.governance_policy)
    if path is None:
        return None
    policy, sha = load_policy(Path(path))
    task = get_task(config.task)
    if task.raw_train is None or task.encode is None:
        raise GovernanceError(
            f"task '{task.name}' has no tabular schema for governance to check; "
            "run it without a policy, or choose a tabular task such as adult",
            code="task-mismatch",
        )
    key, load = _source(node_config, config, policy)
    # The local train/validation split. A node with its own data splits by its own seed
    # (node config `split-seed`), never the coordinator's: the split decides which rows
    # train, and so the dataset its privacy ledger is keyed to, whatever job asks.
    own_data = has_own_data(node_config)
    split_seed = int(node_config.get("split-seed", 0)) if own_data else config.seed
    # Whatever changes the result is in the key: the rows, the policy, the task and split
    # seed, and the site secret (the hashes), as a digest.
    secret = site_secret(policy) or b""
    cache_key = (key, sha, task.name, split_seed, hashlib.sha256(secret).hexdigest())
    if cache_key in _cache:
        _cache.move_to_end(cache_key)
        governed = _cache[cache_key]
    else:
        made_for = (config.job_id, config.server_round)
        governed = _run(load, key, policy, sha, task, split_seed, state_dir, made_for)
        _cache[cache_key] = governed
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    if not governed.admitted:
        reasons = "governance: " + "; ".join(governed.reasons)  # built to be sent (pipeline.py)
        raise GovernanceError(reasons, code="declined", public=reasons)
    return governed


def _source(
    node_config: Mapping[str, UserConfigValue], config: RoundConfig, policy: Policy
) -> tuple[tuple[Any, ...], Any]:
    """A fingerprint of where the rows come from, and how to load them."""
    if has_own_data(node_config):
        path = Path(str(node_config["data"]))
        if not path.is_file():
            raise GovernanceError(
                f"no data file at {path}; check the node's `data` setting", code="data-unreadable"
            )
        stat = path.stat()
        key: tuple[Any, ...] = ("file", str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        return key, lambda: load_table(path, encoding=policy.encoding, delimiter=policy.delimiter)
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise GovernanceError(
            "this node has a policy but no data; start it with "
            "--node-config \"data='/path/rows.csv' policy='/path/policy.yaml'\"",
            code="data-unreadable",
        )
    index, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
    task, partition, seed = config.task, config.partition, config.seed
    scenario = config.governance_scenario
    key = ("simulated", task, partition, seed, n, index, scenario)

    def load() -> pd.DataFrame:
        rows = partition_indices(load_dataset(task).y_train, n, partition, seed)[index]
        raw_train = get_task(task).raw_train
        assert raw_train is not None  # governed_data declines a task without raw rows
        raw = raw_train().iloc[rows].reset_index(drop=True)
        return apply_scenario(raw, parse_scenario(scenario), index, seed)

    return key, load


def _run(
    load: Any, key: tuple[Any, ...], policy: Policy, sha: str, task: Any, seed: int,
    state_dir: Path | None, made_for: tuple[str, int],
) -> Governed:  # fmt: skip
    frame = load()
    try:
        result = govern(frame, policy, site_secret(policy))
    except GovernanceError:
        raise
    except Exception as exc:  # a bug or an unforeseen shape of data: decline, never crash
        _log.exception("governance failed on %s", key)
        raise GovernanceError(
            f"governance could not run on this data ({type(exc).__name__}; details in the "
            "node's log); run `aidmp govern check DATA --policy P` locally to see where"
        ) from None
    if state_dir is not None:  # the full report stays here, at the institution
        source = key[1] if key[0] == "file" else f"simulated split {key[1:]}"
        report = local_report(result, policy, sha, str(source), *made_for)
        write_reports(report, state_dir)
    summary = coordinator_summary(result, policy, sha)
    if not result.admitted:
        empty = LocalData(*(pd.DataFrame().to_numpy(),) * 4)
        return Governed(empty, summary, sha, False, tuple(result.reasons), policy=policy)
    try:
        x, y = task.encode(result.frame)
    except Exception as exc:  # the policy admitted values the task cannot use
        _log.exception("encoding the governed frame failed")
        raise GovernanceError(
            f"the governed data does not fit task '{task.name}' ({type(exc).__name__}); "
            "tighten the policy's types and categories to the task's schema",
            code="task-mismatch",
        ) from None
    # A stable per-source seed (Python's hash() differs between processes).
    offset = int(hashlib.sha256(repr(key).encode()).hexdigest()[:6], 16)
    train, val = local_split(len(y), seed=seed + offset)
    data = LocalData(x[train], y[train], x[val], y[val])
    return Governed(data, summary, sha, True, (), frame=result.frame, policy=policy)
