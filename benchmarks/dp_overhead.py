"""Epoch time of DP-SGD (Opacus) against plain SGD, per task and grad-sample mode.

One process, one torch thread (these machines are noisy and shared), the same
data and model for every variant; each figure is the median over repeats, after
one warm-up epoch. CPU time is printed beside wall time.

    python benchmarks/dp_overhead.py [--repeats 5] [--batch-size 64] [--tasks adult ...]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from aidmp.errors import PrivacyError
from aidmp.privacy.dp import GRAD_SAMPLE_MODES, train_dp
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tasks", nargs="+", default=["breast-cancer", "adult", "mnist"])
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(f"batch {args.batch_size}, sigma 1.0, C 1.0, Poisson sampling, 1 thread; "
          f"median of {args.repeats} epochs after a warm-up")  # fmt: skip
    print(f"{'task':14}{'rows':>6}{'variant':>11}{'wall s':>9}{'cpu s':>8}{'ratio':>7}")
    for name in args.tasks:
        bench_task(name, args.batch_size, args.repeats)
    print("(goal: DP/plain <= 1.5)")


if __name__ == "__main__":
    main()
