"""Seconds per client message: our app against a trivial Flower app, same engine.

Both run on Flower's simulation engine (Ray) with the same nodes, rounds and
backend settings, in this one process, alternating, so machine noise hits both.
The trivial app sends a 1-element array and replies at once; ours runs the real
ServerApp rounds (checkpoint, central evaluation, report) and real local training
on breast-cancer. A client message is one train or evaluate request to one node.

Two figures: whole runs (start-up included: Ray, and each node process importing
torch), and the marginal cost of a message, from runs of `--short` and `--rounds`
rounds: (T(rounds) - T(short)) / messages in the extra rounds.

    python benchmarks/simulation_overhead.py [--nodes 5] [--rounds 10] [--short 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from aidmp.config import RunConfig
from aidmp.server.federation import run_federation
from aidmp.simulations.runner import prepare, run_flower_simulation

# --- the trivial Flower app: the engine's own cost per message ---------------
trivial_client = ClientApp()


@trivial_client.train()
def _trivial_train(msg: Message, context: Context) -> Message:
    reply = RecordDict(
        {"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})}
    )
    return Message(reply, reply_to=msg)


@trivial_client.evaluate()
def _trivial_evaluate(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"num-examples": 1, "eval-loss": 0.0})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def trivial_server(nodes: int, rounds: int) -> ServerApp:
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord([np.zeros(1)]),
            num_rounds=rounds,
            train_config=ConfigRecord(),
        )

    return app


def our_server(cfg: RunConfig) -> ServerApp:
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(grid, cfg)

    return app


def timed(server: ServerApp, nodes: int, client: ClientApp | None = None) -> float:
    started = time.perf_counter()
    if client is None:
        run_flower_simulation(server, nodes, verbose=False)
    else:
        run_flower_simulation(server, nodes, verbose=False, client=client)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--short", type=int, default=2, help="rounds of the short runs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("aidmp").setLevel(logging.ERROR)  # no per-round lines here

    def per_run(rounds: int, out: str) -> tuple[float, float]:
        # Plaintext training: this measures the federation's plumbing; DP-SGD's own cost
        # is benchmarks/dp_overhead.py's job.
        cfg = RunConfig(
            task="breast-cancer", num_rounds=rounds, partition="iid", out_dir=out, dp=False
        )
        cfg = prepare(cfg, args.nodes)
        trivial = timed(trivial_server(args.nodes, rounds), args.nodes, trivial_client)
        ours = timed(our_server(cfg), args.nodes)
        return trivial, ours

    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as out:
        for rep in range(args.repeats):
            for rounds in (args.short, args.rounds):
                trivial, ours = per_run(rounds, out)
                times.setdefault(("trivial", rounds), []).append(trivial)
                times.setdefault(("aidmp", rounds), []).append(ours)
                print(
                    f"repeat {rep + 1}, {rounds:>2} rounds: trivial {trivial:6.2f}s  "
                    f"aidmp {ours:6.2f}s",
                    flush=True,
                )

    med = {k: statistics.median(v) for k, v in times.items()}
    msgs = 2 * args.nodes * args.rounds  # one train + one evaluate per node per round
    extra = 2 * args.nodes * (args.rounds - args.short)
    print(f"\n{args.nodes} nodes x {args.rounds} rounds = {msgs} client messages per run")
    print(f"medians of {args.repeats} repeats, alternating apps in one process\n")
    print(f"{'':24}{'trivial':>10}{'aidmp':>10}{'ratio':>8}")
    whole = [med[(app, args.rounds)] / msgs for app in ("trivial", "aidmp")]
    marginal = [
        (med[(app, args.rounds)] - med[(app, args.short)]) / extra for app in ("trivial", "aidmp")
    ]
    print(f"{'whole run, s/message':24}{whole[0]:10.3f}{whole[1]:10.3f}{whole[1] / whole[0]:8.2f}")
    print(
        f"{'marginal, s/message':24}{marginal[0]:10.3f}{marginal[1]:10.3f}"
        f"{marginal[1] / marginal[0]:8.2f}"
    )
    print("(goal: ratio <= 1.25)")


if __name__ == "__main__":
    main()
