"""The researcher's comparison commands: `sweep` (a grid of simulations, resumable) and
`report` (one self-contained report.html for a run or a sweep).

Heavy imports (torch, Flower, pandas, matplotlib) stay inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aidmp.errors import AidmpError


def add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="researcher: a grid of simulations over any `simulate` option, resumable",
        description="Run `aidmp simulate` for every point of SWEEP.yaml's grid and every "
        "seed, each in OUT/runs/<id>/, then write OUT/results.csv and OUT/results.parquet. "
        "A run that finished is never run again: re-running the command resumes the sweep. "
        "A failed run is recorded (OUT/runs/<id>/error.json) and the others go on.",
    )
    p.add_argument("sweep_file", metavar="SWEEP.yaml", help="base:, grid: and seeds:")
    p.add_argument("--out", required=True, help="the sweep's folder")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once (default 1: one after another in this process; N > 1: N "
        "`aidmp simulate` processes at once)",
    )
    p.add_argument(
        "--engine",
        choices=("ray", "inprocess"),
        default="ray",
        help="each run's engine, as `aidmp simulate --engine`",
    )
    p.set_defaults(handler=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from aidmp.simulations.sweep_spec import RunSpec, load_sweep

    sweep = load_sweep(Path(args.sweep_file))  # every mistake, with its line, before a run
    out = Path(args.out)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from aidmp.simulations.sweep import is_done, run_folder, run_sweep
    from aidmp.simulations.sweep_results import read_sweep, write_results

    # The bar writes to the terminal's stderr as it is now: an in-process run redirects
    # sys.stdout and sys.stderr into its own log.txt while it runs.
    console = Console(file=sys.stderr)
    progress = Progress(
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    task = progress.add_task("runs", total=None)

    done = sum(is_done(run_folder(out, run)) for run in sweep.runs)
    print(f"sweep: {len(sweep.runs)} run(s); {done} already done, {len(sweep.runs) - done} to run")

    def on_start(todo: int) -> None:
        progress.update(task, total=todo)

    def on_done(run: RunSpec, error: str | None) -> None:
        progress.advance(task)
        if error:
            progress.console.print(f"run {run.id} failed: {error}")

    with progress:
        outcome = run_sweep(
            sweep, out, engine=args.engine, jobs=args.jobs, on_start=on_start, on_done=on_done
        )
    meta, records = read_sweep(out)
    from aidmp.simulations.sweep_results import option_keys

    paths = write_results(out, option_keys(meta), records)
    print(
        f"sweep: ran {outcome.ran} run(s) ({len(outcome.failed)} failed), "
        f"{outcome.already_done} already done; wrote {paths[0]} and {paths[1]}"
    )
    for run_id in outcome.failed:
        print(f"  failed: {out / 'runs' / run_id} (see error.json, log.txt)")
    print(f"report: aidmp report {out}")
    return 1 if outcome.failed else 0


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="researcher: one self-contained report.html for a run or a sweep folder",
        description="Write DIR/report.html: one file with its images inside, which opens "
        "on a machine without a network. A run folder (`aidmp simulate --out`) gets its "
        "rounds, privacy spend, declines, governance and HE bytes; a sweep folder "
        "(`aidmp sweep --out`) gets the privacy-utility curve, a sortable results table "
        "and every run.",
    )
    p.add_argument("folder", metavar="DIR", help="a run folder or a sweep folder")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise AidmpError(f"no folder {folder}: give the --out of `aidmp simulate` or `sweep`")
    from aidmp.simulations.html_report import write_report

    path = write_report(folder)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, self-contained)")
    return 0
