"""Seconds for the whole governance pipeline on a large table, and rows per second.

The table is generated (every identifier in it is made up): 1M rows by default, 20
columns: 8 numeric, 5 categorical, a consent column, a label, and 5 columns of
personal data (name, e-mail, phone, SSN-shaped number, date of birth), all found by
value detection (the name lexicon, libphonenumber, checksums, dates). The policy
declares the 15 data columns; the PII columns are found by the scan and dropped or
generalized. Reported: reading the table back from Parquet, the pipeline itself
(schema, PII scan, consent, deduplication, missing values, robust outliers, PII
actions, k-anonymity on two quasi-identifiers, decision), medians of --repeats.
Goal: the pipeline in <= 5 s for 1M x 20.

    python benchmarks/governance_pipeline.py [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from aidmp.governance.load import load_table
from aidmp.governance.pipeline import govern
from aidmp.governance.policy import Policy


def generate(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    serial = np.arange(rows)
    frame = {f"x{i}": rng.normal(50, 10, rows).round(3) for i in range(6)}
    frame["age"] = rng.integers(18, 90, rows)
    frame["visits"] = rng.poisson(3, rows)
    for i, k in enumerate((3, 5, 8, 12)):
        frame[f"c{i}"] = rng.choice([f"level-{j}" for j in range(k)], rows)
    frame["sex"] = rng.choice(["F", "M"], rows)
    frame["consent"] = np.where(rng.random(rows) < 0.97, "yes", "no")
    frame["label"] = rng.integers(0, 2, rows)
    # Made-up personal data: names from short lists, the rest from a counter; phones
    # in the 555 exchange kept for fiction (which libphonenumber takes as valid).
    first = np.array(["Ada", "Ben", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana"])
    last = np.array(["Alder", "Brook", "Castell", "Dunmore", "Ellery", "Fenwick", "Hale"])
    frame["name"] = np.char.add(np.char.add(first[serial % 8], " "), last[serial % 7])
    frame["email"] = np.char.add(np.char.add("user", serial.astype(str)), "@example.org")
    frame["phone"] = [f"+1 202-555-{k % 10000:04d}" for k in serial]
    frame["ssn"] = [f"{123 + k % 500:03d}-{12 + k % 80:02d}-{1000 + k % 8999:04d}" for k in serial]
    births = pd.to_datetime("1930-01-01") + pd.to_timedelta(rng.integers(0, 25_000, rows), "D")
    frame["date_of_birth"] = births.strftime("%Y-%m-%d")
    return pd.DataFrame(frame)


POLICY = Policy.model_validate(
    {
        "label": "label",
        "columns": {
            **{f"x{i}": {"type": "float"} for i in range(6)},
            "age": {"type": "int", "min": 0, "max": 120, "nullable": False},
            "visits": {"type": "int", "min": 0},
            **{f"c{i}": {"type": "str"} for i in range(4)},
            "sex": {"type": "category", "categories": ["F", "M"]},
            "consent": {"type": "str"},
            "label": {"type": "int"},
        },
        "consent": {"column": "consent", "accepted": ["yes"]},
        "k_anonymity": {"quasi_identifiers": ["age", "sex"], "k": 5},
        "outliers": {"method": "robust", "action": "flag"},
    }
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    frame = generate(args.rows)
    print(f"{args.rows:,} rows x {frame.shape[1]} columns")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.parquet"
        frame.to_parquet(path)
        load_s, pipe_s = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            loaded = load_table(path)
            load_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = govern(loaded, POLICY)
            pipe_s.append(time.perf_counter() - start)
    load_m, pipe_m = statistics.median(load_s), statistics.median(pipe_s)
    print(f"read Parquet {load_m:.2f} s; pipeline {pipe_m:.2f} s "
          f"({args.rows / pipe_m:,.0f} rows/s; goal <= 5 s); "
          f"total {load_m + pipe_m:.2f} s")  # fmt: skip
    print(f"decision {'admit' if result.admitted else 'decline'}; rows used {len(result.frame):,}; "
          f"removed {result.removed}; PII {result.pii}")  # fmt: skip


if __name__ == "__main__":
    main()
