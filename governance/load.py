"""Reading an institution's table (CSV or Parquet) with errors that say what to fix.

The first line of a CSV must be a header. A file exported without one would make its
first row of data the column names, and column names travel: into reports, drafted
policies and, for declared columns, the coordinator's summary. So a header whose names
look like values (numbers, dates, e-mail addresses, phone numbers, other personal
data), like formulas, or that is too long for a name is refused (`check_column_names`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from aidmp.errors import snippet
from aidmp.governance.cells import FORMULA_STARTS
from aidmp.governance.pii import value_kinds
from aidmp.governance.policy import GovernanceError

SNIFF_BYTES = 64 * 1024
DELIMITERS = ",;\t|"
MAX_NAME_CHARS = 100


def check_column_names(names: list[str], source: object) -> None:
    """Refuse a header that looks like a line of data (see the module docstring). The
    message counts and classifies the names; it never quotes them."""
    kinds = value_kinds(names)
    odd: dict[str, int] = {}
    for name, kind in zip(names, kinds, strict=True):
        if kind is None and len(name) > MAX_NAME_CHARS:
            kind = f"longer than {MAX_NAME_CHARS} characters"
        elif kind is None and name.startswith(FORMULA_STARTS):
            kind = "formula-like (starting with =, +, -, @, tab or CR)"
        if kind is not None:
            odd[kind] = odd.get(kind, 0) + 1
    if odd:
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(odd.items()))
        raise GovernanceError(
            f"{source}: {sum(odd.values())} of {len(names)} column names look like data, not "
            f"a header ({found}); was the file exported without its header line? Add a "
            "header that names every column in words",
            code="header-looks-like-data",
        )


def sniff_delimiter(path: Path, encoding: str) -> str:
    with path.open("r", encoding=encoding, newline="") as handle:
        sample = handle.read(SNIFF_BYTES)
    if not sample.strip():
        raise GovernanceError(
            f"{path} is empty; export the table with a header and its rows", code="data-unreadable"
        )
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","  # one column, or too irregular to tell: the schema check will say


def load_table(
    path: Path, *, encoding: str = "utf-8", delimiter: str | None = None
) -> pd.DataFrame:
    """The table at `path`. pandas infers column types; a numeric column with a stray
    word in it stays text, and the schema check reports it rather than guess."""
    if not path.is_file():
        raise GovernanceError(
            f"no data file at {path}; check the node's data path", code="data-unreadable"
        )
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise GovernanceError(
                f"{path} is not a readable Parquet file ({exc})", code="data-unreadable"
            ) from None
    else:
        try:
            sep = delimiter or sniff_delimiter(path, encoding)
            frame = pd.read_csv(path, sep=sep, encoding=encoding, skipinitialspace=True)
        except LookupError:
            raise GovernanceError(
                f"unknown text encoding {snippet(encoding)}; set `encoding:` in the policy to "
                "one Python knows, e.g. utf-8 or latin-1",
                code="policy-invalid",
            ) from None
        except UnicodeDecodeError as exc:
            raise GovernanceError(
                f"{path} is not {encoding} text (byte {exc.start}: {exc.reason}); re-save it "
                f"as UTF-8, or set `encoding:` in the policy (e.g. latin-1)",
                code="data-unreadable",
            ) from None
        except pd.errors.EmptyDataError:
            raise GovernanceError(
                f"{path} is empty; export the table with a header and its rows",
                code="data-unreadable",
            ) from None
        except pd.errors.ParserError as exc:
            raise GovernanceError(
                f"{path} is not a well-formed CSV ({exc})", code="data-unreadable"
            ) from None
    if len(frame.columns) == 1 and any(d in str(frame.columns[0]) for d in ";\t|"):
        # The header is not quoted here: a file without a header would put data in it.
        raise GovernanceError(
            f"{path} read as a single column: the delimiter looks wrong; set `delimiter:` "
            "in the policy",
            code="data-unreadable",
        )
    if frame.empty:
        raise GovernanceError(f"{path} has a header but no rows", code="data-unreadable")
    names = [str(c).strip() for c in frame.columns]
    check_column_names(names, path)
    if len(set(names)) != len(names):
        raise GovernanceError(
            f"{path} has {len(names) - len(set(names))} repeated column name(s) (after "
            "trimming spaces); give every column its own name",
            code="data-unreadable",
        )
    frame.columns = names
    return frame
