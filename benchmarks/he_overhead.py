"""What CKKS costs: bytes on the wire, seconds per step, and a whole round.

Part 1, for each model size (default 100k and 1M parameters) and 10 institutions,
ours (privacy/he/packing.py: N=4096, moduli (56,53), scale 2^25, add-only) against
NVIDIA FLARE's default parameters (N=8192, (60,40,40), 2^40, the server multiplies
each update by its weight and rescales):
  * bytes of ciphertext per float32 parameter in one node's update;
  * encrypt (one node), aggregate (the coordinator: parse 10 updates, sum, scale by
    1/W, add to the global model, serialize), decrypt (one node), each the median
    of --repeats, and aggregate against a float32 numpy sum of the same 10 updates;
  * the largest error of the decrypted mean update against float64.
Part 2, the default task (adult, DP on, 5 institutions): the wall time of rounds 2..
(node start-up excluded) with --he against the same run (same seed) in plaintext,
both with federated evaluation only; the median over pairs of the HE/plaintext ratio.

    python benchmarks/he_overhead.py [--sizes 100000 1000000] [--repeats 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tenseal as ts

from aidmp.config import RunConfig
from aidmp.privacy.he.keys import CkksParams, key_ceremony, load_context
from aidmp.privacy.he.packing import (
    EncryptedSum,
    add_vectors,
    decrypt_vector,
    encrypt_initial_global,
    encrypt_update,
)

INSTITUTIONS = 10


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def ours(size: int, repeats: int, keys: Path) -> dict[str, float]:
    secret = load_context(keys / "institution.ckks", "institution")
    public = load_context(keys / "coordinator.ckks", "coordinator")
    rng = np.random.default_rng(0)
    weights = rng.integers(100, 5000, INSTITUTIONS).astype(float)
    updates = [rng.normal(scale=0.01, size=size) for _ in range(INSTITUTIONS)]
    w0 = rng.normal(scale=0.5, size=size)
    enc_s, _ = median_time(lambda: encrypt_update(secret, updates[0], weights[0]), repeats)
    blobs = [encrypt_update(secret, u, n) for u, n in zip(updates, weights, strict=True)]
    global_model = encrypt_initial_global(public, w0)

    def aggregate():
        total = EncryptedSum(public)
        for i, b in enumerate(blobs):
            total.add(b, f"node {i}")
        mean, check = total.mean(float(weights.sum()))
        return add_vectors(public, global_model, mean), 1.0 + check

    agg_s, (new_model, check) = median_time(aggregate, repeats)
    dec_s, got = median_time(
        lambda: decrypt_vector(secret, new_model, size, check, "global"), repeats
    )
    plain = [u.astype(np.float32) * np.float32(n) for u, n in zip(updates, weights, strict=True)]
    sum_s, _ = median_time(lambda: np.sum(plain, axis=0), max(repeats, 5))
    mean = np.average(np.stack(updates), axis=0, weights=weights)
    r = round(2**25 / weights.sum()) / 2**25 * weights.sum()  # the rounded 1/W (packing.py)
    return {
        "bytes_per_param": sum(len(b) for b in blobs[0]) / size,
        "encrypt_s": enc_s,
        "aggregate_s": agg_s,
        "decrypt_s": dec_s,
        "float32_sum_s": sum_s,
        "max_error_vs_exact": float(np.abs(got - (w0 + mean)).max()),
        "max_error_given_rounded_1_over_W": float(np.abs(got - (w0 + r * mean)).max()),
    }


def flare_baseline(size: int, repeats: int) -> dict[str, float]:
    """NVIDIA FLARE's HE filter arithmetic: 8192/(60,40,40)/2^40, weight multiplied in
    at the server (one rescale), then the sum; nodes decrypt and divide."""
    p = CkksParams(8192, (60, 40, 40), 40)
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=p.poly_modulus_degree,
        coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes),
    )
    ctx.global_scale = 2**p.scale_bits
    public = ctx.copy()
    public.make_context_public()
    slots = p.poly_modulus_degree // 2
    rng = np.random.default_rng(0)
    weights = rng.integers(100, 5000, INSTITUTIONS).astype(float)
    updates = [rng.normal(scale=0.01, size=size) for _ in range(INSTITUTIONS)]

    def encrypt(u):
        return [ts.ckks_vector(ctx, u[i : i + slots].tolist()).serialize()
                for i in range(0, size, slots)]  # fmt: skip

    enc_s, _ = median_time(lambda: encrypt(updates[0]), repeats)
    blobs = [encrypt(u) for u in updates]

    def aggregate():
        total = None
        for b, n in zip(blobs, weights, strict=True):
            vecs = [ts.ckks_vector_from(public, x) * float(n / weights.sum()) for x in b]
            total = vecs if total is None else [a + v for a, v in zip(total, vecs, strict=True)]
        return [v.serialize() for v in total]

    agg_s, out = median_time(aggregate, repeats)
    dec_s, got = median_time(
        lambda: np.concatenate([ts.ckks_vector_from(ctx, b).decrypt() for b in out]), repeats
    )
    mean = np.average(np.stack(updates), axis=0, weights=weights)
    return {
        "bytes_per_param": sum(len(b) for b in blobs[0]) / size,
        "encrypt_s": enc_s,
        "aggregate_s": agg_s,
        "decrypt_s": dec_s,
        "max_error_vs_exact": float(np.abs(got[:size] - mean).max()),
    }


def round_seconds(cfg: RunConfig, institutions: int) -> list[float]:
    from aidmp.simulations.runner import simulate

    summary = simulate(cfg, institutions)
    return [r["elapsed_s"] for r in summary["per_round"][1:]]


def full_round(rounds: int, repeats: int, keys: Path) -> dict[str, float]:
    """Paired runs (same seed, so the same DP planning and training work per round):
    the ratio of HE to plaintext time over rounds 2.., then the median over pairs."""
    ratios, he_totals, plain_totals = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            base = dict(num_rounds=rounds, central_eval=False, seed=i)
            plain = sum(round_seconds(RunConfig(**base, out_dir=f"{tmp}/plain{i}"), 5))
            he_cfg = RunConfig(**base, he=True, he_keys=str(keys), out_dir=f"{tmp}/he{i}")
            he = sum(round_seconds(he_cfg, 5))
            ratios.append(he / plain)
            he_totals.append(he)
            plain_totals.append(plain)
            print(f"  pair {i}: rounds 2..{rounds} took {he:.2f}s with HE, {plain:.2f}s plaintext")
    return {
        "he_round_s": statistics.median(he_totals) / (rounds - 1),
        "plaintext_round_s": statistics.median(plain_totals) / (rounds - 1),
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6, help="rounds per run in part 2")
    parser.add_argument("--round-repeats", type=int, default=3)
    parser.add_argument("--skip-round", action="store_true", help="part 1 only")
    args = parser.parse_args()
    results: dict[str, object] = {"institutions": INSTITUTIONS}
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        key_ceremony(keys)
        print(f"{'params':>9} {'scheme':<28} {'B/param':>8} {'encrypt':>8} {'aggregate':>10} "
              f"{'decrypt':>8} {'agg/f32sum':>10} {'max err':>9}")  # fmt: skip
        for size in args.sizes:
            a, b = ours(size, args.repeats, keys), flare_baseline(size, args.repeats)
            results[f"ours_{size}"], results[f"flare_{size}"] = a, b
            for name, m in (("ours 4096/(56,53)/2^25", a), ("FLARE 8192/(60,40,40)/2^40", b)):
                ratio = m["aggregate_s"] / a["float32_sum_s"]
                print(f"{size:>9} {name:<28} {m['bytes_per_param']:8.1f} {m['encrypt_s']:7.2f}s "
                      f"{m['aggregate_s']:9.2f}s {m['decrypt_s']:7.2f}s {ratio:10.0f} "
                      f"{m['max_error_vs_exact']:9.1e}")  # fmt: skip
            smaller = b["bytes_per_param"] / a["bytes_per_param"]
            print(f"{'':>9} FLARE/ours bytes {smaller:.2f}; "
                  f"ours vs float32 on the wire {a['bytes_per_param'] / 4:.1f}x")  # fmt: skip
        if not args.skip_round:
            fr = full_round(args.rounds, args.round_repeats, keys)
            results["full_round"] = fr
            print(f"adult, 5 institutions, DP on: round {fr['he_round_s']:.3f}s with HE, "
                  f"{fr['plaintext_round_s']:.3f}s plaintext; "
                  f"ratio {fr['ratio']:.2f} (goal <= 1.3)")  # fmt: skip
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
