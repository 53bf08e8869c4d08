"""The privacy budget ledger: what this institution has spent on one dataset.

Where a budget is charged: `PrivacyLedger.charge`, called by the node after each
round of DP-SGD. Before training, `PrivacyLedger.check` refuses a round that would
go over the budget.

The ledger is a small JSON file per node and dataset, written atomically. It holds
the accountant's history itself (noise multiplier, sample rate and steps of every
round, with run id and round), so ε can be recomputed and audited at any time,
across runs and restarts. A checksum over the body catches a damaged or edited
file; a damaged ledger is an error, never a silent reset.

A ledger could simply be deleted. So the node also keeps a registry of datasets
it has trained on (`trained.json`, beside the ledger): a missing ledger for a
registered dataset is an error too. Resetting is `aidmp ledger reset`, which is
logged in `ledger-admin.log`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from aidmp.atomic import atomic_write_json
from aidmp.errors import DeclineCode, PrivacyError

Accountant = Literal["rdp", "prv"]
FORMAT_VERSION = 1
LEDGER_NAME = "ledger.json"
REGISTRY_NAME = "trained.json"
ADMIN_LOG_NAME = "ledger-admin.log"
LOCK_NAME = "ledger.lock"
RDP_ORDERS = RDPAccountant.DEFAULT_ALPHAS


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
    """One round of DP-SGD as the accountant sees it."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def as_tuple(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    # The costly part of RDP accounting (0.5 s for a large q); linear in steps.
    return rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDP_ORDERS
    )


def epsilon_of(charges: list[Charge], delta: float, accountant: Accountant = "rdp") -> float:
    """ε after all `charges`, over the same history and orders as Opacus's accountant.

    RDP composes Opacus's own `compute_rdp` per (σ, q), cached, and sums it over the
    steps exactly as `RDPAccountant.get_privacy_spent` does (a test checks they agree).
    PRV is Opacus's `PRVAccountant` itself.
    """
    if not charges:
        return 0.0
    if accountant == "rdp":
        rdp = sum(_rdp_per_step(c.noise_multiplier, c.sample_rate) * c.steps for c in charges)
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
        return float(eps)
    acct = PRVAccountant()
    acct.history = [c.as_tuple() for c in charges]
    return float(acct.get_epsilon(delta))


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
        accountant: Accountant = "rdp",
    ) -> PrivacyLedger:
        """Open the ledger in `folder` for `dataset` (a fingerprint), creating it only if
        this node has never trained on that dataset."""
        path = folder / LEDGER_NAME
        if path.exists():
            ledger = cls.load(path)
            if ledger.dataset != dataset:
                raise PrivacyError(
                    f"ledger {path} belongs to other data (dataset {ledger.dataset[:12]}…, "
                    f"this node's data is {dataset[:12]}…); give each dataset its own ledger "
                    "folder"
                )
            return ledger
        if dataset in _read_registry(folder):
            raise PrivacyError(
                f"ledger {path} is missing, but this node has trained on dataset "
                f"{dataset[:12]}… before ({folder / REGISTRY_NAME}); restore the ledger from a "
                "backup, or reset it explicitly with `aidmp ledger reset`"
            )
        body = {
            "format": FORMAT_VERSION,
            "dataset": dataset,
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
        """Read and check a ledger file; any damage is a clear error."""
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
        if body.get("format") != FORMAT_VERSION:
            raise PrivacyError(
                f"ledger {path} has format {body.get('format')}, not {FORMAT_VERSION}"
            )
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
    def charges(self) -> list[Charge]:
        return [
            Charge(e["noise_multiplier"], e["sample_rate"], e["steps"])
            for e in self._body["entries"]
        ]

    def spent(self) -> float:
        return epsilon_of(self.charges, self.delta, self.accountant)

    def epsilon_after(self, charge: Charge) -> float:
        """ε if `charge` were spent next."""
        return epsilon_of([*self.charges, charge], self.delta, self.accountant)

    # --- spending ------------------------------------------------------------
    def check(self, charge: Charge) -> float:
        """Raise BudgetExhausted if `charge` would go over budget; else the ε after it."""
        spent, after = self.spent(), self.epsilon_after(charge)
        if after > self.budget + 1e-9:
            raise BudgetExhausted(
                f"privacy budget exhausted: eps {spent:.2f} of {self.budget:.2f} spent, "
                f"this round needs {after - spent:.2f}"
            )
        return after

    def releases_of(self, job_id: str, round: int) -> int:
        """How many updates this node has released for `round` of training job `job_id`."""
        return sum(
            1
            for e in self._body["entries"]
            if e.get("job_id", e["run_id"]) == job_id and e["round"] == round
        )

    def charge(
        self,
        charge: Charge,
        *,
        run_id: str,
        round: int,
        job_id: str | None = None,
        message_id: str = "",
    ) -> float:
        """Record one release (a trained update about to leave); returns ε spent so far.

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
                "release": self.releases_of(job_id, round) + 1,
                "message_id": message_id,
                "noise_multiplier": charge.noise_multiplier,
                "sample_rate": charge.sample_rate,
                "steps": charge.steps,
                "epsilon_after": after,
                "time": _now(),
            }
        )
        self._save()
        return after

    def verify(self) -> list[str]:
        """Recompute ε after every entry from the history, recount every round's releases,
        and look for a message charged twice; list each disagreement."""
        problems = []
        releases: dict[tuple[str, int], int] = {}
        seen: dict[str, int] = {}
        for i, entry in enumerate(self._body["entries"]):
            job = (entry.get("job_id", entry["run_id"]), entry["round"])
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
            again = epsilon_of(self.charges[: i + 1], self.delta, self.accountant)
            if abs(again - entry["epsilon_after"]) > 1e-6 * max(1.0, again):
                problems.append(
                    f"entry {i} (run {entry['run_id']}, round {entry['round']}): recorded eps "
                    f"{entry['epsilon_after']:.6f}, recomputed {again:.6f}"
                )
        return problems


def _read_registry(folder: Path) -> set[str]:
    path = folder / REGISTRY_NAME
    if not path.exists():
        return set()
    try:
        return set(json.loads(path.read_text())["datasets"])
    except (OSError, ValueError, KeyError, TypeError):
        raise PrivacyError(f"{path} is unreadable; restore it from a backup") from None


def _write_registry(folder: Path, datasets: set[str]) -> None:
    atomic_write_json(folder / REGISTRY_NAME, {"datasets": sorted(datasets)})


def reset_ledger(folder: Path, *, reason: str, who: str) -> Path | None:
    """The explicit admin reset: set the old ledger aside, forget the dataset, log it."""
    if not reason.strip():
        raise PrivacyError("a ledger reset needs a reason (--reason)")
    path = folder / LEDGER_NAME
    kept = None
    dataset = None
    if path.exists():
        kept = path.with_name(f"ledger.reset-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json")
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
