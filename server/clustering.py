"""A federated k-means job from the coordinator's side (analytics/clustering.py has the
mechanism; client/clustering_handler.py the node's side).

`run_clustering(grid, job, cfg)`:

1. plans the job (the σ every node will find) and prints it before any node is asked;
2. waits for `min-available-nodes`; round 1 sends the job's random candidate points
   (public, from its seed: no row is read un-noised to start), rounds 2..T the current
   centroids (`message_type="query.clustering"`), each round to every connected node,
   waiting at most `round-timeout` seconds for the replies;
3. adds the noisy per-cluster counts and centred sums; under HE (`cfg.he`) it only adds
   ciphertexts, with the public key, and hands the one sum to `decrypt`, the key
   holder's (in simulation the researcher's; by default a site that answered, as a
   deployed coordinator holds no secret key: server/key_holder.py). Round 1's
   sums become the k initial centroids (weighted k-means++ over the noisy candidate
   means), later rounds' the next centroids;
4. writes OUT/clusters.json (atomically) and OUT/clusters.png: the centroids in
   original units, the noisy sizes, the held-out inertia when the caller has held-out
   rows (simulation), and each institution's ε as its own ledger charged it.
"""

from __future__ import annotations

import math
import time
import uuid
from logging import getLogger
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from aidmp.analytics.clustering import (
    ClusterJob,
    ClusterPlan,
    combine_round,
    inertia,
    initial_centroids,
    plan_clustering,
    random_candidates,
    release_from_vector,
    to_original_units,
)
from aidmp.atomic import atomic_write_json
from aidmp.config import RunConfig
from aidmp.errors import AidmpError, DeclineCode
from aidmp.privacy.he.keys import fingerprint, key_file_for, load_context
from aidmp.privacy.he.packing import EncryptedSum
from aidmp.server.key_holder import Decrypt, sites_decrypt
from aidmp.server.round_settings import round_config_for
from aidmp.server.rounds import (
    _failures,
    _silent,
    ask_each,
    connected_nodes,
    figure,
    replier_name,
)

log = getLogger("aidmp.server")

CLUSTERS_NAME = "clusters.json"
CLUSTERS_PLOT = "clusters.png"
MESSAGE_TYPE = "query.clustering"  # the ClientApp's @app.query("clustering")
JOB_RECORD = "cluster"  # as client/clustering_handler.py reads it
RELEASE_RECORD = "clustering"
CLUSTERS_FORMAT = 1


def describe_plan(plan: ClusterPlan) -> str:
    job = plan.job
    return (
        f"clustering job {job.digest()[:12]}: k {job.k}, {job.rounds} rounds (round 1: "
        f"{job.candidates} random candidates), {job.dimensions} features "
        f"({', '.join(f.column for f in job.features)}); eps {job.epsilon:g} per institution "
        f"at delta {job.delta:g} (PLD {plan.spent():.4f}); per round: count sigma "
        f"{plan.count_std:.3g}, sum sigma {plan.sum_std:.3g} "
        f"(sensitivity {plan.sum_sensitivity:.3g})"
    )


class _Round:
    """One round's replies, added up as they arrive."""

    def __init__(self, size: int, k: int, d: int, public: tuple[Any, str] | None) -> None:
        self.k, self.d = k, d
        self.counts, self.sums = np.zeros(k), np.zeros((k, d))
        self.encrypted = EncryptedSum(public[0]) if public is not None else None
        self.fingerprint = public[1] if public is not None else None
        self.size = size
        self.contributors = 0


def run_clustering(
    grid: Grid,
    job: ClusterJob,
    cfg: RunConfig,
    *,
    run_id: str = "",
    quiet: bool = False,
    decrypt: Decrypt | None = None,
    heldout: np.ndarray | None = None,
) -> dict[str, Any]:
    """Run `job` over every connected node; write OUT/clusters.json and clusters.png.
    `heldout`: held-out points (scaled, as analytics.clustering.feature_matrix makes
    them) for the inertia, where the caller has them (simulation)."""
    out = Path(cfg.out_dir)
    public = None
    if cfg.he:
        context = load_context(key_file_for(Path(cfg.he_keys), "coordinator"), "coordinator")
        public = (context, fingerprint(context))
    plan = plan_clustering(job)
    if not quiet:
        print(describe_plan(plan))
    job_id = run_id or uuid.uuid4().hex[:16]
    nodes = connected_nodes(
        grid, cfg.min_available_nodes, cfg.round_timeout, cfg.registered_names()
    )
    names: dict[int, str] = cfg.registered_names()  # then as each node names itself
    first: dict[str, dict[str, float]] = {}
    last: dict[str, dict[str, float]] = {}
    history: list[dict[str, Any]] = []
    declined: dict[str, str] = {}
    centroids = random_candidates(job)
    counts = np.zeros(len(centroids))
    started = time.monotonic()
    for rnd in range(1, job.rounds + 1):
        k, d = len(centroids), job.dimensions
        total = _Round(k * (d + 1), k, d, public)
        content = RecordDict(
            {
                "config": round_config_for(cfg, rnd, job_id),
                JOB_RECORD: ConfigRecord(
                    {
                        "job": job.text(),
                        "digest": job.digest(),
                        "he": bool(cfg.he),
                        "centroids": [float(v) for v in centroids.ravel()],
                        "centroid-count": int(k),
                    }
                ),
            }
        )
        messages, replies = ask_each(grid, nodes, content, MESSAGE_TYPE, cfg.round_timeout)
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        answered: list[str] = []
        rejected: list[dict[str, object]] = []
        for reply in replies:
            if reply.has_error():
                continue
            records = reply.content.config_records
            node = records.get("node")
            name = replier_name(reply)
            names[reply.metadata.src_node_id] = name
            try:
                _add(total, records[RELEASE_RECORD], name, job.digest())
            except (KeyError, TypeError, ValueError, AidmpError):
                reason = "rejected by the coordinator: no readable release"
                rejected.append({"institution": name, "code": DeclineCode.BAD_CONFIG,
                                 "reason": reason})  # fmt: skip
                continue
            answered.append(name)
            if node is not None:
                figures = {key: v for key in node if (v := figure(node[key])) is not None}
                first.setdefault(name, figures)
                last[name] = figures
        failures = _failures(replies, sent_to, names) + _silent(
            messages, replies, cfg.round_timeout, names
        )
        failures += rejected
        for f in failures:
            declined.setdefault(
                str(f["institution"]), f"round {rnd}: code {f['code']}: {f['reason']}"
            )
        if total.encrypted is not None and total.encrypted.total is not None:
            assert public is not None
            chunks = [v.serialize() for v in total.encrypted.total]
            key_holder = decrypt
            if key_holder is None:  # a deployed coordinator: a site that answered decrypts
                releases = {
                    r.metadata.src_node_id: r.metadata.reply_to_message_id
                    for r in replies
                    if not r.has_error() and names.get(r.metadata.src_node_id) in answered
                }
                key_holder = sites_decrypt(grid, cfg, job_id, releases, public[1])
            summed = key_holder(chunks, total.size, total.encrypted.count)
            released = release_from_vector(summed, k, d, np.zeros(k, dtype=bool))
            total.counts, total.sums = released.counts, released.sums
        history.append({"round": rnd, "centroids_sent": k, "answered": sorted(answered),
                        "declined": failures})  # fmt: skip
        if not answered:
            raise AidmpError(
                f"no institution answered round {rnd} of the clustering job; "
                + ("; ".join(f"{n}: {r}" for n, r in declined.items()) or "none replied")
            )
        counts = total.counts
        if rnd == 1:
            noise = plan.sum_std * math.sqrt(len(answered))
            centroids = initial_centroids(centroids, total.counts, total.sums, job, sum_noise=noise)
        else:
            centroids = combine_round(centroids, total.counts, total.sums)
    result = _result(job, plan, centroids, counts, first, last, history, declined, heldout)
    result |= {"job_id": job_id, "seconds": time.monotonic() - started, "he": bool(cfg.he)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CLUSTERS_NAME, result)
    if not quiet:
        print(format_clusters(result))
    plot_clusters(result, out / CLUSTERS_PLOT)
    return result


def _add(total: _Round, answer: ConfigRecord, name: str, digest: str) -> None:
    """Add one node's release; raises (and adds nothing) if it is unreadable."""
    if answer.get("digest") != digest:
        raise ValueError("another job")
    withheld = list(answer["withheld"])  # type: ignore[arg-type]
    if len(withheld) != total.k:
        raise ValueError("another shape")
    if total.encrypted is not None:  # the values only added, never read
        if answer.get("fingerprint") != total.fingerprint:
            raise ValueError("another key")
        total.encrypted.add(list(answer["chunks"]), name)  # type: ignore[arg-type]
        return
    counts = np.asarray(answer["counts"], dtype=np.float64)
    sums = np.asarray(answer["sums"], dtype=np.float64)
    if counts.shape != (total.k,) or sums.shape != (total.k * total.d,):
        raise ValueError("another shape")
    if not (np.isfinite(counts).all() and np.isfinite(sums).all()):
        raise ValueError("not finite")
    total.counts = total.counts + counts
    total.sums = total.sums + sums.reshape(total.k, total.d)


def _result(
    job: ClusterJob,
    plan: ClusterPlan,
    centroids: np.ndarray,
    counts: np.ndarray,
    first: dict[str, dict[str, float]],
    last: dict[str, dict[str, float]],
    history: list[dict[str, Any]],
    declined: dict[str, str],
    heldout: np.ndarray | None,
) -> dict[str, Any]:
    original = to_original_units(centroids, job.features)
    columns = [f.column for f in job.features]
    # What each node's own ledger charged for the whole job: its spend after the last
    # round it answered, less its spend before the first (its ledger composed them).
    by_institution = {
        name: {
            "epsilon_job": last[name].get("epsilon-spent", math.nan)
            - (first[name].get("epsilon-spent", math.nan) - first[name].get("epsilon-round", 0.0)),
            "epsilon_spent": last[name].get("epsilon-spent"),
            "budget_left": last[name].get("budget-left"),
            "delta": last[name].get("delta"),
        }
        for name in sorted(last)
    }
    return {
        "format": CLUSTERS_FORMAT,
        "job": job.canonical() | {"digest": job.digest()},
        "features": columns,
        "feature_space": "each feature clipped to its public bounds and scaled to [0, 1]",
        "centroids": [dict(zip(columns, map(float, row), strict=True)) for row in original],
        "centroids_scaled": [[float(v) for v in row] for row in centroids],
        # The last round's summed noisy counts: each cluster's size under the centroids
        # that round was sent (the final centroids are its means).
        "sizes_noisy": [float(c) for c in counts],
        "inertia_heldout": None if heldout is None else inertia(heldout, centroids),
        "heldout_rows": None if heldout is None else int(len(heldout)),
        "privacy": {
            "epsilon": job.epsilon,
            "delta": job.delta,
            "epsilon_pld": plan.spent(),
            "count_sigma": plan.count_std,
            "sum_sigma": plan.sum_std,
            "sum_sensitivity": plan.sum_sensitivity,
            "by_institution": by_institution,
        },
        "rounds": history,
        "declined": declined,
    }


def format_clusters(result: dict[str, Any]) -> str:
    columns = result["features"]
    lines = [f"{'cluster':>7} {'size (noisy)':>13}  " + "  ".join(f"{c[:14]:>14}" for c in columns)]
    for j, (centre, size) in enumerate(
        zip(result["centroids"], result["sizes_noisy"], strict=True)
    ):
        lines.append(f"{j:>7} {size:>13.0f}  " + "  ".join(f"{centre[c]:>14.4g}" for c in columns))
    if result["inertia_heldout"] is not None:
        lines.append(
            f"held-out inertia (mean squared distance, scaled space): "
            f"{result['inertia_heldout']:.5f} over {result['heldout_rows']} rows"
        )
    lines.append(
        "eps per institution (its ledger's charge for this job): "
        + ", ".join(
            f"{name} {figures['epsilon_job']:.4f}"
            for name, figures in result["privacy"]["by_institution"].items()
        )
    )
    for name, reason in result["declined"].items():
        lines.append(f"declined: {name}: {reason}")
    return "\n".join(lines)


def plot_clusters(result: dict[str, Any], path: Path) -> None:
    """Left: each centroid's profile over the features (scaled to [0, 1], the bounds in
    original units on the axis); right: the noisy cluster sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = result["features"]
    bounds = {f[0]: (f[1], f[2]) for f in result["job"]["features"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    xs = list(range(len(columns)))
    for j, row in enumerate(result["centroids_scaled"]):
        left.plot(xs, row, marker="o", label=f"cluster {j}")
    left.set_xticks(xs, [f"{c}\n[{bounds[c][0]:g}, {bounds[c][1]:g}]" for c in columns], fontsize=7)
    left.set_ylim(-0.02, 1.02)
    left.set_ylabel("centroid (scaled to the public bounds)")
    left.legend(fontsize=7)
    sizes = result["sizes_noisy"]
    right.bar(range(len(sizes)), sizes, color="#4c72b0")
    right.set_xticks(range(len(sizes)), [str(j) for j in range(len(sizes))])
    right.set_title("noisy sizes", fontsize=9)
    title = f"k-means, eps {result['privacy']['epsilon']:g} per institution"
    if result["inertia_heldout"] is not None:
        title += f"; held-out inertia {result['inertia_heldout']:.4f}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
