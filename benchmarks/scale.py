"""Seconds per round and peak memory of `aidmp simulate` at 10, 100 and 1,000 institutions.

Each size runs `aidmp simulate` in a fresh process, as a researcher would, on Flower's
simulation engine (Ray) unless `--engine inprocess`. Memory is the peak, over the run,
of the summed resident memory of that process and every process under it (Ray's GCS,
raylet and actors), sampled every `--sample` seconds from /proc; a process that lives
shorter than a sample is missed. Seconds per round are the median of rounds 2 and later
(`elapsed_s` in summary.json): round 1 also pays for Ray's actors importing torch.

    python benchmarks/scale.py [--sizes 10,100,1000] [--rounds 3] [--task adult]
                               [--engine ray] [--no-dp] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    """Every live process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone since listdir
        # The command name (field 2) may hold spaces; the fields after its ')' do not.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants."""
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            continue
    return total


class PeakMemory:
    """Samples `tree_rss(pid)` on a thread until stopped; keeps the largest."""

    def __init__(self, pid: int, every: float) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_one(n: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    cmd = [
        sys.executable, "-c", "import sys; from aidmp.cli import main; sys.exit(main())",
        "simulate", "--task", args.task,
        "--institutions", str(n), "--rounds", str(args.rounds), "--partition", "iid",
        "--seed", "0", "--out", str(out), "--engine", args.engine,
        "--no-central-eval",
    ]  # fmt: skip
    if args.no_dp:
        cmd.append("--no-dp")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = PeakMemory(proc.pid, args.sample)
    output, _ = proc.communicate()
    peak = memory.stop()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{n} institutions: aidmp simulate failed:\n{output[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    per_round = [r["elapsed_s"] for r in summary["per_round"]]  # each round's own time
    later = per_round[1:] or per_round
    return {
        "institutions": n,
        "first_round_s": per_round[0],
        "round_s": statistics.median(later),
        "wall_s": wall,
        "peak_rss_mb": peak / 2**20,
        "train_replies": summary["per_round"][-1]["train_replies"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="comma-separated institutions")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--task", default="adult")
    parser.add_argument("--engine", choices=("ray", "inprocess"), default="ray")
    parser.add_argument("--no-dp", action="store_true", help="plaintext training")
    parser.add_argument("--sample", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--keep", type=Path, help="keep each run's folder under KEEP/N")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    rows = []
    work = Path(tempfile.mkdtemp(prefix="aidmp-scale-"))
    try:
        for n in sizes:
            out = (args.keep or work) / str(n)
            shutil.rmtree(out, ignore_errors=True)
            row = run_one(n, args, out)
            rows.append(row)
            print(
                f"{n:>6} institutions: {row['round_s']:7.2f} s/round "
                f"(first {row['first_round_s']:.2f})  peak RSS {row['peak_rss_mb']:7.0f} MiB  "
                f"wall {row['wall_s']:6.1f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    dp = "no DP" if args.no_dp else "DP-SGD"
    print(f"\n{args.task}, iid, {args.rounds} rounds, {dp}, engine {args.engine}, "
          f"{os.cpu_count()} CPUs; rounds 2+ median\n")  # fmt: skip
    print(f"{'institutions':>12}{'s/round':>10}{'ms/inst.':>10}{'round 1 s':>11}"
          f"{'peak RSS MiB':>14}{'KiB/inst.':>11}{'wall s':>9}")  # fmt: skip
    base = rows[0]
    for r in rows:
        n = r["institutions"]
        added = r["peak_rss_mb"] - base["peak_rss_mb"]
        per_inst = 1024 * added / max(n - base["institutions"], 1)
        print(
            f"{n:>12}{r['round_s']:>10.2f}{1000 * r['round_s'] / n:>10.1f}"
            f"{r['first_round_s']:>11.2f}{r['peak_rss_mb']:>14.0f}"
            f"{per_inst:>11.1f}"
            f"{r['wall_s']:>9.1f}"
        )
    print("(ms/inst.: seconds per round per institution; KiB/inst.: memory added per "
          "institution over the smallest size)")  # fmt: skip


if __name__ == "__main__":
    main()
