"""`aidmp ...` run in the test's own process, with `aidmp simulate` on the in-process engine
(simulations/inprocess.py): the command line, the coordinator and every institution's
ClientApp are the real ones, without a Python start-up or Ray's for each call."""

from __future__ import annotations

import functools
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
    from aidmp.simulations import runner

    logger = logging.getLogger("aidmp")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers = []  # so that main() adds its handler on the stdout captured here
    simulate = runner.simulate
    runner.simulate = functools.partial(simulate, engine="inprocess")
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        runner.simulate = simulate
        logger.handlers, logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])
    return Result(code, out.getvalue(), err.getvalue())
