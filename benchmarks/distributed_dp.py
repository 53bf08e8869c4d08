"""Held-out accuracy on Adult: local DP, distributed DP, central DP-SGD, no DP.

For each number of institutions (dirichlet:0.5 label skew, seed 0) and each ε per
institution (δ = 1e-5), the final held-out accuracy of:
  local        today's mode: each institution runs DP-SGD on its own rows (plaintext
               FedAvg, the coordinator evaluates; HE would not change the figure)
  distributed  dp-mode=distributed under CKKS (privacy/distributed.py), min-nodes 90 %
               of the federation; the researcher decrypts the final model
  central      DP-SGD with Opacus on the pooled rows: the same q, steps, clip and
               learning rate, σ planned by the same accountant for the same ε (the peer)
  no DP        plaintext FedAvg without DP
Every federation runs on the in-process engine (simulations/inprocess.py).

    python benchmarks/distributed_dp.py [--institutions 5 100] [--epsilons 3 1]
        [--rounds 10] [--dist-rounds 60] [--sample-rate 0.05] [--lr 2.0]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from aidmp.config import RunConfig
from aidmp.privacy.dp import RoundShape, plan_noise_multiplier
from aidmp.privacy.he.keys import key_ceremony, key_file_for, load_context
from aidmp.privacy.he.state import EncryptedGlobal, unflatten_state
from aidmp.server.checkpoint import CHECKPOINT_NAME, load_checkpoint
from aidmp.server.federation import run_federation
from aidmp.simulations.inprocess import InProcessGrid
from aidmp.simulations.runner import prepare
from aidmp.tasks import get_task, load_dataset

TASK, PARTITION, DELTA, CLIP = "adult", "dirichlet:0.5", 1e-5, 1.0


def _federate(cfg: RunConfig, institutions: int) -> float:
    """Run the federation in process; the final held-out accuracy."""
    cfg = prepare(cfg, institutions)
    grid = InProcessGrid(institutions)
    report = run_federation(grid, cfg, run_id=str(grid.run.run_id))
    if not cfg.he:
        return float(report["final"]["accuracy"])
    params, _ = EncryptedGlobal.from_arrays(
        load_checkpoint(Path(cfg.out_dir) / CHECKPOINT_NAME).model
    ).decrypt(load_context(key_file_for(Path(cfg.he_keys), "institution"), "institution"))
    task = get_task(TASK)
    model = task.build_model()
    model.load_state_dict(unflatten_state(params, model.state_dict()))
    data = load_dataset(TASK)
    return float(task.evaluate(model, data.x_test, data.y_test)[1])


def central_dp_sgd(epsilon: float, steps: int, q: float, lr: float, seed: int = 0) -> float:
    """Opacus DP-SGD on the pooled training rows: `steps` Poisson batches at rate q."""
    task, data = get_task(TASK), load_dataset(TASK)
    torch.manual_seed(seed)
    model = task.build_model()
    sigma = plan_noise_multiplier((), epsilon, DELTA, RoundShape(q, 1), steps)
    xs = torch.as_tensor(data.x_train, dtype=torch.float32)
    ys = torch.as_tensor(data.y_train, dtype=torch.long)
    n = len(ys)
    private = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    opt = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr),
        noise_multiplier=sigma,
        max_grad_norm=CLIP,
        expected_batch_size=int(q * n),
    )
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        chosen = torch.rand(n, generator=generator) < q
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(private(xs[chosen]), ys[chosen]).backward()
        opt.step()
    private.remove_hooks()
    return float(task.evaluate(model, data.x_test, data.y_test)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--institutions", type=int, nargs="+", default=[5, 100])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[3.0, 1.0])
    parser.add_argument("--rounds", type=int, default=10, help="local mode and no DP")
    parser.add_argument("--dist-rounds", type=int, default=60, help="distributed: steps")
    parser.add_argument("--sample-rate", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=2.0, help="distributed and central")
    parser.add_argument("--skip", nargs="*", default=[], help="local, nodp, distributed")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("aidmp").setLevel(logging.ERROR)
    root = Path(tempfile.mkdtemp(prefix="distributed-dp-"))
    key_ceremony(root / "keys")
    base = dict(task=TASK, partition=PARTITION, seed=0, dp_delta=DELTA, dp_max_grad_norm=CLIP)
    rows = []
    for k in args.institutions:
        if "nodp" not in args.skip:
            t = time.monotonic()
            acc = _federate(
                RunConfig(**base, num_rounds=args.rounds, dp=False, out_dir=str(root / f"n{k}")),
                k,
            )
            rows.append((k, "-", "no DP (FedAvg)", acc, time.monotonic() - t))
            print(rows[-1], flush=True)
        for eps in args.epsilons:
            if "local" not in args.skip:
                t = time.monotonic()
                cfg = RunConfig(**base, num_rounds=args.rounds, dp_epsilon=eps,
                                out_dir=str(root / f"l{k}-{eps}"))  # fmt: skip
                rows.append((k, eps, "local DP", _federate(cfg, k), time.monotonic() - t))
                print(rows[-1], flush=True)
            if "distributed" not in args.skip:
                t = time.monotonic()
                cfg = RunConfig(**base, num_rounds=args.dist_rounds, dp_epsilon=eps,
                                dp_mode="distributed", dp_sample_rate=args.sample_rate,
                                learning_rate=args.lr, min_nodes=max(3, int(0.9 * k)),
                                min_available_nodes=k, he=True, he_keys=str(root / "keys"),
                                central_eval=False, fraction_evaluate=0.0, dp_metrics="withheld",
                                out_dir=str(root / f"d{k}-{eps}"))  # fmt: skip
                rows.append((k, eps, "distributed DP", _federate(cfg, k), time.monotonic() - t))
                print(rows[-1], flush=True)
    for eps in args.epsilons:
        t = time.monotonic()
        acc = central_dp_sgd(eps, args.dist_rounds, args.sample_rate, args.lr)
        rows.append(("pooled", eps, "central DP-SGD (Opacus)", acc, time.monotonic() - t))
        print(rows[-1], flush=True)
    print(f"\nAdult, {PARTITION}, δ={DELTA:g}, clip {CLIP:g}; local/no DP {args.rounds} rounds; "
          f"distributed and central {args.dist_rounds} steps at q={args.sample_rate:g}, "
          f"lr {args.lr:g}")  # fmt: skip
    print(f"{'institutions':>12} {'ε':>4}  {'mode':<24} {'accuracy':>8} {'seconds':>8}")
    for k, eps, mode, acc, secs in rows:
        print(f"{k!s:>12} {eps!s:>4}  {mode:<24} {acc:8.3f} {secs:8.1f}")


if __name__ == "__main__":
    main()
