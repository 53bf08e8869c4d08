"""The apps Flower loads: pyproject's `[tool.flwr.app.components]` name
`aidmp.flower_app:server_app` and `aidmp.flower_app:client_app`.

Why not `aidmp.server.app:app` directly: Flower's simulation checks the ClientApp's
reference on one thread, outside its import lock, while it imports the ServerApp on
another. A reference into a room (`aidmp.client.app`) makes that check import
`aidmp.client`, which, in a Flower App bundle, is found only through the folder that
`aidmp/__init__.py` adds to `aidmp.__path__`; Python lets the check run while `aidmp` is
still half-initialised, and one `flwr run .` in three failed with "No module named
'aidmp.client'". This module is a file inside `aidmp/` itself, found without that
folder; the check reads `__all__` here, and the real imports happen under Flower's lock.
"""

from __future__ import annotations

__all__ = ["server_app", "client_app"]  # noqa: F822 (given by __getattr__, read by Flower)


def __getattr__(name: str) -> object:
    if name == "server_app":
        from aidmp.server.app import app as server_app

        return server_app
    if name == "client_app":
        from aidmp.client.app import app as client_app

        return client_app
    raise AttributeError(f"module 'aidmp.flower_app' has no attribute {name!r}")
