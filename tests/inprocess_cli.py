"""`aidmp ...` run in the test's own process: the real command line, without a Python
start-up per call. With `simulate --engine inprocess`, the coordinator and every
institution's ClientApp run here too (simulations/inprocess.py), without Ray."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass


@dataclass
class Result:
    """What `subprocess.run(..., capture_output=True, text=True)` would have returned."""

    returncode: int
    stdout: str
    stderr: str


def aidmp(*args: str) -> Result:
    from aidmp.cli import main

    logger = logging.getLogger("aidmp")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    logger.handlers = []  # so that main() adds its handler on the stdout captured here
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)
    return Result(code, out.getvalue(), err.getvalue())
