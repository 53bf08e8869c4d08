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

from pathlib import Path

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

# A Flower App bundle (`flwr run .`) skips symbolic links, so there the rooms are only
# siblings of this folder: look for them there too.
_here = Path(__file__).resolve().parent
if not (_here / "server").is_dir() and (_here.parent / "server" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 (a package's __path__ is a module global)
