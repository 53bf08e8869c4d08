"""Federated k-means under DP: the job, its noise, one institution's release, the
coordinator's Lloyd step (DESIGN.md, "Differential privacy": clustering is a release).

The feature space. A job names numeric columns, each with public bounds [low, high]
(stated in the job, never read from data; by default the governance policy's `min` and
`max`). Every value is clipped to its bounds and scaled to [0, 1], so a row is a point
of the unit cube [0, 1]^d; the centroids are reported back in original units. Rows
missing any of the columns are left out.

One round is one Lloyd iteration. The coordinator sends the current centroids; each
institution assigns its rows to the nearest and releases, per cluster j,

    n_j      the count                       (L2 sensitivity 1: a row is in one cluster)
    s_j      Σ (x − ½) over the cluster's rows (L2 sensitivity √d / 2)

each coordinate with Gaussian noise. Adding or removing one row changes one cluster's
count by 1 and its centred sum by a vector of norm ≤ √d/2, so a round is one Gaussian
mechanism with μ_round² = μ_count² + μ_sum² (Dong, Roth and Su 2019), and the job's T
rounds compose exactly to μ² = T·μ_round². The job's ε at δ fixes μ (as for an
analytics query, analytics/mechanisms.py); the split between counts and sums is
μ_sum² = w·μ_round² with w = √d/(√d + 1), which minimises the centroid's error
d·σ_sum²/n² + |m − ½|²·σ_count²/n² for a mean m a typical distance from the centre
(√A/√B of the two terms' coefficients). The σ are calibrated so that the ledger's PLD
figure for T rounds is at most the job's ε (`plan_clustering`).

Centring: s_j sums x − ½, and the coordinator adds ½·n_j back (the centre is public);
that halves the sum's sensitivity against a raw sum of points in [0, 1]^d.

Initialization never reads rows un-noised. Round 1 is a DP initialization: the
coordinator sends `candidates` (≥ k) points drawn at random in the cube from the job's
public seed, each node releases round 1 like any other round (noisy counts and sums
for every candidate), and the coordinator reduces the noisy candidate means, weighted
by their noisy counts, to k centroids by weighted k-means++ (post-processing of noisy
aggregates: it costs no ε). Rounds 2..T are Lloyd iterations on k centroids.

`min_count` suppression (post-processing): a node withholds a cluster's count and sum
when its noisy count is below `min_count`; the coordinator sums what was released.

This module is a library: numpy only, no Flower, no ledger; the node charges its ledger
(privacy/clustering_release.py) before it hands a release to be sent.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from aidmp.analytics.mechanisms import (
    CALIBRATION_SLACK,
    PLD_DISCRETIZATION,
    GaussianEvent,
    NormalSource,
    draw,
    events_epsilon,
    gaussian_mu,
)
from aidmp.errors import AidmpError

JOB_FORMAT = 1
MAX_K = 64
MAX_ROUNDS = 50
MAX_FEATURES = 32
# Round 1's random candidates per wanted centroid (the DP initialization).
DEFAULT_CANDIDATES_PER_CLUSTER = 32
MAX_CANDIDATES = 1024
# A round-1 candidate's noisy mean takes part in the initialization only if its
# standard error (as a distance) is at most this share of the cube's side.
MAX_INIT_ERROR = 0.1


class ClusterError(AidmpError):
    """A clustering job that cannot run as stated."""


@dataclass(frozen=True)
class Feature:
    """One numeric column and its public bounds."""

    column: str
    low: float
    high: float

    def scale(self, values: np.ndarray) -> np.ndarray:
        """Clipped to the bounds, mapped to [0, 1]."""
        v = np.clip(np.asarray(values, dtype=np.float64), self.low, self.high)
        return (v - self.low) / (self.high - self.low)

    def unscale(self, values: np.ndarray) -> np.ndarray:
        return self.low + np.asarray(values, dtype=np.float64) * (self.high - self.low)


@dataclass(frozen=True)
class ClusterJob:
    """What a clustering job asks of every institution: all of it public."""

    features: tuple[Feature, ...]
    k: int
    rounds: int
    epsilon: float  # the whole job's ε at each institution (all its rounds)
    delta: float
    seed: int  # the public seed of the random candidates (initialization)
    candidates: int  # round 1's random points (the DP initialization), ≥ k
    min_count: int = 0  # a node applies the larger of this and its policy's

    def __post_init__(self) -> None:
        check_job(self)

    @property
    def dimensions(self) -> int:
        return len(self.features)

    def canonical(self) -> dict[str, Any]:
        return {
            "format": JOB_FORMAT,
            "features": [[f.column, f.low, f.high] for f in self.features],
            "k": self.k,
            "rounds": self.rounds,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "seed": self.seed,
            "candidates": self.candidates,
            "min_count": self.min_count,
        }

    def text(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest()


def check_job(job: ClusterJob) -> None:
    """Name the first thing wrong with `job`, and the fix."""
    if not isinstance(job.k, int) or job.k < 1:
        raise ClusterError(f"k must be a whole number of at least 1, not {job.k!r}")
    if job.k > MAX_K:
        raise ClusterError(f"k is at most {MAX_K} (asked {job.k})")
    if not isinstance(job.rounds, int) or not 2 <= job.rounds <= MAX_ROUNDS:
        raise ClusterError(
            f"rounds must be between 2 (the initialization and one Lloyd step) and "
            f"{MAX_ROUNDS}, not {job.rounds!r}"
        )
    if not job.features:
        raise ClusterError("a clustering job needs at least one numeric feature")
    if len(job.features) > MAX_FEATURES:
        raise ClusterError(f"at most {MAX_FEATURES} features, not {len(job.features)}")
    names = [f.column for f in job.features]
    if len(set(names)) != len(names):
        raise ClusterError("a feature is named twice")
    for f in job.features:
        if not (math.isfinite(f.low) and math.isfinite(f.high) and f.low < f.high):
            raise ClusterError(
                f"feature {f.column!r}: its bounds must be finite numbers with low < high "
                f"(public bounds, stated in the job; got [{f.low}, {f.high}])"
            )
    if not (math.isfinite(job.epsilon) and job.epsilon > 0):
        raise ClusterError(f"epsilon must be a positive finite number, not {job.epsilon!r}")
    if not 0 < job.delta < 1:
        raise ClusterError(f"delta must lie in (0, 1), not {job.delta!r}")
    if not job.k <= job.candidates <= MAX_CANDIDATES:
        raise ClusterError(
            f"candidates must lie between k ({job.k}) and {MAX_CANDIDATES}, not {job.candidates}"
        )
    if job.min_count < 0:
        raise ClusterError(f"min_count must be at least 0, not {job.min_count}")


def make_job(
    features: list[Feature],
    *,
    k: int,
    epsilon: float,
    delta: float = 1e-5,
    rounds: int = 6,
    seed: int = 0,
    candidates: int | None = None,
    min_count: int = 0,
) -> ClusterJob:
    """A job with the default number of random candidates (`k`·32, at most 1024)."""
    if not isinstance(k, int) or k < 1:
        raise ClusterError(f"k must be a whole number of at least 1, not {k!r}")
    if candidates is None:
        candidates = min(MAX_CANDIDATES, max(k, k * DEFAULT_CANDIDATES_PER_CLUSTER))
    return ClusterJob(tuple(features), k, rounds, float(epsilon), float(delta), int(seed),
                      int(candidates), int(min_count))  # fmt: skip


def parse_job(text: str) -> ClusterJob:
    """The job from its canonical JSON text (as a node receives it)."""
    try:
        doc = json.loads(text)
        if doc.get("format") != JOB_FORMAT:
            raise ClusterError(f"job format {doc.get('format')!r}, not {JOB_FORMAT}")
        features = tuple(Feature(str(c), float(lo), float(hi)) for c, lo, hi in doc["features"])
        return ClusterJob(
            features,
            int(doc["k"]),
            int(doc["rounds"]),
            float(doc["epsilon"]),
            float(doc["delta"]),
            int(doc["seed"]),
            int(doc["candidates"]),
            int(doc.get("min_count", 0)),
        )
    except ClusterError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ClusterError(f"the job is not a clustering job ({type(exc).__name__})") from None


# --- noise -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterPlan:
    """The job's noise: the same in every round, at every institution."""

    job: ClusterJob
    mu_round: float  # one round's composed Gaussian
    count_std: float  # σ of each noisy count
    sum_std: float  # σ of each coordinate of each noisy centred sum

    @property
    def sum_sensitivity(self) -> float:
        return math.sqrt(self.job.dimensions) / 2

    def round_event(self) -> GaussianEvent:
        """One round's releases as one Gaussian (noise multiplier 1/μ_round, Δ 1): what
        the ledger is charged per round."""
        return GaussianEvent("clustering-round", 1 / self.mu_round, 1.0)

    def spent(self, rounds: int | None = None) -> float:
        """ε at δ after `rounds` rounds (all of the job's by default), by the PLD."""
        n = self.job.rounds if rounds is None else rounds
        return events_epsilon([self.round_event()] * n, self.job.delta, PLD_DISCRETIZATION)


def sum_share(dimensions: int) -> float:
    """The sums' share of a round's μ²: √d/(√d + 1) (see the module docstring)."""
    root = math.sqrt(dimensions)
    return root / (root + 1)


def plan_clustering(job: ClusterJob) -> ClusterPlan:
    """Calibrate σ so that T rounds, composed by the ledger's PLD, stay within ε.
    Deterministic: the coordinator and every node find the same σ."""
    target = job.epsilon * (1 - CALIBRATION_SLACK)
    for _ in range(20):
        mu = gaussian_mu(target, job.delta)
        mu_round = mu / math.sqrt(job.rounds)
        event = GaussianEvent("clustering-round", 1 / mu_round, 1.0)
        spent = events_epsilon([event] * job.rounds, job.delta, PLD_DISCRETIZATION)
        if spent <= job.epsilon:
            break
        target -= 1.05 * (spent - job.epsilon) + 1e-9 * job.epsilon
    else:  # pragma: no cover
        raise ClusterError("could not calibrate the job's noise to its ε")
    share = sum_share(job.dimensions)
    mu_count = mu_round * math.sqrt(1 - share)
    mu_sum = mu_round * math.sqrt(share)
    return ClusterPlan(
        job=job,
        mu_round=mu_round,
        count_std=1 / mu_count,
        sum_std=(math.sqrt(job.dimensions) / 2) / mu_sum,
    )


# --- the institution's side -----------------------------------------------------------


def feature_matrix(frame: pd.DataFrame, features: tuple[Feature, ...]) -> np.ndarray:
    """The rows of `frame` as points of [0, 1]^d; rows missing a feature are left out."""
    missing = [f.column for f in features if f.column not in frame.columns]
    if missing:
        raise ClusterError(f"the governed data has no column(s) {', '.join(missing)}")
    columns = [
        pd.to_numeric(frame[f.column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        for f in features
    ]
    raw = np.column_stack(columns) if columns else np.zeros((len(frame), 0))
    keep = np.isfinite(raw).all(axis=1)
    return np.column_stack([f.scale(raw[keep, i]) for i, f in enumerate(features)])


def check_centroids(centroids: np.ndarray, job: ClusterJob) -> np.ndarray:
    """The coordinator's centroids, checked: finite, in the unit cube, d columns, at
    most `candidates` rows (the node assigns its rows to whatever centroids it is
    sent: the noise does not depend on them, but a malformed set is refused)."""
    c = np.asarray(centroids, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != job.dimensions or not 1 <= len(c) <= job.candidates:
        raise ClusterError(
            f"the centroids have shape {c.shape}; the job needs 1 to {job.candidates} rows "
            f"of {job.dimensions} values"
        )
    if not np.isfinite(c).all() or c.min() < 0 or c.max() > 1:
        raise ClusterError("the centroids must be finite points of the unit cube [0, 1]^d")
    return c


def nearest(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of each point's nearest centroid (squared Euclidean distance)."""
    d2 = squared_distances(points, centroids)
    return np.argmin(d2, axis=1) if len(points) else np.zeros(0, dtype=np.int64)


def squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    p, c = np.asarray(points, dtype=np.float64), np.asarray(centroids, dtype=np.float64)
    d2 = (p * p).sum(1)[:, None] - 2 * p @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d2, 0.0)


def exact_stats(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster: the count, and the centred sum Σ (x − ½) (no noise: never sent)."""
    k, d = len(centroids), points.shape[1]
    labels = nearest(points, centroids)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, d))
    np.add.at(sums, labels, points - 0.5)
    return counts, sums


@dataclass(frozen=True)
class Release:
    """One institution's round: noisy counts (k) and centred sums (k × d); a withheld
    cluster's count and sum are 0 and `withheld[j]` is True."""

    counts: np.ndarray
    sums: np.ndarray
    withheld: np.ndarray

    def vector(self) -> np.ndarray:
        """Counts, then sums row by row: the layout of the encrypted release."""
        return np.concatenate([self.counts, self.sums.ravel()])


def release_round(
    points: np.ndarray,
    centroids: np.ndarray,
    plan: ClusterPlan,
    rng: NormalSource,
    *,
    min_count: int,
) -> Release:
    """One round at one institution: assign, sum, add noise, withhold small clusters."""
    counts, sums = exact_stats(points, centroids)
    k, d = sums.shape
    noisy_counts = counts + draw(rng, plan.count_std, k)
    noisy_sums = sums + draw(rng, plan.sum_std, k * d).reshape(k, d)
    withheld = noisy_counts < max(min_count, 0)
    noisy_counts[withheld] = 0.0
    noisy_sums[withheld] = 0.0
    return Release(noisy_counts, noisy_sums, withheld)


def release_from_vector(vector: np.ndarray, k: int, d: int, withheld: np.ndarray) -> Release:
    v = np.asarray(vector, dtype=np.float64)
    if v.shape != (k * (d + 1),):
        raise ClusterError(f"a release of {k} clusters in {d} dimensions has {k * (d + 1)} values")
    return Release(v[:k].copy(), v[k:].reshape(k, d).copy(), np.asarray(withheld, dtype=bool))


# --- the coordinator's side ------------------------------------------------------------


def combine_round(
    previous: np.ndarray, counts: np.ndarray, sums: np.ndarray, *, min_total: float = 1.0
) -> np.ndarray:
    """The new centroids from the summed noisy counts and centred sums: ½ + S_j/N_j,
    clipped to the cube (post-processing). A cluster whose noisy total count is below
    `min_total` keeps its previous centroid."""
    counts = np.asarray(counts, dtype=np.float64)
    out = np.array(previous, dtype=np.float64, copy=True)
    live = counts >= max(min_total, 1e-9)
    out[live] = 0.5 + sums[live] / counts[live, None]
    return np.clip(out, 0.0, 1.0)


def random_candidates(job: ClusterJob) -> np.ndarray:
    """Round 1's points: uniform in the cube from the job's public seed."""
    rng = np.random.default_rng(job.seed)
    return rng.uniform(0.0, 1.0, size=(job.candidates, job.dimensions))


def weighted_kmeans(
    points: np.ndarray,
    weights: np.ndarray,
    k: int,
    *,
    seed: int,
    restarts: int = 10,
    iterations: int = 50,
) -> np.ndarray:
    """k centres of weighted `points` (k-means++ seeding, Lloyd, best of `restarts`):
    how the coordinator reduces round 1's noisy candidate means to k centroids. Points
    of weight ≤ 0 are ignored; with fewer useful points than k, the rest are the
    points themselves or random points of the cube."""
    rng = np.random.default_rng(seed)
    keep = np.asarray(weights) > 0
    p, w = np.asarray(points, dtype=np.float64)[keep], np.asarray(weights, dtype=np.float64)[keep]
    d = np.asarray(points).shape[1]
    if len(p) <= k:
        extra = rng.uniform(0.0, 1.0, size=(k - len(p), d))
        return np.vstack([p, extra])
    best, best_cost = p[:k], math.inf
    for _ in range(restarts):
        centres = [p[rng.choice(len(p), p=w / w.sum())]]
        for _ in range(1, k):
            d2 = squared_distances(p, np.array(centres)).min(axis=1) * w
            total = d2.sum()
            pick = rng.choice(len(p), p=d2 / total) if total > 0 else rng.integers(len(p))
            centres.append(p[pick])
        c = np.array(centres)
        for _ in range(iterations):
            labels = nearest(p, c)
            moved = c.copy()
            for j in range(k):
                mask = labels == j
                if w[mask].sum() > 0:
                    moved[j] = (p[mask] * w[mask, None]).sum(0) / w[mask].sum()
            if np.allclose(moved, c):
                break
            c = moved
        cost = float((squared_distances(p, c).min(axis=1) * w).sum())
        if cost < best_cost:
            best, best_cost = c, cost
    return best


def initial_centroids(
    candidates: np.ndarray,
    counts: np.ndarray,
    sums: np.ndarray,
    job: ClusterJob,
    *,
    sum_noise: float = 0.0,
) -> np.ndarray:
    """k centroids from round 1's noisy candidate means, weighted by their noisy counts.

    A candidate that drew few rows has a mean that is mostly noise: its error has norm
    about σ_S·√d/N, with σ_S = `sum_noise` the noise of the summed centred sums (public:
    σ_sum·√institutions). Only candidates whose mean is that precise to within
    `MAX_INIT_ERROR` of the cube's side take part (the best-filled ones if none is)."""
    counts = np.asarray(counts, dtype=np.float64)
    means = combine_round(candidates, counts, sums)
    error = sum_noise * math.sqrt(job.dimensions) / np.maximum(counts, 1e-9)
    live = (counts >= 1.0) & (error <= MAX_INIT_ERROR)
    if live.sum() < job.k:  # too few precise ones: the k best filled
        live = np.zeros(len(counts), dtype=bool)
        live[np.argsort(-counts)[: job.k]] = True
    return weighted_kmeans(means[live], counts[live], job.k, seed=job.seed + 1)


def inertia(points: np.ndarray, centroids: np.ndarray) -> float:
    """Mean squared distance to the nearest centroid, in the scaled space [0, 1]^d."""
    if len(points) == 0:
        return float("nan")
    return float(squared_distances(points, centroids).min(axis=1).mean())


def to_original_units(centroids: np.ndarray, features: tuple[Feature, ...]) -> np.ndarray:
    c = np.asarray(centroids, dtype=np.float64)
    return np.column_stack([f.unscale(c[:, i]) for i, f in enumerate(features)])


def simulate_lloyd(
    parts: list[np.ndarray],
    job: ClusterJob,
    rng: np.random.Generator | None,
    *,
    min_count: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole federated job in one process, on the points of each institution
    (`parts`, already scaled): the same release and combination functions the nodes and
    the coordinator run, without Flower, ledgers or HE. `rng` None: no noise (ε = ∞,
    the non-private reference). Returns the centroids and their noisy sizes."""
    plan = plan_clustering(job) if rng is not None else None

    def one_round(centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.zeros(len(centroids))
        sums = np.zeros((len(centroids), job.dimensions))
        for x in parts:
            if plan is None or rng is None:
                c, s = exact_stats(x, centroids)
            else:
                r = release_round(x, centroids, plan, rng, min_count=min_count)
                c, s = r.counts, r.sums
            counts, sums = counts + c, sums + s
        return counts, sums

    candidates = random_candidates(job)
    counts, sums = one_round(candidates)
    sum_noise = 0.0 if plan is None else plan.sum_std * math.sqrt(len(parts))
    centroids = initial_centroids(candidates, counts, sums, job, sum_noise=sum_noise)
    for _ in range(job.rounds - 1):
        counts, sums = one_round(centroids)
        centroids = combine_round(centroids, counts, sums)
    return centroids, counts


# --- the features from a governance policy ---------------------------------------------


def policy_features(policy: Any, wanted: list[str] | None = None) -> list[Feature]:
    """Features with the policy's public bounds (a numeric column's `min` and `max`).

    `wanted`: column names, or `NAME:LOW:HIGH` to state the bounds in the job; None: every
    int or float column the policy bounds on both sides and does not tag as an
    identifier or a sensitive attribute."""
    columns = policy.columns
    if wanted is None:
        names = [
            name
            for name, rule in columns.items()
            if rule.type in ("int", "float")
            and rule.min is not None
            and rule.max is not None
            and rule.tag not in ("identifier", "sensitive")
            and name != policy.label
        ]
        if not names:
            raise ClusterError(
                "the policy bounds no numeric column on both sides; name the features with "
                "their bounds, e.g. --features age:17:90,hours-per-week:1:99"
            )
        wanted = names
    out = []
    for item in wanted:
        name, *bounds = item.split(":")
        if bounds:
            if len(bounds) != 2:
                raise ClusterError(f"feature {item!r}: write NAME or NAME:LOW:HIGH")
            try:
                out.append(Feature(name, float(bounds[0]), float(bounds[1])))
            except ValueError:
                raise ClusterError(f"feature {item!r}: LOW and HIGH must be numbers") from None
            continue
        rule = columns.get(name)
        if rule is None:
            raise ClusterError(f"feature {name!r} is not a column of the governance policy")
        if rule.type not in ("int", "float"):
            raise ClusterError(f"feature {name!r} is of type {rule.type}, not a number")
        if rule.tag == "identifier" or rule.pii in ("drop", "hash"):
            raise ClusterError(f"feature {name!r} is an identifier in the policy")
        if rule.min is None or rule.max is None:
            raise ClusterError(
                f"the policy gives feature {name!r} no min and max; state its public bounds "
                f"in the job: {name}:LOW:HIGH"
            )
        out.append(Feature(name, float(rule.min), float(rule.max)))
    return out


# --- a job file (a deployed run: the coordinator holds no node's policy) ---------------

JOB_FILE_KEYS = {"k", "epsilon", "rounds", "delta", "seed", "candidates", "min_count", "features"}


def load_job_file(path: Any) -> ClusterJob:
    """A clustering job from a YAML file that states every feature's bounds:

    k: 4
    epsilon: 1.0          # the whole job's ε at each institution
    rounds: 6             # optional (default 6)
    delta: 1.0e-5         # optional
    seed: 0               # optional: the random candidates' public seed
    min_count: 10         # optional: a node uses the larger of this and its policy's
    features: [age:17:90, education-num:1:16, hours-per-week:1:99]
    """
    from pathlib import Path

    import yaml

    file = Path(path)
    try:
        doc = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise ClusterError(f"cannot read the job file {file} ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ClusterError(f"the job file {file} is not YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ClusterError(f"the job file {file} must be a mapping (k, epsilon, features, ...)")
    unknown = sorted(set(map(str, doc)) - JOB_FILE_KEYS)
    if unknown:
        raise ClusterError(f"the job file {file} has unknown key(s) {', '.join(unknown)}")
    for key in ("k", "epsilon", "features"):
        if key not in doc:
            raise ClusterError(f"the job file {file} lacks '{key}'")
    items = doc["features"]
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ClusterError("features must be a list of NAME:LOW:HIGH")
    features = []
    for item in items:
        parts = item.split(":")
        if len(parts) != 3:
            raise ClusterError(
                f"feature {item!r}: a deployed job states every bound (NAME:LOW:HIGH); the "
                "coordinator holds no node's policy"
            )
        try:
            features.append(Feature(parts[0], float(parts[1]), float(parts[2])))
        except ValueError:
            raise ClusterError(f"feature {item!r}: LOW and HIGH must be numbers") from None
    try:
        return make_job(
            features,
            k=doc["k"],
            epsilon=float(doc["epsilon"]),
            delta=float(doc.get("delta", 1e-5)),
            rounds=int(doc.get("rounds", 6)),
            seed=int(doc.get("seed", 0)),
            candidates=int(doc["candidates"]) if "candidates" in doc else None,
            min_count=int(doc.get("min_count", 0)),
        )
    except (TypeError, ValueError) as exc:
        raise ClusterError(f"the job file {file}: {exc}") from None
