"""The Flower App that `aidmp run` submits: a pyproject.toml and no code.

Flower ships an App's folder (its FAB) to the SuperLink and to every SuperNode, and puts
that folder first on `sys.path` where the App runs. aidmp is already installed on both
sides, so the bundle carries only what Flower needs to start it: the names of the
components and the run config's defaults (RunConfig's, the same as pyproject.toml's).
The coordinator needs no checkout of the project (`aidmp run` works from any folder),
and the sites run the code they installed, never code the coordinator sent
(client/pinned_runtime.py holds them to it).
"""

from __future__ import annotations

import json
from pathlib import Path

import aidmp
from aidmp.config import RunConfig

APP_NAME = "aidmp"  # Flower takes an App's name from its folder's name as well
SERVER_APP_REF = "aidmp.flower_app:server_app"
CLIENT_APP_REF = "aidmp.flower_app:client_app"


def toml_value(value: object) -> str:
    """A run-config value as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A TOML basic string: JSON's escapes are TOML's, except that TOML has no surrogate
    # pairs (so non-ASCII stays as it is) and wants DEL escaped.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def write_app_bundle(parent: Path) -> Path:
    """Write the code-free App into `parent/aidmp/`; returns that folder."""
    folder = parent / APP_NAME
    folder.mkdir(parents=True, exist_ok=True)
    defaults = RunConfig().to_flower()
    lines = [
        "# Written by `aidmp run`: the App's code is the aidmp installed where it runs.",
        "[project]",
        f'name = "{APP_NAME}"',
        f'version = "{aidmp.__version__}"',
        'description = "aidmp federated training and analytics (code installed at each party)"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "aidmp"',
        "",
        "[tool.flwr.app.components]",
        f'serverapp = "{SERVER_APP_REF}"',
        f'clientapp = "{CLIENT_APP_REF}"',
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {toml_value(value)}" for key, value in defaults.items()),
    ]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return folder
