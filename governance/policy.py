"""An institution's governance policy: one YAML file, validated with pydantic.

The policy is the institution's own, and nothing the coordinator sends can loosen
it. A mistake in it is reported with the key path and the YAML line, e.g.
`policy.yaml line 12, columns.age.min: Input should be a valid number`.

A policy file is small and plain: at most `MAX_POLICY_BYTES`, a mapping at the top,
and no YAML aliases (`*name`), whose expansion can make a few lines of text into
billions of items. Messages quote at most a short, escaped snippet of the file.
"""

from __future__ import annotations

import codecs
import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from aidmp.errors import AidmpError, DeclineCode, snippet

# mask: free text keeps its words; every identifier found in it becomes its type (<EMAIL>).
Action = Literal["drop", "hash", "generalize", "keep", "mask"]
Tag = Literal["identifier", "quasi-identifier", "sensitive", "public"]
ColumnType = Literal["int", "float", "str", "category", "bool", "date"]

# What to do with a detected kind of personal data when the column has no rule.
DEFAULT_PII_ACTIONS: dict[str, Action] = {
    "email": "drop", "phone": "drop", "credit_card": "drop", "iban": "drop",
    "ip_address": "drop", "us_ssn": "drop", "cn_resident_id": "drop", "national_id": "drop",
    "name": "drop", "address": "drop", "free_text": "mask",
    "date_of_birth": "generalize", "postcode": "generalize",
}  # fmt: skip
# Detected kinds that identify a person on their own. date_of_birth and postcode are
# quasi-identifiers; free text (with its identifiers masked) is sensitive.
DIRECT_IDENTIFIERS = frozenset(DEFAULT_PII_ACTIONS) - {"date_of_birth", "postcode", "free_text"}


MAX_POLICY_BYTES = 1024 * 1024

# Why a node could not govern its data, as the coordinator hears it: a fixed code and
# description. The message itself, which can name local paths and quote the policy or
# the data, stays at the node (its log, and `aidmp govern check` at the site).
GOVERNANCE_FAILURES = {
    "policy-invalid": "the node's governance policy is missing, unreadable or invalid",
    "data-unreadable": "the node's data file is missing, empty or not a readable table",
    "header-looks-like-data": "the data file's first line looks like data, not a header",
    "no-site-secret": "the policy hashes a column and the node's site secret is not set",
    "task-mismatch": "the round's task and the node's governed data do not fit together",
    "failed": "governance could not run on the node's data",
    "declined": "the node's data does not meet its governance policy",
}


class GovernanceError(AidmpError):
    """The policy is invalid, or the data cannot be governed (unreadable, empty).

    `code` names the failure for the coordinator (a key of GOVERNANCE_FAILURES);
    `public` replaces the fixed description, for text built to be sent (a decline's
    reasons, which carry no values and no small counts).
    """

    decline_code = DeclineCode.GOVERNANCE

    def __init__(self, message: str, *, code: str = "failed", public: str | None = None):
        super().__init__(message)
        self.code = code
        self.public_reason = public or (
            f"governance failed ({code}): {GOVERNANCE_FAILURES[code]}; the node's own log "
            "and `aidmp govern check` at the node say more"
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Generalize(_Strict):
    """How `generalize` coarsens a column: numbers to bands, strings to a prefix,
    dates to a year."""

    band: float | None = Field(None, gt=0, description="numbers: width of a band, e.g. 10")
    prefix: int | None = Field(None, ge=0, description="strings: characters kept, e.g. 3")


class ColumnRule(_Strict):
    type: ColumnType
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    tag: Tag = "public"
    pii: Action | None = None
    generalize: Generalize | None = None
    max_missing_rate: float | None = Field(None, ge=0, le=1)
    # The local report shows a column's frequent values only when this is true, or when
    # it is unset and the column is neither tagged identifier nor found to hold one.
    report_values: bool | None = None


class Detection(_Strict):
    """How values are judged to be personal data (governance/pii.py)."""

    threshold: float = Field(
        0.8, gt=0, le=1, description="share of a column's sampled values that must match and "
        "validate for a type to be reported"
    )  # fmt: skip
    name_threshold: float = Field(
        0.6, gt=0, le=1, description="names: share of values shaped like a person's name with "
        "at least half of their words in the name lexicon"
    )  # fmt: skip
    free_text_threshold: float = Field(
        0.0, ge=0, lt=1, description="free text: share of values with an embedded identifier "
        "above which the column is reported (0: any one)"
    )  # fmt: skip
    phone_regions: list[str] = Field(
        default_factory=list, description="ISO 3166 alpha-2 codes of the site's country or "
        "countries, for phone numbers written without a country code, e.g. [GB]"
    )  # fmt: skip

    @field_validator("phone_regions")
    @classmethod
    def _known_regions(cls, value: list[str]) -> list[str]:
        import phonenumbers

        regions = [code.strip().upper() for code in value]
        unknown = [code for code in regions if code not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(
                f"unknown phone region(s) {', '.join(map(snippet, unknown[:3]))}; use ISO "
                "3166 alpha-2 codes, e.g. US, GB, DE"
            )
        return regions


class Consent(_Strict):
    column: str
    # YAML reads an unquoted yes/no as a boolean; accept that and mean the words.
    accepted: list[str | bool | int] = Field(min_length=1)

    def accepted_words(self) -> set[str]:
        words: set[str] = set()
        for value in self.accepted:
            if isinstance(value, bool):
                words |= {"yes", "true", "y", "1"} if value else {"no", "false", "n", "0"}
            else:
                words.add(str(value).strip().lower())
        return words


class KAnonymity(_Strict):
    quasi_identifiers: list[str] = Field(min_length=1)
    k: int = Field(5, ge=2)
    action: Literal["suppress", "generalize", "decline"] = "suppress"


class Outliers(_Strict):
    method: Literal["none", "robust", "isolation-forest"] = "robust"
    threshold: float = Field(3.5, gt=0, description="robust: |x - median| / (1.4826 MAD)")
    action: Literal["flag", "drop"] = "flag"


class Policy(_Strict):
    version: Literal[1] = 1
    institution: str | None = None
    label: str
    columns: dict[str, ColumnRule] = Field(min_length=1)
    consent: Consent | None = None
    pii_by_type: dict[str, Action] = Field(default_factory=lambda: dict(DEFAULT_PII_ACTIONS))
    detection: Detection = Detection()
    unexpected_columns: Literal["drop", "decline"] = "drop"
    k_anonymity: KAnonymity | None = None
    min_rows: int = Field(50, ge=1)
    max_missing_rate: float = Field(0.2, ge=0, le=1)
    # Rows missing the label or a non-nullable column always go. For nullable columns:
    # drop-rows also drops those rows, impute fills median/mode, keep leaves them.
    missing: Literal["drop-rows", "impute", "keep"] = "drop-rows"
    deduplicate: bool = True
    outliers: Outliers = Outliers()
    min_count: int = Field(10, ge=1, description="no figure over fewer rows leaves the site")
    encoding: str = "utf-8"
    delimiter: str | None = Field(None, description="CSV delimiter; None: sniff it")
    hash_secret_env: str = Field(
        "AIDMP_SITE_SECRET", description="environment variable holding the HMAC key for hash"
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(
                f"unknown text encoding {snippet(value)}; use one Python knows, e.g. utf-8 "
                "or latin-1"
            ) from None
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1:
            raise ValueError("a delimiter is one character, e.g. ',' or ';'")
        return value

    @model_validator(mode="after")
    def _references_exist(self) -> Policy:
        known = set(self.columns)
        refs = [("label", self.label)]
        if self.consent is not None:
            refs.append(("consent.column", self.consent.column))
        if self.k_anonymity is not None:
            refs += [
                (f"k_anonymity.quasi_identifiers[{i}]", c)
                for i, c in enumerate(self.k_anonymity.quasi_identifiers)
            ]
        for where, column in refs:
            if column not in known:
                raise ValueError(f"{where} names {snippet(column)}, which is not under columns")
        unknown = sorted(set(self.pii_by_type) - set(DEFAULT_PII_ACTIONS))
        if unknown:
            raise ValueError(
                f"pii_by_type has unknown type(s) {', '.join(map(snippet, unknown[:3]))}; "
                f"known: {', '.join(DEFAULT_PII_ACTIONS)}"
            )
        return self

    def action_for(self, pii_type: str) -> Action:
        return self.pii_by_type.get(pii_type, DEFAULT_PII_ACTIONS.get(pii_type, "drop"))


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The YAML line (1-based) of the deepest key in `loc` that exists in the file."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _plain(text: str, limit: int = 80) -> str:
    """Short printable text as it is; anything else as an escaped snippet."""
    return text if len(text) <= limit and text.isprintable() else snippet(text, limit)


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases: a policy has no use for them, and nested
    ones expand a few lines into billions of items (the "billion laughs")."""

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _AliasRefused(mark.line + 1)
        return super().compose_node(parent, index)


class _AliasRefused(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def _parse(text: str, path: Path) -> tuple[yaml.MappingNode, dict[str, Any]]:
    """The composed top-level node (for line numbers) and its value, or one clear line."""
    loader = _NoAliasLoader(text)
    try:
        root = loader.get_single_node()
        if not isinstance(root, yaml.MappingNode):
            kind = {yaml.SequenceNode: "a list", yaml.ScalarNode: "a single value"}
            got = "nothing" if root is None else kind.get(type(root), "something else")
            raise GovernanceError(
                f"{path}: a policy is a YAML mapping (key: value lines), and this file holds "
                f"{got}; is it the policy? Draft one with `aidmp govern init DATA --out P`",
                code="policy-invalid",
            )
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise GovernanceError(
            f"{path}{where}: YAML syntax error: {_plain(problem)}", code="policy-invalid"
        ) from None
    except _AliasRefused as exc:
        raise GovernanceError(
            f"{path} line {exc.line}: YAML aliases (*name) are not allowed in a policy; write "
            "the value out in full",
            code="policy-invalid",
        ) from None
    except RecursionError:
        raise GovernanceError(
            f"{path}: nested too deeply to be a policy", code="policy-invalid"
        ) from None
    finally:
        loader.dispose()
    return root, data


def load_policy(path: Path) -> tuple[Policy, str]:
    """The validated policy and the SHA-256 of its file (the policy hash in reports)."""
    if not path.is_file():
        raise GovernanceError(
            f"no policy at {path}; draft one with `aidmp govern init DATA --out {path}`",
            code="policy-invalid",
        )
    size = path.stat().st_size
    if size > MAX_POLICY_BYTES:
        raise GovernanceError(
            f"{path} is {size:,} bytes; a policy is at most {MAX_POLICY_BYTES:,}. Is it the "
            "policy, or a data file?",
            code="policy-invalid",
        )
    raw = path.read_bytes()
    if len(raw) > MAX_POLICY_BYTES:  # it grew since
        raise GovernanceError(f"{path} is over {MAX_POLICY_BYTES:,} bytes", code="policy-invalid")
    text = raw.decode("utf-8", errors="replace")
    root, data = _parse(text, path)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        line = _line_of(root, loc)
        where = ".".join(_plain(str(p)) for p in loc)
        at = f" line {line}," if line else ""
        raise GovernanceError(
            f"{path}{at} {where or '(top level)'}: {first['msg']}", code="policy-invalid"
        ) from None
    return policy, hashlib.sha256(raw).hexdigest()
