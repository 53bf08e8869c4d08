"""`aidmp sweep`: run every point of a sweep file, each in DIR/runs/<id>/, resumably.

A run is `aidmp simulate` itself, with the run's options on its command line: in this
process one after another (`jobs=1`, no start-up cost per run), or as N child processes
at once (`jobs=N`, each run isolated from the others). What a run leaves behind says
what state it is in:

    options.json  written before it starts (its options and command line)
    summary.json  written by `aidmp simulate` when it finished: the run is done, and is
                  never run again
    error.json    the error of a failed run (it is run again on the next call)
    log.txt       everything it printed

A run that is not done (never started, failed, or cut off) starts from an empty folder:
its institutions' ledgers from a half-finished attempt would otherwise carry that
attempt's spend into this one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from aidmp.atomic import atomic_write_json
from aidmp.errors import AidmpError
from aidmp.server.closing import SUMMARY_NAME
from aidmp.simulations.sweep_spec import RunSpec, Sweep, jsonable, simulate_argv

RUNS_DIR = "runs"
SWEEP_NAME = "sweep.json"
OPTIONS_NAME = "options.json"
ERROR_NAME = "error.json"
LOG_NAME = "log.txt"


@dataclass
class SweepOutcome:
    """What one call of `aidmp sweep` did."""

    total: int
    already_done: int
    ran: int
    failed: list[str]


def run_folder(out: Path, run: RunSpec) -> Path:
    return out / RUNS_DIR / run.id


def is_done(folder: Path) -> bool:
    return (folder / SUMMARY_NAME).is_file()


def run_sweep(
    sweep: Sweep,
    out: Path,
    *,
    engine: str = "ray",
    jobs: int = 1,
    on_start: Callable[[int], None] = lambda total: None,
    on_done: Callable[[RunSpec, str | None], None] = lambda run, error: None,
) -> SweepOutcome:
    """Run every run of `sweep` that is not done yet; a failed run does not stop the others.

    `on_start(n)` is told how many runs will execute, `on_done(run, error)` after each."""
    if jobs < 1:
        raise AidmpError(f"--jobs must be at least 1, not {jobs}")
    try:
        (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AidmpError(f"cannot write to --out {out} ({exc.strerror or exc})") from None
    atomic_write_json(
        out / SWEEP_NAME,
        {
            "sweep_file": str(sweep.path),
            "base": {k: jsonable(v) for k, v in sweep.file.base.items()},
            "grid": {k: [jsonable(v) for v in vs] for k, vs in sweep.grid.items()},
            "seeds": sweep.file.seeds,
            "engine": engine,
            "runs": [run.id for run in sweep.runs],
        },
    )
    todo = [run for run in sweep.runs if not is_done(run_folder(out, run))]
    outcome = SweepOutcome(len(sweep.runs), len(sweep.runs) - len(todo), 0, [])
    on_start(len(todo))

    def finish(run: RunSpec, error: str | None) -> None:
        outcome.ran += 1
        if error is not None:
            outcome.failed.append(run.id)
        on_done(run, error)

    if jobs == 1:
        for run in todo:
            finish(run, execute_run(run, out, engine, jobs=1))
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(execute_run, run, out, engine, jobs=jobs): run for run in todo}
            for future in as_completed(futures):
                finish(futures[future], future.result())
    return outcome


def execute_run(run: RunSpec, out: Path, engine: str, *, jobs: int) -> str | None:
    """Run one point from an empty folder; return its error (None: it finished)."""
    folder = run_folder(out, run)
    if folder.exists():
        shutil.rmtree(folder)  # a failed or cut-off attempt: its ledgers hold its spend
    folder.mkdir(parents=True)
    argv = simulate_argv(run, folder, engine)
    atomic_write_json(
        folder / OPTIONS_NAME,
        {
            "id": run.id,
            "options": {k: jsonable(v) for k, v in run.options.items()},
            "grid_point": {k: jsonable(v) for k, v in run.grid_point.items()},
            "command": ["aidmp", *argv],
        },
    )
    started = time.monotonic()
    if jobs == 1:
        error = _run_in_process(argv, folder / LOG_NAME)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        error = _run_as_process(argv, folder / LOG_NAME, threads)
    if error is None and not is_done(folder):
        error = f"the run ended without {SUMMARY_NAME}; see {folder / LOG_NAME}"
    if error is not None:
        atomic_write_json(
            folder / ERROR_NAME,
            {"error": error, "seconds": time.monotonic() - started, "log": str(LOG_NAME)},
        )
    return error


def _run_in_process(argv: list[str], log_path: Path) -> str | None:
    """`aidmp simulate ...` in this process, its output into log.txt as it goes."""
    from aidmp.cli import main

    logger = logging.getLogger("aidmp")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    logger.handlers = []  # main() adds its handler on the stdout redirected here
    error: str | None = None
    try:
        with log_path.open("w") as log, redirect_stdout(log), redirect_stderr(log):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
            except Exception as exc:  # a bug or a library failure: record it, go on
                traceback.print_exc()
                code, error = 1, f"{type(exc).__name__}: {exc}"
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)
    if code == 130:  # Ctrl-C reached the run (the CLI turned it into 130): stop the sweep
        raise KeyboardInterrupt
    if code != 0 and error is None:
        error = _error_line(log_path.read_text()) or f"aidmp simulate exited with {code}"
    return error


def _run_as_process(argv: list[str], log_path: Path, threads: int) -> str | None:
    """`aidmp simulate ...` as a child process (for --jobs N), its output into log.txt.

    Each child gets its share of the cores for torch's thread pools (unless the caller set
    OMP_NUM_THREADS): N runs each spinning up a pool of every core slow one another down
    many times over (the centralized baseline's thousands of small steps went from 2 s
    to 200 s with two runs on two cores)."""
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    with log_path.open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "aidmp.cli", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if proc.returncode == 0:
        return None
    if proc.returncode in (130, -2):  # Ctrl-C: the sweep stops too (the run is redone later)
        raise KeyboardInterrupt
    return _error_line(log_path.read_text()) or f"aidmp simulate exited with {proc.returncode}"


def _error_line(text: str) -> str | None:
    """The CLI's one-line error, or the last line of a traceback."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("aidmp: error:"):
            return line.removeprefix("aidmp: error:").strip()
    return lines[-1] if lines else None


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
