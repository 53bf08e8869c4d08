"""A deployed node's ClientApp process, pinned to the aidmp installed at the node.

Flower's `flwr-clientapp` runs whatever ClientApp the run's App bundle (FAB) names, with
the bundle's folder first on `sys.path`: the coordinator's bundle would choose the code
that runs next to the data, its own `aidmp`, or its own `opacus`, or any module not yet
imported. A node whose privacy settings nothing from the coordinator may loosen cannot
run code the coordinator sends. So `aidmp node start` puts this module in
`flwr-clientapp`'s place (an executable of that name first on the SuperNode's PATH,
`pinned_clientapp_folder`): Flower's own process, except that the ClientApp is always
this installation's `aidmp.flower_app:client_app`, imported before any bundle is
unpacked and never with the bundle's folder on `sys.path`; a run whose bundle names
another ClientApp is refused (the coordinator sees the refusal as the node's error).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLIENT_APP_REF = "aidmp.flower_app:client_app"  # what `aidmp run`'s bundle names

_log = logging.getLogger("aidmp.client")


def pinned_loader(*_args: Any, **_kwargs: Any) -> Callable[[str, str, str], Any]:
    """Stands in for Flower's `get_load_client_app_fn`: the returned loader reads only
    the bundle's pyproject.toml (which ClientApp it names, and its version)."""
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.common.config import get_project_config, get_project_dir

    import aidmp
    from aidmp.client.app import app  # this installation's, whatever the bundle holds

    def _load(fab_id: str, fab_version: str, fab_hash: str) -> Any:
        config = get_project_config(get_project_dir(fab_id, fab_version, fab_hash))
        named = config["tool"]["flwr"]["app"]["components"]["clientapp"]
        if named != CLIENT_APP_REF:
            raise LoadClientAppError(
                f"this node runs only its installed {CLIENT_APP_REF}; the run's App bundle "
                f"({fab_id}) names {str(named)[:80]!r}. Submit jobs with `aidmp run`"
            )
        if fab_version != aidmp.__version__:
            _log.warning(
                "the run was submitted with aidmp %s; this node runs aidmp %s",
                fab_version, aidmp.__version__,
            )  # fmt: skip
        return app  # what aidmp.flower_app:client_app names

    return _load


def pinned_clientapp_folder(folder: Path) -> Path:
    """Write an executable `flwr-clientapp` into `folder` that runs this module with this
    Python; the SuperNode finds it first on its PATH. Returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "flwr-clientapp"
    # -P: the working folder is not put on sys.path either.
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -P -m {__name__} "$@"\n')
    script.chmod(0o755)
    return folder


def main() -> None:
    # Imported before Flower unpacks any bundle: `aidmp` is this installation's from here
    # on, whatever a bundle's folder holds.
    import flwr.supernode.runtime.run_clientapp as runtime

    import aidmp.client.app  # noqa: F401

    runtime.get_load_client_app_fn = pinned_loader
    from flwr.supernode.cli import flwr_clientapp

    sys.argv[0] = "flwr-clientapp"  # Flower names its exit event by the program's name
    flwr_clientapp()


if __name__ == "__main__":
    main()
