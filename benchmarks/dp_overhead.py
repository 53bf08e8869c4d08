"""Epoch time of DP-SGD (Opacus) against plain SGD, per task and grad-sample mode; and
the cost of drawing DP-SGD's randomness from the CSPRNG instead of torch's generator.

One process, one torch thread (these machines are noisy and shared), the same
data and model for every variant; each figure is the median over repeats, after
one warm-up epoch. CPU time is printed beside wall time.

The second table (privacy/noise.py) sets the ChaCha20 source that nodes with their own
data use against the seeded torch generator of simulations: one step's noise for the
task's model, one step's Poisson sample of the institution's rows, and a whole DP epoch
(grad-sample mode "auto"), each a median over repeats in this process, and their ratio.

    python benchmarks/dp_overhead.py [--repeats 5] [--batch-size 64] [--tasks adult ...]
    python benchmarks/dp_overhead.py --rng-only
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time

import torch

from aidmp.errors import PrivacyError
from aidmp.privacy.dp import train_dp
from aidmp.privacy.noise import SecureRandom, SeededRandom
from aidmp.privacy.policy import GRAD_SAMPLE_MODES
from aidmp.tasks import get_task, load_dataset
from aidmp.tasks.partition import institution_data


def epoch_seconds(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_task(name: str, batch_size: int, repeats: int) -> None:
    task = get_task(name)
    # One institution of five (iid): the data one node trains on in a round.
    data = institution_data(load_dataset(name), 5, "iid", 0, 0)
    torch.manual_seed(0)
    start = task.build_model().state_dict()

    def plain(seed: int) -> None:
        model = task.build_model()
        model.load_state_dict(start)
        task.train(model, data.x_train, data.y_train, epochs=1,
                   batch_size=batch_size, learning_rate=0.05, seed=seed)  # fmt: skip

    def private(mode: str, seed: int) -> None:
        model = task.build_model()
        model.load_state_dict(start)
        train_dp(model, data.x_train, data.y_train, epochs=1, batch_size=batch_size,
                 learning_rate=0.05, seed=seed, noise_multiplier=1.0, max_grad_norm=1.0,
                 grad_sample_mode=mode)  # fmt: skip

    variants = {"plain": plain} | {
        mode: functools.partial(private, mode) for mode in GRAD_SAMPLE_MODES
    }
    results = {}
    for variant, fn in variants.items():
        try:
            fn(-1)  # warm-up
        except PrivacyError:  # a mode this model cannot use ("linear" on a CNN)
            continue
        runs = [epoch_seconds(functools.partial(fn, i)) for i in range(repeats)]
        results[variant] = (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
        )
    base = results["plain"][0]
    for variant, (wall, cpu) in results.items():
        print(
            f"{name:14}{len(data.y_train):6d}{variant:>11}{wall:9.4f}{cpu:8.4f}{wall / base:7.2f}"
        )


def paired_medians(a, b, repeats: int) -> tuple[float, float]:
    """Median seconds per call of `a` and of `b`, measured in alternation (so that a slow
    spell of this shared machine hits both), each measurement at least 0.2 s of calls."""
    a(), b()  # warm-up
    start = time.perf_counter()
    a()
    inner = max(1, math.ceil(0.2 / max(time.perf_counter() - start, 1e-6)))
    runs: dict[object, list[float]] = {a: [], b: []}
    for _ in range(repeats):
        for fn in (a, b):
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            runs[fn].append((time.perf_counter() - start) / inner)
    return statistics.median(runs[a]), statistics.median(runs[b])


def bench_rng(name: str, batch_size: int, repeats: int) -> None:
    task = get_task(name)
    data = institution_data(load_dataset(name), 5, "iid", 0, 0)
    torch.manual_seed(0)
    start = task.build_model().state_dict()
    params = [p.detach() for p in task.build_model().parameters()]
    n = len(data.y_train)
    secure, seeded = SecureRandom(), SeededRandom(0)

    def epoch(seed: int | None) -> None:
        model = task.build_model()
        model.load_state_dict(start)
        train_dp(model, data.x_train, data.y_train, epochs=1, batch_size=batch_size,
                 learning_rate=0.05, seed=seed, noise_multiplier=1.0,
                 max_grad_norm=1.0)  # fmt: skip

    rows = {
        f"noise {sum(p.numel() for p in params)}": (
            lambda: secure.normal_like(params, 1.0),
            lambda: seeded.normal_like(params, 1.0),
        ),
        f"sample {n}": (lambda: secure.uniform(n), lambda: seeded.uniform(n)),
        "epoch": (lambda: epoch(None), lambda: epoch(0)),
    }
    for what, (with_csprng, with_torch) in rows.items():
        a, b = paired_medians(with_csprng, with_torch, repeats)
        print(f"{name:14}{what:>16}{a * 1e3:12.4f}{b * 1e3:12.4f}{a / b:7.2f}")


def grad_sample_modes(args: argparse.Namespace) -> None:
    print(f"batch {args.batch_size}, sigma 1.0, C 1.0, Poisson sampling, 1 thread; "
          f"median of {args.repeats} epochs after a warm-up")  # fmt: skip
    print(f"{'task':14}{'rows':>6}{'variant':>11}{'wall s':>9}{'cpu s':>8}{'ratio':>7}")
    for name in args.tasks:
        bench_task(name, args.batch_size, args.repeats)
    print("(goal: DP/plain <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tasks", nargs="+", default=["breast-cancer", "adult", "mnist"])
    parser.add_argument("--rng-only", action="store_true", help="only the CSPRNG table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.rng_only:
        grad_sample_modes(args)
    print(f"\nDP-SGD's randomness: ChaCha20 CSPRNG (nodes with their own data) against "
          f"torch's seeded generator (simulation); median of {args.repeats}, 1 thread")  # fmt: skip
    print(f"{'task':14}{'what':>16}{'csprng ms':>12}{'torch ms':>12}{'ratio':>7}")
    for name in args.tasks:
        bench_rng(name, args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
