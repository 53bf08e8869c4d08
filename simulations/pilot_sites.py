"""`aidmp pilot-data`: data files for a pilot deployment before any real data is wired in.

Each site gets its own share of a bundled dataset's real rows as a CSV, as an
institution's export would look (with a `consent` column), and a copy of the bundled
governance policy to review and edit. The shares are disjoint and drawn with a seed, so
a pilot can be repeated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aidmp.errors import AidmpError
from aidmp.simulations.runner import bundled_policy
from aidmp.tasks import get_task

DATA_NAME = "rows.csv"
POLICY_NAME = "policy.yaml"


def write_pilot_sites(
    out: Path, sites: int, *, task: str = "adult", rows: int | None = None, seed: int = 0
) -> list[Path]:
    """Write OUT/site-I/rows.csv and OUT/site-I/policy.yaml for I in 0..sites-1."""
    spec = get_task(task)
    if spec.raw_train is None:
        raise AidmpError(f"task '{task}' ships no raw rows to export; use --task adult")
    if sites < 1:
        raise AidmpError("--sites must be at least 1")
    folders = [out / f"site-{i}" for i in range(sites)]
    taken = [f for f in folders if f.exists()]
    if taken:
        raise AidmpError(f"{taken[0]} already exists; choose another --out or remove it")
    frame = spec.raw_train()
    order = np.random.default_rng(seed).permutation(len(frame))
    share = len(frame) // sites if rows is None else rows
    if share < 1 or share * sites > len(frame):
        raise AidmpError(
            f"{sites} sites of {share} rows need {share * sites}; '{task}' has {len(frame)}"
        )
    # The bundled policy's body, under a header that reads as the site's own policy.
    lines = bundled_policy(task).read_text().splitlines(keepends=True)
    body = "".join(lines[next(i for i, line in enumerate(lines) if not line.startswith("#")) :])
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True)
        part = frame.iloc[order[i * share : (i + 1) * share]].assign(consent="yes")
        part.to_csv(folder / DATA_NAME, index=False)
        header = (
            f"# Governance policy of {folder.name}: what its node checks and cleans in\n"
            f"# {DATA_NAME} before every round (`aidmp node start --policy`). A starting\n"
            "# point for a pilot: review every column, and draft your own from your data with\n"
            f"# `aidmp govern init`; `aidmp govern check {DATA_NAME} --policy {POLICY_NAME}`\n"
            "# shows what it decides.\n"
        )
        (folder / POLICY_NAME).write_text(header + body)
    return folders
