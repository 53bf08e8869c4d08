"""Flower's command-line tools, as both the coordinator and the nodes start them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from aidmp.errors import AidmpError

# Sites may have no internet: Flower must never try to install an app's dependencies.
OFFLINE_ENV = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def flower_tool(name: str) -> str:
    """A Flower executable installed beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise AidmpError(f"{name} not found; install aidmp's dependencies (flwr) first")
    return found


def flower_env() -> dict[str, str]:
    """The environment to run Flower's tools in: offline, and with their own folder first
    on PATH, because each starts the next by name (flower-superlink starts
    flower-superexec, which starts flwr-serverapp; a SuperNode starts flwr-clientapp), and
    `.venv/bin/aidmp` may be run without activating the environment."""
    tools = str(Path(flower_tool("flwr")).parent)
    return {**os.environ, **OFFLINE_ENV, "PATH": tools + os.pathsep + os.environ.get("PATH", "")}
