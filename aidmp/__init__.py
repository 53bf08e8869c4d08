"""aidmp: federated learning and privacy-preserving analytics for institutions.

Installed, the project is this one package: `aidmp.server`, `aidmp.client`,
`aidmp.strategies`, `aidmp.privacy`, `aidmp.governance`, `aidmp.tasks` and
`aidmp.simulations` are its subpackages. In the checkout those rooms are top-level
folders (the project card's layout), linked into this folder (`aidmp/server ->
../server`), so a checkout, an editable install, the wheel, mypy and import-linter all
see one layout. Every import uses the `aidmp.` names, so no module is ever loaded under
two names (`make lint` bans the bare ones).

This package itself holds what every room shares (errors, atomic file writes, the run
configuration) and the `aidmp` command line.
"""

import os as _os

# A Flower App bundle (`flwr run .`, a SuperNode's app folder) skips symbolic links, so
# there the rooms are only siblings of this folder: look for them there too. This is the
# first statement on purpose: Python lets another thread import `aidmp.client` while this
# module is still running (it does not wait for a parent package to finish), and that
# thread sees `__path__` as it is at that moment.
_here = _os.path.dirname(_os.path.realpath(__file__))
if not _os.path.isdir(_os.path.join(_here, "server")) and _os.path.isfile(
    _os.path.join(_here, _os.pardir, "server", "__init__.py")
):
    __path__.append(_os.path.dirname(_here))  # noqa: F821 (a package's __path__ is a module global)

__version__ = "0.1.0"

# The rooms of the project, subpackages of aidmp.
SUBPACKAGES = (
    "server",
    "client",
    "strategies",
    "privacy",
    "governance",
    "tasks",
    "analytics",
    "simulations",
)
