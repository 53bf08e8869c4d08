"""The privacy budget ledger: what this institution has spent on one dataset.

Where a budget is charged: `PrivacyLedger.charge`, called by the node after each
round of DP-SGD, and before each release of evaluation figures (privacy/metrics.py).
Before training, `PrivacyLedger.check` refuses a round that would go over the budget.

The ledger is a small JSON file per node and dataset, written atomically, keyed to the
dataset's source (client/data.py `ledger_key`), so a policy edit never opens a fresh
budget. It holds the mechanisms themselves, one event per release (a Poisson-subsampled
Gaussian: noise multiplier, sample rate and steps; or a Gaussian: noise std,
sensitivity, count; with run id, round and release kind), so any accountant can
recompute ε from the ledger alone, at any time, across runs and restarts. A checksum
over the body catches a damaged or edited file; a damaged ledger is an error, never a
silent reset.

A ledger could simply be deleted. So the node also keeps a registry of datasets
it has trained on (`trained.json`, beside the ledger): a missing ledger for a
registered dataset is an error too. Resetting is `aidmp ledger reset`, which is
logged in `ledger-admin.log`.

Accountants (`epsilon_of`): "pld" (the default) is Google's `dp_accounting` privacy
loss distribution, tight for these mechanisms; "rdp" and "prv" are Opacus's. RDP is
looser: σ 1.18, q 0.032, 310 steps, δ 1e-5 is ε 2.97 under RDP and 2.66 under PLD.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from scipy.special import log_ndtr, ndtr

from aidmp.atomic import atomic_write_json
from aidmp.errors import DeclineCode, PrivacyError

_log = logging.getLogger("aidmp.privacy")

if TYPE_CHECKING:  # imported where used: a node that only reads its ledger (to decrypt a
    # sum, to show it) need not load dp_accounting, a good part of a process's start-up
    import dp_accounting
    from dp_accounting.pld import privacy_loss_distribution as pld

Accountant = Literal["pld", "rdp", "prv"]
ACCOUNTANTS: tuple[Accountant, ...] = ("pld", "rdp", "prv")
DEFAULT_ACCOUNTANT: Accountant = "pld"
# Format 1 entries were all DP-SGD rounds, without a "mechanism" and accounted by the
# ledger's one accountant; `PrivacyLedger.load` reads them as format 2.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
LEDGER_NAME = "ledger.json"
REGISTRY_NAME = "trained.json"
ADMIN_LOG_NAME = "ledger-admin.log"
LOCK_NAME = "ledger.lock"


def _opacus_rdp() -> Any:
    """Opacus's RDP analysis. Imported on use: importing any part of Opacus loads all of
    it (seconds), and a ledger under PLD, the default, needs none of it."""
    from opacus.accountants.analysis import rdp

    return rdp


def _rdp_orders() -> list[float]:
    from opacus.accountants import RDPAccountant

    return list(RDPAccountant.DEFAULT_ALPHAS)


# What a release was, entry by entry ("release_kind"; an entry without one is training's):
# a trained update, or a node's evaluation figures (privacy/metrics.py). Each kind counts
# its own releases of a round.
TRAINING = "training"
METRICS = "metrics"
# A ledger keyed to its data source (client/data.py `dataset_id`) says so. One without
# it is older: keyed to a fingerprint of the rows it trained on, after governance.
KEYED_TO_SOURCE = "data-source"
# The PLD's grid of privacy-loss values, refined until ε stops moving. A fixed grid
# is either slow (a fine one where the loss is wide: small σ) or loose (a coarse one
# where many steps each lose little: 30,000 steps of σ 4 give ε 1.94 on a 1e-2 grid,
# 0.69 on 1e-3 and 0.63 on 1e-4). Rounding is pessimistic on every grid, so each
# figure is an upper bound; halving the grid until ε moves by less than this fraction
# keeps it within about that much of the exact ε. Changing these changes recomputed
# figures (`verify`).
PLD_COARSEST = 1e-2
PLD_FINEST = 1e-5
PLD_RELATIVE_ERROR = 1e-3


@contextlib.contextmanager
def ledger_lock(folder: Path) -> Iterator[None]:
    """Hold this node's ledgers for one release: open, check, train, charge.

    Flower starts a ClientApp process per message, so two releases can train at once
    (a dead run's late message beside a resumed run's). Each would check and charge its
    own copy of the ledger, and the second write would drop the first charge. POSIX
    `flock`; it does not hold across machines on a network file system.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class BudgetExhausted(PrivacyError):
    """This round would take the dataset past its ε budget."""

    decline_code = DeclineCode.BUDGET_EXHAUSTED


@dataclass(frozen=True)
class Charge:
    """A Poisson-subsampled Gaussian mechanism run `steps` times: DP-SGD's rounds.

    Each step samples every row with probability `sample_rate`, clips each sampled
    row's contribution to norm C and adds N(0, (σC)²) to the sum, σ = `noise_multiplier`.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    mechanism: ClassVar[str] = "poisson-subsampled-gaussian"

    def as_tuple(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)

    def as_entry(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }


@dataclass(frozen=True)
class GaussianRelease:
    """A plain Gaussian mechanism, `count` times: a statistic of L2 sensitivity
    `sensitivity` released with N(0, noise_std²) noise (an analytics query).

    For every accountant it is the subsampled one with the whole population sampled:
    σ = noise_std / sensitivity, q = 1, `count` steps.
    """

    noise_std: float
    sensitivity: float
    count: int = 1

    mechanism: ClassVar[str] = "gaussian"

    def as_charge(self) -> Charge:
        return Charge(self.noise_std / self.sensitivity, 1.0, self.count)

    def as_entry(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "noise_std": self.noise_std,
            "sensitivity": self.sensitivity,
            "count": self.count,
        }


Event = Charge | GaussianRelease


def event_of(entry: dict[str, Any]) -> Event:
    """The mechanism a ledger entry records (format 2; `load` migrates format 1)."""
    mechanism = entry.get("mechanism")
    if mechanism == Charge.mechanism:
        return Charge(
            float(entry["noise_multiplier"]), float(entry["sample_rate"]), int(entry["steps"])
        )
    if mechanism == GaussianRelease.mechanism:
        return GaussianRelease(
            float(entry["noise_std"]), float(entry["sensitivity"]), int(entry["count"])
        )
    raise PrivacyError(f"ledger entry of unknown mechanism {mechanism!r}; upgrade aidmp")


def _grouped(events: Sequence[Event]) -> list[Charge]:
    """The same mechanisms, each (σ, q) once with its steps summed, in a fixed order.

    Composing a mechanism s₁ times and then s₂ times is composing it s₁ + s₂ times, so
    ε is unchanged; but the PLD is computed once per (σ, q), and the figure depends on
    the multiset of events only, not on how a run split its steps into rounds: a plan
    for ten rounds and the ledger after those ten rounds are the same computation.
    """
    steps: dict[tuple[float, float], int] = {}
    for event in events:
        c = event.as_charge() if isinstance(event, GaussianRelease) else event
        key = (c.noise_multiplier, c.sample_rate)
        steps[key] = steps.get(key, 0) + c.steps
    grouped = [Charge(sigma, q, n) for (sigma, q), n in sorted(steps.items()) if n > 0]
    # Un-subsampled Gaussians (q = 1: evaluation figures, statistics) compose exactly into
    # one Gaussian: μ² = Σ steps/σ² for every accountant here (the privacy loss of each is
    # normal), so they cost one PLD (or a closed form) however many the ledger holds.
    plain = [c for c in grouped if c.sample_rate == 1.0]
    if len(plain) > 1 or (plain and plain[0].steps > 1):
        if any(c.noise_multiplier <= 0 for c in plain):
            return grouped  # no privacy: epsilon_of says infinite
        mu2 = sum(c.steps / c.noise_multiplier**2 for c in plain)
        grouped = [c for c in grouped if c.sample_rate != 1.0] + [Charge(mu2**-0.5, 1.0, 1)]
    return grouped


def gaussian_epsilon(mu: float, delta: float) -> float:
    """ε at δ of the Gaussian mechanism with μ = sensitivity/σ, exactly: the smallest ε
    with Φ(μ/2 − ε/μ) − e^ε·Φ(−μ/2 − ε/μ) ≤ δ (Balle and Wang 2018, Theorem 8)."""

    def delta_of(eps: float) -> float:
        return float(ndtr(mu / 2 - eps / mu) - math.exp(eps + log_ndtr(-mu / 2 - eps / mu)))

    if delta_of(0.0) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while delta_of(high) > delta:
        low, high = high, high * 2
    for _ in range(100):  # to float precision
        mid = (low + high) / 2
        if delta_of(mid) > delta:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * high:
            break
    return high


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    # The costly part of RDP accounting (0.5 s for a large q); linear in steps.
    return _opacus_rdp().compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=_rdp_orders()
    )


@functools.lru_cache(maxsize=256)
def _pld_of(charge: Charge, discretization: float) -> pld.PrivacyLossDistribution:
    # As dp_accounting's PLDAccountant composes PoissonSampledDpEvent(q, GaussianDpEvent(σ))
    # self-composed `steps` times (add-or-remove-one neighbours).
    from dp_accounting.pld import privacy_loss_distribution as pld

    return pld.from_gaussian_mechanism(
        standard_deviation=charge.noise_multiplier,
        sampling_prob=charge.sample_rate,
        value_discretization_interval=discretization,
    ).self_compose(charge.steps)


def pld_of(events: Sequence[Event], discretization: float) -> pld.PrivacyLossDistribution | None:
    """The privacy loss distribution of all `events` composed; None if there are none."""
    composed = None
    for charge in _grouped(events):
        one = _pld_of(charge, discretization)
        composed = one if composed is None else composed.compose(one)
    return composed


def dp_event_of(events: list[Event]) -> dp_accounting.DpEvent:
    """The events as one `dp_accounting` event, for any of its accountants."""
    import dp_accounting

    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    c.sample_rate, dp_accounting.GaussianDpEvent(c.noise_multiplier)
                ),
                c.steps,
            )
            for c in _grouped(events)
        ]
    )


def _pld_epsilon(charges: list[Charge], delta: float) -> float:
    if len(charges) == 1 and charges[0].sample_rate == 1.0:  # one Gaussian: in closed form
        return gaussian_epsilon(charges[0].steps ** 0.5 / charges[0].noise_multiplier, delta)

    def on_grid(discretization: float) -> float:
        composed = pld_of(charges, discretization)
        assert composed is not None
        return float(composed.get_epsilon_for_delta(delta))

    grid = PLD_COARSEST
    eps = on_grid(grid)
    while grid / 2 >= PLD_FINEST and math.isfinite(eps):
        grid /= 2
        finer = on_grid(grid)
        if eps - finer <= PLD_RELATIVE_ERROR * finer:
            return finer
        eps = finer
    return eps


def epsilon_of(
    events: list[Event], delta: float, accountant: Accountant = DEFAULT_ACCOUNTANT
) -> float:
    """ε (for `delta`) of all `events` composed, by `accountant`.

    PLD: dp_accounting's privacy loss distributions (pessimistic), on a grid halved from
    `PLD_COARSEST` until ε settles (a test checks it against `dp_accounting`'s own
    `PLDAccountant`). A σ of 0 is no privacy: ε is infinite. RDP composes Opacus's own
    `compute_rdp` per (σ, q), cached, and sums it over the steps exactly as
    `RDPAccountant.get_privacy_spent` does (a test checks they agree). PRV is Opacus's
    `PRVAccountant` itself.
    """
    charges = _grouped(events)
    if not charges:
        return 0.0
    if any(c.noise_multiplier <= 0 for c in charges):
        return math.inf
    if accountant == "pld":
        return _pld_epsilon(charges, delta)
    if accountant == "rdp":
        rdp = sum(_rdp_per_step(c.noise_multiplier, c.sample_rate) * c.steps for c in charges)
        # Opacus warns when the best order is at the edge of its grid ("Optimal order is
        # the largest alpha"): advice for whoever picks the orders, not for a privacy
        # officer's console. It is logged at debug level.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            eps, _ = _opacus_rdp().get_privacy_spent(orders=_rdp_orders(), rdp=rdp, delta=delta)
        for warning in caught:
            _log.debug("RDP accountant: %s", warning.message)
        return float(eps)
    if accountant == "prv":
        from opacus.accountants import PRVAccountant

        acct = PRVAccountant()
        acct.history = [c.as_tuple() for c in charges]
        return float(acct.get_epsilon(delta))
    raise PrivacyError(f"dp-accountant {accountant!r} is not one of {ACCOUNTANTS}")


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class PrivacyLedger:
    """The spend of one dataset at one institution. Open with `PrivacyLedger.open`."""

    def __init__(self, path: Path, body: dict[str, Any]) -> None:
        self.path = path
        self._body = body

    # --- opening -----------------------------------------------------------
    @classmethod
    def open(
        cls,
        folder: Path,
        *,
        dataset: str,
        budget_epsilon: float,
        delta: float,
        accountant: Accountant = DEFAULT_ACCOUNTANT,
    ) -> PrivacyLedger:
        """Open the ledger in `folder` for `dataset` (the key of the node's data source,
        client/data.py `dataset_id`), creating it only if this node has never trained on
        that dataset. `accountant` is a new ledger's; an existing one keeps its own until
        `use_accountant`. An older ledger, keyed to a fingerprint of its governed rows, is
        moved to `dataset` (`rekey`)."""
        path = folder / LEDGER_NAME
        if path.exists():
            ledger = cls.load(path)
            if ledger.dataset != dataset:
                if not ledger.keyed_to_source:
                    ledger.rekey(dataset)
                    _write_registry(folder, _read_registry(folder) | {dataset})
                    return ledger
                raise PrivacyError(
                    f"ledger {path} belongs to other data (dataset {ledger.dataset[:12]}…, "
                    f"this node's data is {dataset[:12]}…); give each dataset its own ledger "
                    "folder (a data file that moved keeps its ledger if the node config names "
                    "its dataset-id)"
                )
            return ledger
        if dataset in _read_registry(folder) or _legacy_registry(folder):
            raise PrivacyError(
                f"ledger {path} is missing, but this node has trained on dataset "
                f"{dataset[:12]}… before ({folder / REGISTRY_NAME}); restore the ledger from a "
                "backup, or reset it explicitly with `aidmp ledger reset`"
            )
        body = {
            "format": FORMAT_VERSION,
            "dataset": dataset,
            "keyed_to": KEYED_TO_SOURCE,
            "accountant": accountant,
            "delta": delta,
            "budget_epsilon": budget_epsilon,
            "created": _now(),
            "entries": [],
        }
        ledger = cls(path, body)
        ledger._save()
        _write_registry(folder, _read_registry(folder) | {dataset})
        return ledger

    @classmethod
    def load(cls, path: Path) -> PrivacyLedger:
        """Read and check a ledger file; any damage is a clear error. A format 1 ledger
        is read as format 2 (`_migrated`), and written as such on its next change."""
        try:
            doc = json.loads(path.read_text())
            body, stored = doc["body"], doc["sha256"]
        except FileNotFoundError:
            raise PrivacyError(f"no ledger at {path}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PrivacyError(
                f"ledger {path} is unreadable ({exc.__class__.__name__}); no training on an "
                "unverifiable budget: restore it from a backup, or `aidmp ledger reset`"
            ) from None
        if _checksum(body) != stored:
            raise PrivacyError(
                f"ledger {path} fails its checksum (damaged or edited); no training on an "
                "unverifiable budget: restore it from a backup, or `aidmp ledger reset`"
            )
        if body.get("format") not in READABLE_FORMATS:
            raise PrivacyError(
                f"ledger {path} has format {body.get('format')}, not one of {READABLE_FORMATS}; "
                "upgrade aidmp to read it"
            )
        if body["format"] == 1:
            body = _migrated(body)
        return cls(path, body)

    def _save(self) -> None:
        atomic_write_json(self.path, {"body": self._body, "sha256": _checksum(self._body)})

    # --- reading -------------------------------------------------------------
    @property
    def dataset(self) -> str:
        return str(self._body["dataset"])

    @property
    def delta(self) -> float:
        return float(self._body["delta"])

    @property
    def budget(self) -> float:
        return float(self._body["budget_epsilon"])

    @property
    def accountant(self) -> Accountant:
        return self._body["accountant"]

    @property
    def entries(self) -> list[dict[str, Any]]:
        return list(self._body["entries"])

    @property
    def events(self) -> list[Event]:
        """The mechanism of every entry, in order: all any accountant needs."""
        return [event_of(e) for e in self._body["entries"]]

    @property
    def accountant_changes(self) -> list[dict[str, Any]]:
        return list(self._body.get("accountant_changes", []))

    @property
    def keyed_to_source(self) -> bool:
        """Whether `dataset` is the key of the data source (else an older fingerprint)."""
        return self._body.get("keyed_to") == KEYED_TO_SOURCE

    @property
    def dataset_changes(self) -> list[dict[str, Any]]:
        return list(self._body.get("dataset_changes", []))

    def spent(self, accountant: Accountant | None = None) -> float:
        """ε spent so far, by the ledger's accountant or another one."""
        return _epsilon(tuple(self.events), self.delta, accountant or self.accountant)

    def epsilon_after(self, charge: Event) -> float:
        """ε if `charge` were spent next."""
        return _epsilon((*self.events, charge), self.delta, self.accountant)

    def use_accountant(self, accountant: Accountant) -> None:
        """Account with `accountant` from now on, recorded in the ledger.

        The budget and δ stay fixed; the accountant is only how ε is computed from the
        same mechanisms, and each one is an upper bound on the same guarantee. So a
        ledger kept under RDP may move to the tighter PLD, and back: every change is
        entered with the spend it showed before and after, and `verify` recomputes each
        entry with the accountant that recorded it.
        """
        if accountant not in ACCOUNTANTS:
            raise PrivacyError(f"dp-accountant {accountant!r} is not one of {ACCOUNTANTS}")
        if accountant == self.accountant:
            return
        change = {"time": _now(), "from": self.accountant, "to": accountant,
                  "entries": len(self._body["entries"]), "spent_before": self.spent(),
                  "spent_after": self.spent(accountant)}  # fmt: skip
        self._body["accountant_changes"] = [*self.accountant_changes, change]
        self._body["accountant"] = accountant
        self._save()

    def rekey(self, dataset: str) -> None:
        """Key an older ledger to its data source from now on, recorded in the ledger.

        Older ledgers were keyed to a fingerprint of the rows a node trained on after
        governance, so a policy edit or a new row opened a new ledger: a fresh budget for
        the same people. The population is the node's data source, and the ledger in this
        folder is the one it has been charging; so the ledger moves to the source's key,
        with every entry it holds, and never starts afresh. (Had the folder's ledger come
        from other data, this charges that data's budget too: more spend, never less.)
        """
        change = {"time": _now(), "from": self.dataset, "to": dataset,
                  "entries": len(self._body["entries"]),
                  "reason": "keyed to the data source, no longer to the governed rows"}  # fmt: skip
        self._body["dataset_changes"] = [*self.dataset_changes, change]
        self._body["dataset"] = dataset
        self._body["keyed_to"] = KEYED_TO_SOURCE
        self._save()

    # --- spending ------------------------------------------------------------
    def check(self, charge: Event) -> float:
        """Raise BudgetExhausted if `charge` would go over budget; else the ε after it."""
        spent, after = self.spent(), self.epsilon_after(charge)
        if after > self.budget + 1e-9:
            raise BudgetExhausted(
                f"privacy budget exhausted: eps {spent:.2f} of {self.budget:.2f} spent, "
                f"this round needs {after - spent:.2f}"
            )
        return after

    def releases_of(self, job_id: str, round: int, kind: str = TRAINING) -> int:
        """How many releases of `kind` (updates, or evaluation figures) this node has made
        for `round` of training job `job_id`."""
        return sum(
            1
            for e in self._body["entries"]
            if e.get("job_id", e["run_id"]) == job_id
            and e["round"] == round
            and e.get("release_kind", TRAINING) == kind
        )

    def charge(
        self,
        charge: Event,
        *,
        run_id: str,
        round: int,
        job_id: str | None = None,
        message_id: str = "",
        kind: str = TRAINING,
    ) -> float:
        """Record one release (a trained update about to leave, or a noised statistic, of
        `kind`); returns ε spent so far.

        Written atomically, before the update is handed to Flower to send: an update
        never leaves uncharged, and one cut short by a crash stays charged. `job_id`
        names the training job across coordinator restarts (each restart is a new Flower
        run); a round of a job released again is entered again, as release 2, 3, ...
        """
        after = self.epsilon_after(charge)
        job_id = job_id or run_id
        self._body["entries"].append(
            {
                "run_id": run_id,
                "job_id": job_id,
                "round": round,
                "release": self.releases_of(job_id, round, kind) + 1,
                "release_kind": kind,
                "message_id": message_id,
                **charge.as_entry(),
                "accountant": self.accountant,
                "epsilon_after": after,
                "time": _now(),
            }
        )
        self._save()
        return after

    def verify(self) -> list[str]:
        """Recompute ε after every entry from the mechanisms, with the accountant that
        recorded it; recount every round's releases, and look for a message charged
        twice; list each disagreement."""
        problems = []
        try:
            events = self.events
        except (PrivacyError, KeyError, TypeError, ValueError) as exc:
            return [f"an entry does not name its mechanism in full: {exc!r}"]
        releases: dict[tuple[str, int, str], int] = {}
        seen: dict[str, int] = {}
        for i, entry in enumerate(self._body["entries"]):
            job = (
                entry.get("job_id", entry["run_id"]),
                entry["round"],
                entry.get("release_kind", TRAINING),
            )
            releases[job] = releases.get(job, 0) + 1
            if entry.get("release", 1) != releases[job]:
                problems.append(
                    f"entry {i} (job {job[0]}, round {job[1]}): recorded as release "
                    f"{entry.get('release', 1)}, but it is release {releases[job]} of that round"
                )
            message = entry.get("message_id", "")
            if message and message in seen:
                problems.append(
                    f"entry {i}: message {message} was already charged in entry {seen[message]}"
                )
            seen.setdefault(message, i)
            accountant = entry.get("accountant", self.accountant)
            again = _epsilon(tuple(events[: i + 1]), self.delta, accountant)
            if abs(again - entry["epsilon_after"]) > 1e-6 * max(1.0, again):
                problems.append(
                    f"entry {i} (run {entry['run_id']}, round {entry['round']}): recorded eps "
                    f"{entry['epsilon_after']:.6f}, recomputed {again:.6f}"
                )
        return problems


@functools.lru_cache(maxsize=256)
def _epsilon(events: tuple[Event, ...], delta: float, accountant: Accountant) -> float:
    # A node asks for the same figure several times a round (plan, check, charge).
    return epsilon_of(list(events), delta, accountant)


def _migrated(body: dict[str, Any]) -> dict[str, Any]:
    """A format 1 body as format 2: every entry was a DP-SGD round (σ, q, steps) that the
    ledger's one accountant recorded, so the mechanism and accountant go in as such."""
    entries = [
        {**e, "mechanism": Charge.mechanism, "accountant": body["accountant"]}
        for e in body["entries"]
    ]
    return {**body, "format": FORMAT_VERSION, "migrated_from": 1, "entries": entries}


def _read_registry(folder: Path) -> set[str]:
    path = folder / REGISTRY_NAME
    if not path.exists():
        return set()
    try:
        return set(json.loads(path.read_text())["datasets"])
    except (OSError, ValueError, KeyError, TypeError):
        raise PrivacyError(f"{path} is unreadable; restore it from a backup") from None


def _write_registry(folder: Path, datasets: set[str]) -> None:
    atomic_write_json(
        folder / REGISTRY_NAME, {"datasets": sorted(datasets), "keyed_to": KEYED_TO_SOURCE}
    )


def _legacy_registry(folder: Path) -> bool:
    """A registry of datasets written before ledgers were keyed to their data source: its
    fingerprints cannot be matched to a source key, so a missing ledger beside one is
    treated as this data's (restore it, or reset)."""
    path = folder / REGISTRY_NAME
    if not path.exists() or not _read_registry(folder):
        return False
    return json.loads(path.read_text()).get("keyed_to") != KEYED_TO_SOURCE


def reset_ledger(folder: Path, *, reason: str, who: str) -> Path | None:
    """The explicit admin reset: set the old ledger aside, forget the dataset, log it.

    Under the ledger's lock, as a release is (`ledger_lock`): a node that opened the
    ledger before the reset charges it before the reset sets it aside, and one that opens
    it after finds the reset done. Without the lock, a charge in flight would write the
    old ledger, with its charge, back over the reset.
    """
    if not reason.strip():
        raise PrivacyError("a ledger reset needs a reason (--reason)")
    with ledger_lock(folder):
        return _reset(folder, reason=reason, who=who)


def _reset(folder: Path, *, reason: str, who: str) -> Path | None:
    path = folder / LEDGER_NAME
    kept = None
    dataset = None
    if path.exists():
        stamp = f"ledger.reset-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
        kept = path.with_name(f"{stamp}.json")
        for n in range(2, 1000):  # two resets in one second: keep both
            if not kept.exists():
                break
            kept = path.with_name(f"{stamp}-{n}.json")
        path.rename(kept)
        try:
            dataset = json.loads(kept.read_text())["body"]["dataset"]
        except (ValueError, KeyError, TypeError):
            dataset = None
    registry = _read_registry(folder) if (folder / REGISTRY_NAME).exists() else set()
    forget = {dataset} if dataset else registry
    _write_registry(folder, registry - forget)
    with open(folder / ADMIN_LOG_NAME, "a", encoding="utf-8") as log:
        log.write(
            json.dumps(
                {
                    "time": _now(),
                    "action": "reset",
                    "by": who,
                    "reason": reason,
                    "kept_as": str(kept) if kept else None,
                    "forgot": sorted(forget),
                }
            )  # fmt: skip
            + "\n"
        )
    return kept
