"""Reading an institution's table (CSV or Parquet) with errors that say what to fix."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from aidmp.governance.policy import GovernanceError

SNIFF_BYTES = 64 * 1024
DELIMITERS = ",;\t|"


def sniff_delimiter(path: Path, encoding: str) -> str:
    with path.open("r", encoding=encoding, newline="") as handle:
        sample = handle.read(SNIFF_BYTES)
    if not sample.strip():
        raise GovernanceError(f"{path} is empty; export the table with a header and its rows")
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
        raise GovernanceError(f"no data file at {path}; check the node's data path")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise GovernanceError(f"{path} is not a readable Parquet file ({exc})") from None
    else:
        try:
            sep = delimiter or sniff_delimiter(path, encoding)
            frame = pd.read_csv(path, sep=sep, encoding=encoding, skipinitialspace=True)
        except UnicodeDecodeError as exc:
            raise GovernanceError(
                f"{path} is not {encoding} text (byte {exc.start}: {exc.reason}); re-save it "
                f"as UTF-8, or set `encoding:` in the policy (e.g. latin-1)"
            ) from None
        except pd.errors.EmptyDataError:
            raise GovernanceError(
                f"{path} is empty; export the table with a header and its rows"
            ) from None
        except pd.errors.ParserError as exc:
            raise GovernanceError(f"{path} is not a well-formed CSV ({exc})") from None
    if len(frame.columns) == 1 and any(d in str(frame.columns[0]) for d in ";\t|"):
        # The header is not quoted here: a file without a header would put data in it.
        raise GovernanceError(
            f"{path} read as a single column: the delimiter looks wrong; set `delimiter:` "
            "in the policy"
        )
    if frame.empty:
        raise GovernanceError(f"{path} has a header but no rows")
    names = [str(c).strip() for c in frame.columns]
    if len(set(names)) != len(names):
        raise GovernanceError(
            f"{path} has {len(names) - len(set(names))} repeated column name(s) (after "
            "trimming spaces); give every column its own name"
        )
    frame.columns = names
    return frame
