"""The governance pipeline a node runs on its data before it joins a round.

Steps, in order: schema (columns, types, ranges, categories), PII scan and
sensitivity tags, consent filter, deduplication, missing values, outliers, PII
actions (drop, keyed hash, generalize, mask), k-anonymity on the quasi-identifiers,
the minimum row count, then the decision. Training sees only the returned frame: the
label and the feature columns, with identifiers, the consent column and any column
the policy does not know removed, and free text with its identifiers masked.

k-anonymity with `action: generalize` coarsens the quasi-identifiers column by column
(`_KGeneralizer`): numbers into ever wider bands, text to ever shorter prefixes, and
at last a column to a single value, choosing at each step the column whose next level
loses least, and keeping the state along that path with the least information loss
(rows suppressed count as fully lost); the rows still in groups under k are then
suppressed. The local report says, per column, what was kept, and the rows and the
share of information lost.

Two kinds of reasons come out. The local report keeps exact counts and example
values for the institution's staff. The reasons and the summary that may leave
the site carry no values, and every count below the policy's `min_count` is
replaced by "fewer than N" or withheld (governance/report.py).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import polars as pl

from aidmp.errors import snippet
from aidmp.governance.cells import inert
from aidmp.governance.pii import PiiFinding, scan_frame
from aidmp.governance.policy import DIRECT_IDENTIFIERS, ColumnRule, Policy
from aidmp.governance.textscan import mask_text

TRUE_WORDS = frozenset({"true", "yes", "y", "1", "t"})
FALSE_WORDS = frozenset({"false", "no", "n", "0", "f"})
EXAMPLES = 3  # example bad values kept in the local report


@dataclass
class GovernanceResult:
    """What the pipeline decided, what it trains on, and what it reports."""

    admitted: bool
    frame: pd.DataFrame  # the training frame (empty when declined)
    reasons: list[str]  # safe to send: no values, small counts masked
    local_reasons: list[str]  # exact, for the institution's own report
    report: dict[str, Any]  # the full local report
    removed: dict[str, int] = field(default_factory=dict)  # rows removed per step
    pii: dict[str, str] = field(default_factory=dict)  # column -> "type:action"
    tags: dict[str, str] = field(default_factory=dict)  # column -> sensitivity tag
    missing_rates: dict[str, float] = field(default_factory=dict)
    missing_counts: dict[str, int] = field(default_factory=dict)
    outliers_flagged: int = 0
    # column -> rows flagged on it (robust: over the threshold on that column; isolation
    # forest: the flagged rows whose most unusual value is in that column). Local only.
    outliers_by_column: dict[str, int] = field(default_factory=dict)
    k_achieved: int | None = None
    rows_in: int = 0


def masked(n: int, min_count: int) -> str:
    """A count as it may leave the site: exact if 0 or at least `min_count`."""
    return str(n) if n == 0 or n >= min_count else f"fewer than {min_count}"


class _Run:
    """One pass of the pipeline over one frame; collects reasons as it goes."""

    def __init__(self, frame: pd.DataFrame, policy: Policy, secret: bytes | None) -> None:
        self.frame = frame.copy()
        self.policy = policy
        self.secret = secret
        self.result = GovernanceResult(False, frame.iloc[0:0], [], [], {}, rows_in=len(frame))
        self.steps: list[dict[str, Any]] = []

    # --- bookkeeping -------------------------------------------------------------
    def decline(self, safe: str, local: str | None = None) -> None:
        self.result.reasons.append(safe)
        self.result.local_reasons.append(local or safe)

    def count(self, n: int) -> str:
        return masked(n, self.policy.min_count)

    def remove(self, step: str, mask: pd.Series, detail: str = "") -> None:
        n = int(mask.sum())
        self.result.removed[step] = self.result.removed.get(step, 0) + n
        self.steps.append({"step": step, "rows_removed": n, "detail": detail})
        if n:
            self.frame = self.frame.loc[~mask]

    # --- 1. schema -----------------------------------------------------------------
    def schema(self) -> bool:
        declared = self.policy.columns
        missing = [c for c in declared if c not in self.frame.columns]
        for column in missing:
            self.decline(f"schema: column '{column}' missing")
        unexpected = [c for c in self.frame.columns if c not in declared]
        if unexpected and self.policy.unexpected_columns == "decline":
            self.decline(
                f"schema: {len(unexpected)} column(s) not in the policy; add them, or set "
                "unexpected_columns: drop",
                f"schema: {len(unexpected)} column(s) not in the policy: "
                f"{', '.join(snippet(str(c)) for c in unexpected[:EXAMPLES])}"
                f"{', …' if len(unexpected) > EXAMPLES else ''}; add them, or set "
                "unexpected_columns: drop",
            )
        self.unexpected = unexpected
        if missing:
            return False
        invalid_total: dict[str, int] = {}
        for column, rule in declared.items():
            typed, invalid = _typed(self.frame[column], rule)
            n_bad = int(invalid.sum())
            if n_bad:
                invalid_total[column] = n_bad
                bad_values = self.frame[column][invalid].head(EXAMPLES)
                examples = [inert(v) for v in bad_values.astype(str)]
                self.steps.append(
                    {"step": "schema", "column": column, "invalid": n_bad, "examples": examples}
                )
            self.frame[column] = typed
        self.invalid = invalid_total
        return True

    # --- 2. PII scan and tags --------------------------------------------------------
    def pii_scan(
        self, original: pd.DataFrame, known: dict[str, list[PiiFinding]] | None = None
    ) -> None:
        # A categorical column can hold identifiers too (repeat visits): scan it as text.
        as_text = {c: original[c].astype("string") for c in original.columns
                   if isinstance(original[c].dtype, pd.CategoricalDtype)}  # fmt: skip
        detection = self.policy.detection
        findings = known if known is not None else scan_frame(
            original.assign(**as_text) if as_text else original,
            threshold=detection.threshold,
            name_threshold=detection.name_threshold,
            free_text_threshold=detection.free_text_threshold,
            regions=detection.phone_regions,
        )  # fmt: skip
        for column in original.columns:
            rule = self.policy.columns.get(column)
            explicit_tag = rule is not None and "tag" in rule.model_fields_set
            found = findings.get(column, [])
            if found:
                kind = found[0].pii_type
                # A column the policy does not know never reaches training: it is dropped.
                action = "drop" if rule is None else rule.pii or self.policy.action_for(kind)
                self.result.pii[column] = f"{kind}:{action}"
                tag = _tag_of(kind)
            elif rule is not None and rule.pii:
                self.result.pii[column] = f"declared:{rule.pii}"
                tag = "public"
            else:
                tag = "public"
            if explicit_tag:
                tag = rule.tag  # type: ignore[union-attr]  # the admin's word wins
            elif (
                rule is not None
                and self.policy.k_anonymity is not None
                and column in self.policy.k_anonymity.quasi_identifiers
                and tag == "public"
            ):
                tag = "quasi-identifier"
            self.result.tags[column] = tag
        self.report_findings = {
            c: [vars(f) for f in fs] for c, fs in findings.items()
        }  # local report only

    # --- 3. consent ----------------------------------------------------------------------
    def consent(self) -> None:
        rule = self.policy.consent
        if rule is None:
            return
        accepted = rule.accepted_words()
        values = _as_words(self.frame[rule.column])
        self.remove("consent", ~values.isin(accepted).fillna(False), f"accepted: {rule.accepted}")

    # --- 4. cleaning -----------------------------------------------------------------------
    def quality(self) -> None:
        rows = max(len(self.frame), 1)  # after consent: the rows that could be used
        for column, rule in self.policy.columns.items():
            n_missing = int(self.frame[column].isna().sum())
            self.result.missing_counts[column] = n_missing
            self.result.missing_rates[column] = n_missing / rows
            limit = (
                rule.max_missing_rate
                if rule.max_missing_rate is not None
                else self.policy.max_missing_rate
            )
            if n_missing / rows > limit:
                bad = self.invalid.get(column, 0)
                share = (
                    f"{n_missing / rows:.0%}"
                    if n_missing >= self.policy.min_count
                    else ("too often")
                )  # a rate over fewer than min_count rows stays here
                self.decline(
                    f"quality: column '{column}' is {share} missing or invalid "
                    f"(the policy allows {limit:.0%})",
                    f"quality: column '{column}' is {n_missing / rows:.1%} missing "
                    f"({n_missing} rows, {bad} of them invalid values), the policy allows "
                    f"{limit:.0%}",
                )

    def deduplicate(self) -> None:
        """Exact duplicate rows (all columns, identifiers included, so two people who
        share every feature are not merged). Rows are hashed with polars first (0.3 s
        for 1M x 20, against 1.7 s for pandas' own `duplicated`); only rows whose hashes
        collide are compared in full, so a hash collision can never drop a row."""
        if not self.policy.deduplicate or self.frame.empty:
            return
        try:
            hashes = pl.from_pandas(self.frame).hash_rows(seed=0).to_numpy()
        except Exception:  # a column polars cannot convert (mixed objects): slower pandas
            hashes = pd.util.hash_pandas_object(self.frame.astype(str), index=False).to_numpy()
        candidates = pd.Series(pd.Series(hashes).duplicated(keep=False).to_numpy(),
                               index=self.frame.index)  # fmt: skip
        duplicate = pd.Series(False, index=self.frame.index)
        if candidates.any():
            rows = self.frame[candidates]
            try:
                duplicate[candidates] = rows.duplicated(keep="first")
            except TypeError:  # unhashable cells (lists from Parquet): compare as text
                duplicate[candidates] = rows.astype(str).duplicated(keep="first")
        self.remove("duplicates", duplicate)

    def missing(self) -> None:
        """Rows missing the label or a non-nullable value go; the rest per `missing`."""
        label = self.policy.label
        self.remove("missing-label", self.frame[label].isna())
        features = [c for c in self.policy.columns if c != label and not self._dropped(c)]
        required = [c for c in features if not self.policy.columns[c].nullable]
        if required:
            self.remove("missing", self.frame[required].isna().any(axis=1))
        if self.policy.missing == "drop-rows":
            self.remove("missing", self.frame[features].isna().any(axis=1))
        elif self.policy.missing == "impute":
            for column in features:
                series = self.frame[column]
                if series.isna().any() and series.notna().any():
                    fill = (series.median() if _is_numeric(self.policy.columns[column])
                            else series.mode(dropna=True).iloc[0])  # fmt: skip
                    self.frame[column] = series.fillna(fill)

    def outliers(self) -> None:
        spec = self.policy.outliers
        numeric = [
            c for c, r in self.policy.columns.items()
            if _is_numeric(r) and c != self.policy.label and not self._dropped(c)
        ]  # fmt: skip
        if spec.method == "none" or not numeric or self.frame.empty:
            return
        values = self.frame[numeric].astype("float64")
        score = _robust_scores(values)
        if spec.method == "robust":
            over = score > spec.threshold
            flagged = over.any(axis=1)
            by_column = over.sum()
        else:
            from sklearn.ensemble import IsolationForest  # heavy: only when asked for

            filled = values.fillna(values.median())
            forest = IsolationForest(random_state=0, n_estimators=100)
            flagged = pd.Series(forest.fit_predict(filled.to_numpy()) == -1, index=values.index)
            # The forest scores whole rows; to say where a flagged row is unusual, name
            # its column farthest from the median (in robust, else standard, units).
            spread = values.std().replace(0, np.nan)
            fallback = (values - values.median()).abs() / spread
            unusual = score.fillna(fallback).fillna(-1.0)[flagged]
            by_column = unusual.idxmax(axis=1).value_counts() if len(unusual) else pd.Series()
        self.result.outliers_by_column = {
            str(c): int(by_column.get(c, 0)) for c in numeric if int(by_column.get(c, 0))
        }
        self.result.outliers_flagged = int(flagged.sum())
        if spec.action == "drop":
            self.remove("outliers", flagged, spec.method)
        else:
            self.steps.append(
                {"step": "outliers", "flagged": int(flagged.sum()), "method": spec.method}
            )

    # --- 5. PII actions -----------------------------------------------------------------------
    def _dropped(self, column: str) -> bool:
        if column == self.policy.label:
            return False  # the admin named it the label; a PII look-alike is kept
        return self.result.pii.get(column, "").endswith(":drop") or (
            self.result.tags.get(column) == "identifier"
            and not self.result.pii.get(column, "").endswith(
                (":hash", ":keep", ":generalize", ":mask")
            )
        )

    def pii_actions(self) -> None:
        for column, spec in self.result.pii.items():
            if (
                column not in self.frame.columns
                or column not in self.policy.columns
                or column == self.policy.label
            ):
                continue  # unknown columns never reach training; the label stays as it is
            action = spec.rsplit(":", 1)[1]
            if action == "hash":
                self.frame[column] = self._hash(self.frame[column])
            elif action == "generalize":
                rule = self.policy.columns.get(column)
                self.frame[column] = _generalize(self.frame[column], rule)
            elif action == "mask":
                self.frame[column] = mask_text(self.frame[column])

    def _hash(self, series: pd.Series) -> pd.Series:
        if self.secret is None:
            raise_no_secret(self.policy.hash_secret_env)
        key = self.secret
        out = [
            None if pd.isna(v) else hmac.new(key, str(v).encode(), hashlib.sha256).hexdigest()[:20]
            for v in series.to_numpy(dtype=object)
        ]
        return pd.Series(out, index=series.index, dtype="string")

    # --- 6. k-anonymity -----------------------------------------------------------------------
    def k_anonymity(self) -> None:
        spec = self.policy.k_anonymity
        if spec is None or self.frame.empty:
            return
        qi = [c for c in spec.quasi_identifiers if not self._dropped(c)]
        if not qi:  # every quasi-identifier was dropped as PII: nothing left to link on
            return
        small = _small_groups(self.frame, qi, spec.k)
        if small.any() and spec.action == "generalize":
            search = _KGeneralizer(self.frame, qi, self.policy, spec.k)
            best = search.run()
            for column in qi:
                self.frame[column] = search.column_at(column, best.levels[qi.index(column)])
            small = pd.Series(best.small, index=self.frame.index)
            self.steps.append(
                {
                    "step": "k-anonymity-generalize",
                    "k": spec.k,
                    "columns": search.describe(best.levels),
                    "rows_suppressed": int(best.small.sum()),
                    "information_loss": round(best.loss, 4),
                }
            )
        n_small = int(small.sum())
        if n_small and spec.action == "decline":
            self.decline(
                f"k-anonymity: {self.count(n_small)} rows are in groups smaller than k={spec.k} "
                f"on {', '.join(qi)}",
                f"k-anonymity: {n_small} rows are in groups smaller than k={spec.k} on "
                f"{', '.join(qi)}",
            )
        elif n_small:
            self.remove("k-anonymity", small, f"k={spec.k} on {qi}")
        if not self.frame.empty:
            self.result.k_achieved = int(self.frame.groupby(qi, dropna=False).size().min())

    def _values_shown(self, column: str) -> bool:
        """Whether the local report may show the column's values: the policy says so
        (`report_values`), or it is silent and the column neither is tagged identifier
        nor was found to hold identifiers (nor is hashed, masked or free text)."""
        rule = self.policy.columns.get(column)
        if rule is not None and rule.report_values is not None:
            return rule.report_values
        spec = self.result.pii.get(column, "")
        kind, _, action = spec.partition(":")
        return not (
            self.result.tags.get(column) == "identifier"
            or kind in DIRECT_IDENTIFIERS
            or kind == "free_text"
            or action in ("hash", "mask")
        )

    # --- 7. decision --------------------------------------------------------------------------
    def finish(self) -> GovernanceResult:
        if len(self.frame) < self.policy.min_rows:
            self.decline(
                f"rows: {self.count(len(self.frame))} left after governance, the policy "
                f"needs {self.policy.min_rows}",
                f"rows: {len(self.frame)} left after governance, the policy needs "
                f"{self.policy.min_rows}",
            )
        keep = [
            c for c in self.policy.columns
            if c == self.policy.label
            or not self._dropped(c)
            and self.result.tags.get(c) != "identifier"
            and (self.policy.consent is None or c != self.policy.consent.column)
        ]  # fmt: skip
        self.result.admitted = not self.result.reasons
        if self.result.admitted:
            self.result.frame = self.frame[keep].reset_index(drop=True)
        hidden = {c for c in self.frame.columns if not self._values_shown(str(c))}
        for step in self.steps:  # schema examples of identifier columns stay unwritten
            if step.get("column") in hidden and "examples" in step:
                step["examples"] = ["(withheld: the column holds identifiers)"]
        self.result.report = {
            "profile": _profile(self.frame[keep], hidden) if self.result.admitted else {},
            "steps": self.steps,
            "pii_findings": getattr(self, "report_findings", {}),
            "training_columns": keep if self.result.admitted else [],
        }
        return self.result


def _tag_of(kind: str) -> str:
    if kind in DIRECT_IDENTIFIERS:
        return "identifier"
    return "sensitive" if kind == "free_text" else "quasi-identifier"


def raise_no_secret(env: str) -> NoReturn:
    from aidmp.governance.policy import GovernanceError

    raise GovernanceError(
        f"the policy hashes a column but ${env} is not set; set it to this site's secret "
        "(the same value every run, or hashes will not match across rounds)",
        code="no-site-secret",
    )


def site_secret(policy: Policy) -> bytes | None:
    value = os.environ.get(policy.hash_secret_env)
    return value.encode() if value else None


def govern(
    frame: pd.DataFrame,
    policy: Policy,
    secret: bytes | None = None,
    *,
    findings: dict[str, list[PiiFinding]] | None = None,
) -> GovernanceResult:
    """Run the whole pipeline over `frame` under `policy`; never raises on bad data
    (that is a decline), only on a policy that cannot be applied (no hash secret).

    `findings`: the PII scan of this very frame under this policy's detection settings,
    when the caller has it already (`govern init` applies its draft several times)."""
    run = _Run(frame, policy, secret)
    original = frame
    if run.schema():
        run.pii_scan(original, findings)
        run.consent()
        run.quality()
        run.deduplicate()
        run.missing()
        run.outliers()
        run.pii_actions()
        run.k_anonymity()
    else:
        run.pii_scan(original, findings)
    return run.finish()


# --- column helpers ------------------------------------------------------------------------
def _is_numeric(rule: ColumnRule) -> bool:
    return rule.type in ("int", "float")


def _typed(series: pd.Series, rule: ColumnRule) -> tuple[pd.Series, pd.Series]:
    """The column in its declared type, and which non-missing values were invalid
    (not of the type, out of range, or not an allowed category): those become missing."""
    present = series.notna()
    if rule.type in ("int", "float"):
        values = pd.to_numeric(series, errors="coerce").astype("float64")
        bad = present & ~np.isfinite(values.fillna(np.inf))  # not a number, or ±inf
        if rule.type == "int":
            bad |= values.notna() & (values != np.floor(values))
        if rule.min is not None:
            bad |= values < rule.min
        if rule.max is not None:
            bad |= values > rule.max
        return values.where(~bad), bad
    if rule.type == "bool":
        text = series.astype("string").str.strip().str.lower()
        values = pd.Series(pd.NA, index=series.index, dtype="boolean")
        values[text.isin(TRUE_WORDS).fillna(False)] = True
        values[text.isin(FALSE_WORDS).fillna(False)] = False
        return values, present & values.isna()
    if rule.type == "date":
        values = pd.to_datetime(series, errors="coerce", format="mixed", utc=True)
        return values, present & values.isna()
    text = series.astype("string").str.strip()
    if rule.type == "category" and rule.categories is not None:
        bad = present & ~text.isin(rule.categories).fillna(False)
        return text.where(~bad), bad
    return text, pd.Series(False, index=series.index)


def _as_words(series: pd.Series) -> pd.Series:
    """Values as lower-case words: 1.0 -> "1", True -> "true", " Yes" -> "yes"."""
    if pd.api.types.is_bool_dtype(series):
        return series.map({True: "true", False: "false"}).astype("string")
    if pd.api.types.is_numeric_dtype(series):
        whole = series.notna() & (series == np.floor(series))
        text = series.astype("string")
        text[whole] = series[whole].astype("int64").astype("string")
        return text
    return series.astype("string").str.strip().str.lower()


def _generalize(series: pd.Series, rule: ColumnRule | None) -> pd.Series:
    spec = rule.generalize if rule is not None else None
    if pd.api.types.is_datetime64_any_dtype(series):
        return series.dt.year.astype("Int64")  # a date of birth -> the birth year
    if pd.api.types.is_numeric_dtype(series):
        band = spec.band if spec and spec.band else _default_band(series)
        return np.floor(series / band) * band
    text = series.astype("string").str.strip()
    parsed = pd.to_datetime(text, errors="coerce", format="mixed")
    if parsed.notna().mean() > 0.8:  # dates held as text
        return parsed.dt.year.astype("Int64")
    keep = spec.prefix if spec and spec.prefix is not None else 3
    return text.str.slice(0, keep)


def _default_band(series: pd.Series) -> float:
    span = float(series.max() - series.min()) if series.notna().any() else 0.0
    return max(span / 20, 1.0)


def _profile(frame: pd.DataFrame, hidden: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """The quality profile of the training frame, for the local report only. Columns in
    `hidden` get counts only: no frequent values, no minimum or maximum."""
    hidden = hidden or set()
    out: dict[str, dict[str, Any]] = {}
    for column in frame.columns:
        series = frame[column]
        info: dict[str, Any] = {"missing_rate": float(series.isna().mean())}
        shown = str(column) not in hidden
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            stats = ["min", "max", "mean", "std"] if shown else ["mean", "std"]
            info |= {k: float(v) for k, v in series.agg(stats).items()}
        else:
            counts = series.value_counts(dropna=True)
            info["distinct"] = int(len(counts))
            if shown:
                info["top"] = {str(k): int(v) for k, v in counts.head(5).items()}
            else:
                info["top"] = "withheld: the column holds identifiers"
        out[str(column)] = info
    return out


def _robust_scores(values: pd.DataFrame) -> pd.DataFrame:
    """|value - median| / (1.4826 MAD) per column: about a z-score for normal data, and
    not pulled by the outliers themselves. NaN where the MAD is 0 (a mostly constant
    column: its few other values are not called outliers by this rule)."""
    median = values.median()
    mad = (values - median).abs().median() * 1.4826
    return (values - median).abs() / mad.replace(0, np.nan)


def _small_groups(frame: pd.DataFrame, qi: list[str], k: int) -> pd.Series:
    sizes = frame.groupby(qi, dropna=False)[qi[0]].transform("size")
    return sizes < k


# --- k-anonymity by generalization ----------------------------------------------------------
_NICE = (1.0, 2.0, 5.0)
_MAX_BANDS = 14
_MAX_PREFIX = 24  # text: the longest prefix tried (codes and postcodes are short)


@dataclass
class _Level:
    label: str  # "as is", "bands of 10", "first 3 characters", "one value"
    codes: np.ndarray  # int64 group code per row
    cardinality: int
    ncp: np.ndarray | float  # information lost per row, 0 (as is) .. 1 (one value)
    values: pd.Series  # the column at this level


@dataclass
class _KState:
    levels: tuple[int, ...]
    loss: float
    small: np.ndarray  # rows in groups smaller than k


class _KGeneralizer:
    """Column-by-column generalization towards k-anonymity at the least loss.

    Each quasi-identifier has a ladder of levels, from its values as they are to a single
    value. Loss is the normalised certainty penalty: a row's loss in a column is the
    width of its band over the column's range (numbers) or the share of the column's
    distinct values merged with its own (text), and a suppressed row loses everything
    (1 in every column); the table's loss is the mean over rows and columns. From "as
    is", each step raises the one column whose next level gives the least loss; the
    walk ends when no group is under k, and the state with the least loss along the
    way is the answer (its remaining small groups are suppressed).
    """

    def __init__(self, frame: pd.DataFrame, qi: list[str], policy: Policy, k: int) -> None:
        self.qi, self.k, self.n = qi, k, len(frame)
        self.ladders = [self._ladder(frame[c], policy.columns.get(c)) for c in qi]

    # -- ladders --
    def _ladder(self, series: pd.Series, rule: ColumnRule | None) -> list[_Level]:
        if pd.api.types.is_datetime64_any_dtype(series):
            dates = series.dt.tz_convert(None) if series.dt.tz is not None else series
            numbers = dates.dt.year + (dates.dt.dayofyear - 1) / 366.0
            return self._numeric(series, numbers.astype("float64"), None)
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            band = rule.generalize.band if rule and rule.generalize else None
            return self._numeric(series, series.astype("float64"), band)
        return self._text(series)

    @staticmethod
    def _codes(values: pd.Series) -> tuple[np.ndarray, int]:
        codes, uniques = pd.factorize(values, use_na_sentinel=False)
        return codes.astype(np.int64), max(len(uniques), 1)

    def _numeric(self, series: pd.Series, numbers: pd.Series, band: float | None) -> list[_Level]:
        codes, cardinality = self._codes(series)
        levels = [_Level("as is", codes, cardinality, 0.0, series)]
        present = numbers.dropna()
        span = float(present.max() - present.min()) if len(present) else 0.0
        if span > 0:
            ordered = np.unique(present.to_numpy())
            step = float(np.diff(ordered).min()) if len(ordered) > 1 else span
            if band is not None:
                widths = [band * 2**i for i in range(_MAX_BANDS) if band * 2**i < span]
            else:
                widths = [m * 10.0**e for e in range(-6, 16) for m in _NICE]
                widths = [w for w in widths if step < w < span][:_MAX_BANDS]
            for width in widths:
                banded = np.floor(numbers / width) * width
                codes, cardinality = self._codes(banded)
                if cardinality >= levels[-1].cardinality:
                    continue
                label = f"bands of {width:g}"
                levels.append(_Level(label, codes, cardinality, min(width / span, 1.0), banded))
        constant = pd.Series(
            float(present.min()) if len(present) else np.nan, index=series.index
        ).where(numbers.notna())
        codes, cardinality = self._codes(constant)
        levels.append(_Level("one value", codes, cardinality, 1.0, constant))
        return levels

    def _text(self, series: pd.Series) -> list[_Level]:
        text = series.astype("string")
        codes, cardinality = self._codes(text)
        levels = [_Level("as is", codes, cardinality, 0.0, series)]
        distinct = max(cardinality - 1, 1)
        longest = int(text.str.len().max()) if text.notna().any() else 0
        for keep in range(min(longest - 1, _MAX_PREFIX), 0, -1):
            cut = text.str.slice(0, keep)
            cut_codes, cut_card = self._codes(cut)
            if cut_card >= levels[-1].cardinality:
                continue
            # originals merged per generalized value, for each row
            merged = pd.Series(codes).groupby(cut_codes).transform("nunique").to_numpy()
            ncp = (merged - 1) / distinct
            levels.append(_Level(f"first {keep} characters", cut_codes, cut_card, ncp, cut))
        constant = pd.Series("*", index=series.index, dtype="string").where(text.notna())
        codes, cardinality = self._codes(constant)
        levels.append(_Level("one value", codes, cardinality, 1.0, constant))
        return levels

    # -- search --
    def evaluate(self, levels: tuple[int, ...]) -> _KState:
        key = np.zeros(self.n, dtype=np.int64)
        size = 1
        lost = np.zeros(self.n, dtype=np.float64)
        for ladder, index in zip(self.ladders, levels, strict=True):
            level = ladder[index]
            if size * level.cardinality >= 2**62:
                key = pd.factorize(key)[0].astype(np.int64)
                size = int(key.max()) + 1 if self.n else 1
            key = key * level.cardinality + level.codes
            size *= level.cardinality
            lost += level.ncp
        ids = pd.factorize(key)[0]
        small = np.bincount(ids)[ids] < self.k
        q = len(self.ladders)
        loss = (float(lost[~small].sum()) + q * float(small.sum())) / max(self.n * q, 1)
        return _KState(levels, loss, small)

    def run(self) -> _KState:
        levels = tuple(0 for _ in self.ladders)
        state = best = self.evaluate(levels)
        while state.small.any():
            steps = [
                self.evaluate(levels[:j] + (levels[j] + 1,) + levels[j + 1 :])
                for j in range(len(levels))
                if levels[j] + 1 < len(self.ladders[j])
            ]
            if not steps:
                break
            state = min(steps, key=lambda s: (s.loss, int(s.small.sum())))
            levels = state.levels
            if state.loss < best.loss:
                best = state
        return best

    def column_at(self, column: str, index: int) -> pd.Series:
        return self.ladders[self.qi.index(column)][index].values

    def describe(self, levels: tuple[int, ...]) -> dict[str, dict[str, Any]]:
        return {
            column: {
                "kept": ladder[index].label,
                "distinct_before": ladder[0].cardinality,
                "distinct_after": ladder[index].cardinality,
            }
            for column, ladder, index in zip(self.qi, self.ladders, levels, strict=True)
        }
