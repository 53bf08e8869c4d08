"""A deployed node's Flower runtime, pinned to the aidmp installed at the node.

Flower's SuperNode starts `flower-superexec` by name, and the SuperExec starts a process
for each task by name: `flwr-clientapp` for a ClientApp, and `flwr-agentapp`,
`flwr-serverapp`, ... for the other kinds a run may declare. Each loads the component its
run's App bundle (FAB) names, with the bundle's folder first on `sys.path`: the
coordinator's bundle would choose the code that runs next to the data. A node whose
privacy settings nothing from the coordinator may loosen cannot run code the coordinator
sends. So `aidmp node start` runs the SuperNode with a PATH on which Flower's own task
programs are absent and these are found instead (`runtime_folder`):

- `flower-superexec`: Flower's, accepting ClientApp tasks only;
- `flwr-clientapp`: Flower's, except that it checks the bundle before Flower unpacks it
  (a `pyproject.toml` and nothing else, naming aidmp's ClientApp, with plain names: no
  path in a name or version), never installs a bundle's dependencies, and loads this
  installation's ClientApp, imported before any bundle is unpacked and never with the
  bundle's folder on `sys.path`;
- every other task program: a stub that refuses.

A run that breaks these rules gets the node's error; nothing of it runs.
"""

from __future__ import annotations

import io
import logging
import re
import shlex
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLIENT_APP_REF = "aidmp.flower_app:client_app"  # what `aidmp run`'s bundle names
# The programs Flower's SuperExec starts by name (flwr.supercore.constant.TASK_TYPE_TO_COMMAND)
# and the SuperExec itself, which the SuperNode starts by name.
CLIENT_APP_PROGRAM = "flwr-clientapp"
SUPEREXEC_PROGRAM = "flower-superexec"
REFUSED_PROGRAMS = (
    "flwr-agentapp", "flwr-connector", "flwr-model", "flwr-serverapp", "flwr-simulation",
)  # fmt: skip
REFUSED_EXIT = 3
MAX_BUNDLE_BYTES = 1 << 20
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a name or version, never a path

_log = logging.getLogger("aidmp.client")


class BundleRefused(Exception):
    """A run's App bundle that this node will not unpack or run."""


def check_bundle(fab: bytes) -> dict[str, Any]:
    """The bundle's pyproject.toml, if the bundle is what `aidmp run` sends: settings only,
    aidmp's ClientApp, plain names. Raises BundleRefused, naming what is wrong."""
    import tomllib

    try:
        archive = zipfile.ZipFile(io.BytesIO(fab))
        # Sizes as declared (a read never goes past them): a small bundle must not unpack
        # into gigabytes. Settings take a few kilobytes.
        unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > MAX_BUNDLE_BYTES:
            raise BundleRefused(
                f"the run's App bundle unpacks to {unpacked:,} bytes; a bundle of settings "
                f"takes at most {MAX_BUNDLE_BYTES:,}"
            )
        extra = sorted(
            n for n in archive.namelist()
            if n != "pyproject.toml" and not (n.startswith(".info/") and ".." not in n)
        )  # fmt: skip
        if extra:
            raise BundleRefused(
                f"the run's App bundle carries files ({', '.join(extra[:5])}); this node runs "
                "only the aidmp installed here and takes a bundle of settings (pyproject.toml) "
                "only. Submit jobs with `aidmp run`"
            )
        config = tomllib.loads(archive.read("pyproject.toml").decode())
        app = config["tool"]["flwr"]["app"]
        named = [config["project"]["name"], config["project"]["version"], app["publisher"]]
        clientapp = app["components"]["clientapp"]
    except BundleRefused:
        raise
    except Exception as exc:  # not a zip, no pyproject.toml, not TOML, keys missing
        raise BundleRefused(
            f"the run's App bundle is not one `aidmp run` sends ({type(exc).__name__})"
        ) from None
    for value in named:
        if not isinstance(value, str) or not _PLAIN.fullmatch(value) or ".." in value:
            raise BundleRefused(f"the run's App bundle names itself {str(value)[:60]!r}")
    if clientapp != CLIENT_APP_REF:
        raise BundleRefused(
            f"this node runs only its installed {CLIENT_APP_REF}; the run's App bundle "
            f"names {str(clientapp)[:80]!r}"
        )
    return config


def pinned_loader(*_args: Any, **_kwargs: Any) -> Callable[[str, str, str], Any]:
    """Stands in for Flower's `get_load_client_app_fn`: the loader it returns gives this
    installation's ClientApp, whatever the unpacked bundle holds."""
    import aidmp
    from aidmp.client.app import app  # this installation's, whatever the bundle holds

    def _load(fab_id: str, fab_version: str, fab_hash: str) -> Any:
        # The bundle was checked before Flower unpacked it (`_checked_install`): it names
        # aidmp's ClientApp. Nothing of it is imported either way.
        if fab_version != aidmp.__version__:
            _log.warning(
                "the run was submitted with aidmp %s; this node runs aidmp %s",
                fab_version, aidmp.__version__,
            )  # fmt: skip
        return app  # what aidmp.flower_app:client_app names

    return _load


def _checked_install(install: Callable[..., Path]) -> Callable[..., Path]:
    """Flower's `install_from_fab`, after `check_bundle`: nothing is written for a bundle
    this node refuses (a name like `1/../../x` would place files outside FLWR_HOME)."""

    def _install(fab_file: Path | bytes, *args: Any, **kwargs: Any) -> Path:
        content = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
        check_bundle(content)
        return install(fab_file, *args, **kwargs)

    return _install


def _never_install_dependencies(*_args: Any, **_kwargs: Any) -> Any:
    raise BundleRefused("this node never installs an App bundle's dependencies")


def clientapp_main() -> None:
    """`flwr-clientapp`, pinned."""
    # Imported before Flower unpacks any bundle: `aidmp` is this installation's from here on.
    import flwr.supernode.runtime.run_clientapp as runtime

    import aidmp.client.app  # noqa: F401

    runtime.get_load_client_app_fn = pinned_loader
    runtime.install_from_fab = _checked_install(runtime.install_from_fab)
    runtime.install_app_dependencies = _never_install_dependencies
    from flwr.supernode.cli import flwr_clientapp

    sys.argv = [CLIENT_APP_PROGRAM] + [
        a for a in sys.argv[2:] if a != "--allow-runtime-dependency-installation"
    ]  # Flower names its exit event by the program's name
    flwr_clientapp()


def superexec_main() -> None:
    """`flower-superexec`, accepting ClientApp tasks only."""
    from flwr.supercore.cli import flower_superexec
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.plugin import AutoExecPlugin

    AutoExecPlugin.supported_task_types = frozenset({TaskType.CLIENT_APP})
    sys.argv = [SUPEREXEC_PROGRAM] + [
        a for a in sys.argv[2:] if a != "--allow-runtime-dependency-installation"
    ]
    flower_superexec()


def runtime_folder(folder: Path) -> Path:
    """Write the node's Flower programs into `folder` (emptied first): this module for
    `flower-superexec` and `flwr-clientapp`, a refusing stub for each other task program.
    Returns `folder`, to go first on the SuperNode's PATH."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    python = shlex.quote(sys.executable)
    # -P: the working folder is not put on sys.path either.
    programs = {
        CLIENT_APP_PROGRAM: f'exec {python} -P -m {__name__} clientapp "$@"',
        SUPEREXEC_PROGRAM: f'exec {python} -P -m {__name__} superexec "$@"',
    } | {
        name: f'echo "aidmp node: refused a {name} task: this node runs the aidmp ClientApp '
        f'only" >&2; exit {REFUSED_EXIT}'
        for name in REFUSED_PROGRAMS
    }
    for name, body in programs.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def runtime_path(folder: Path, path: str) -> str:
    """A PATH with `folder` first and without any folder that holds one of Flower's own
    runtime programs: should one of ours not run (a folder mounted noexec), the node
    fails instead of falling back to Flower's."""
    import os

    ours = {CLIENT_APP_PROGRAM, SUPEREXEC_PROGRAM, *REFUSED_PROGRAMS}
    kept = [
        d for d in path.split(os.pathsep)
        if d and not any((Path(d) / name).exists() for name in ours)
    ]  # fmt: skip
    return os.pathsep.join([str(folder), *kept])


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind == "clientapp":
        clientapp_main()
    elif kind == "superexec":
        superexec_main()
    else:
        sys.exit(f"usage: python -m {__name__} clientapp|superexec [Flower's arguments]")


if __name__ == "__main__":
    main()
