"""What a node's own config (Flower's node config) says about the node.

Shared by the rooms that decide on a node's behalf (client/, privacy/): the node decides
(DESIGN.md, "Parties and trust"), and which node is "deployed" must be read one way.
"""

from __future__ import annotations

from collections.abc import Mapping


def has_own_data(node_config: Mapping[str, object]) -> bool:
    """A node with its own data file (`aidmp node start --data`), as opposed to one that
    serves a simulated split the researcher made. Every privacy setting of such a node
    (DP, its ledger folder, its CKKS key, HE required, its governance policy) comes from
    its own config, never from the coordinator's run config; so do the seeds the
    coordinator must not know (its DP noise and its train/validation split)."""
    return "data" in node_config


def truthy(value: object) -> bool:
    """A node config flag as Flower passes it: a bool, or a string such as "true"."""
    return value is True or str(value).lower() in ("true", "1", "yes")


def he_required(node_config: Mapping[str, object]) -> bool:
    """Whether this node refuses plaintext rounds and queries: its own `he-required`,
    which for a node with its own data and a CKKS key of its own defaults to true (the
    node decides; a run config saying he=false cannot make it send in plaintext)."""
    if "he-required" in node_config:
        return truthy(node_config["he-required"])
    return has_own_data(node_config) and bool(node_config.get("he-keys"))
