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
