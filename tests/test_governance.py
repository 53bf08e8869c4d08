"""Local governance: the policy file, loading, every pipeline step, reports, the CLI.

All identifiers in these tests are made up.
"""

import collections
import hashlib
import hmac
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from aidmp.governance.draft import draft_policy
from aidmp.governance.load import load_table
from aidmp.governance.pipeline import govern
from aidmp.governance.policy import GovernanceError, Policy, load_policy
from aidmp.governance.report import coordinator_summary

SECRET = b"site-secret-for-tests"


def _policy(**over) -> Policy:
    base = {
        "label": "y",
        "columns": {
            "age": {"type": "int", "min": 0, "max": 120, "nullable": False},
            "zip": {"type": "str"},
            "sex": {"type": "category", "categories": ["F", "M"]},
            "email": {"type": "str"},
            "consent": {"type": "str"},
            "y": {"type": "int"},
        },
        "consent": {"column": "consent", "accepted": ["yes"]},
        "min_rows": 5,
        "min_count": 10,
        "outliers": {"method": "none"},
    }
    return Policy.model_validate(base | over)


def _frame(n=200, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(20, 70, n),
            "zip": [f"{10000 + int(z)}" for z in rng.integers(0, 50, n)],
            "sex": rng.choice(["F", "M"], n),
            "email": [f"person{i}@example.org" for i in range(n)],  # made up
            "consent": ["yes"] * n,
            "y": rng.integers(0, 2, n),
        }
    )


# --- the policy file -----------------------------------------------------------------------
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_a_yaml_syntax_error_names_the_line(tmp_path):
    path = _write(tmp_path, "label: y\ncolumns:\n  age: {type: int\n  y: {type: int}\n")
    with pytest.raises(GovernanceError, match=r"policy.yaml line \d+: YAML syntax error"):
        load_policy(path)


def test_a_wrong_value_names_the_key_and_its_line(tmp_path):
    text = "label: y\ncolumns:\n  y: {type: int}\n  age:\n    type: int\n    min: lots\n"
    with pytest.raises(GovernanceError, match=r"line 6, columns.age.min: Input should be"):
        load_policy(_write(tmp_path, text))


def test_an_unknown_key_and_a_missing_reference_are_refused(tmp_path):
    with pytest.raises(GovernanceError, match=r"line 3, min_rowz: Extra inputs"):
        load_policy(_write(tmp_path, "label: y\ncolumns: {y: {type: int}}\nmin_rowz: 3\n"))
    text = "label: y\ncolumns: {y: {type: int}}\nconsent: {column: agreed, accepted: [yes]}\n"
    with pytest.raises(GovernanceError, match="consent.column names 'agreed'"):
        load_policy(_write(tmp_path, text))


def test_the_policy_hash_is_the_files_sha256(tmp_path):
    path = _write(tmp_path, "label: y\ncolumns: {y: {type: int}}\n")
    _, sha = load_policy(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()


# --- loading ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b"age,y\n", "has a header but no rows"),
        (b"age;y\n1;0\n", "delimiter looks wrong"),
        ("age,name\n1,Jos\xe9\n".encode("latin-1"), "is not utf-8 text"),
    ],
)
def test_bad_files_get_a_clear_error(tmp_path, content, expected):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    with pytest.raises(GovernanceError, match=expected):
        load_table(path, delimiter="," if b";" in content else None)


def test_csv_and_parquet_load_the_same_rows(tmp_path):
    frame = _frame(20)
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    a, b = load_table(tmp_path / "d.csv"), load_table(tmp_path / "d.parquet")
    assert a.shape == b.shape == frame.shape
    assert (a["email"] == b["email"]).all()


# --- the pipeline ----------------------------------------------------------------------------
def test_clean_data_is_admitted_and_identifiers_never_reach_training():
    result = govern(_frame(), _policy(), SECRET)
    assert result.admitted, result.reasons
    assert result.pii["email"] == "email:drop" and result.tags["email"] == "identifier"
    assert "email" not in result.frame.columns and "consent" not in result.frame.columns
    assert list(result.frame.columns) == ["age", "zip", "sex", "y"]


def test_a_policy_column_missing_from_the_data_declines_with_its_name():
    result = govern(_frame().drop(columns=["age"]), _policy(), SECRET)
    assert not result.admitted
    assert result.reasons == ["schema: column 'age' missing"]


def test_mixed_types_become_invalid_and_too_many_decline():
    frame = _frame(100).astype({"age": object})
    frame.loc[:9, "age"] = "old"  # 10% words in a numeric column
    assert govern(frame, _policy(), SECRET).admitted  # 10% <= 20% allowed; rows dropped
    frame.loc[:29, "age"] = "old"
    result = govern(frame, _policy(), SECRET)
    assert not result.admitted
    assert "quality: column 'age' is 30% missing or invalid" in result.reasons[0]
    assert "old" not in " ".join(result.reasons)  # values never go into shared reasons


def test_consent_filter_and_deduplication_count_what_they_remove():
    frame = _frame(100)
    frame.loc[:14, "consent"] = "no"
    frame = pd.concat([frame, frame.iloc[50:62]], ignore_index=True)
    result = govern(frame, _policy(), SECRET)
    assert result.removed["consent"] == 15 and result.removed["duplicates"] == 12
    assert len(result.frame) == 85


def test_hash_is_a_keyed_hmac_and_generalize_coarsens():
    policy = _policy(
        columns=_policy().model_dump()["columns"]
        # An identifier leaves training unless the admin tags it otherwise: here they keep
        # a pseudonym (the keyed hash) on purpose.
        | {"email": {"type": "str", "pii": "hash", "tag": "sensitive"},
           "zip": {"type": "str", "pii": "generalize", "generalize": {"prefix": 3}}}
    )  # fmt: skip
    frame = _frame(50)
    result = govern(frame, policy, SECRET)
    expected = hmac.new(SECRET, b"person0@example.org", hashlib.sha256).hexdigest()[:20]
    assert result.frame.loc[0, "email"] == expected  # kept, but only as a keyed hash
    other = govern(frame, policy, b"another-site")
    assert other.frame.loc[0, "email"] != expected
    assert result.frame["zip"].str.len().max() == 3


def test_keep_leaves_a_detected_column_as_it_was_and_the_profile_covers_it():
    policy = _policy(
        columns=_policy().model_dump()["columns"]
        | {"email": {"type": "str", "pii": "keep", "tag": "public"}}
    )
    result = govern(_frame(30), policy, SECRET)
    assert result.pii["email"] == "email:keep"
    assert result.frame.loc[0, "email"] == "person0@example.org"
    assert result.report["profile"]["email"]["distinct"] == 30


def test_hashing_without_a_site_secret_is_refused():
    policy = _policy(
        columns=_policy().model_dump()["columns"] | {"email": {"type": "str", "pii": "hash"}}
    )
    with pytest.raises(GovernanceError, match="AIDMP_SITE_SECRET is not set"):
        govern(_frame(20), policy, None)


def test_k_anonymity_matches_a_brute_force_count():
    frame = _frame(300, seed=3)
    policy = _policy(k_anonymity={"quasi_identifiers": ["age", "sex"], "k": 4})
    result = govern(frame, policy, SECRET)
    groups = collections.Counter(zip(frame["age"], frame["sex"], strict=True))
    small = sum(n for n in groups.values() if n < 4)
    assert result.removed["k-anonymity"] == small
    kept = collections.Counter(zip(result.frame["age"], result.frame["sex"], strict=True))
    assert min(kept.values()) >= 4 and result.k_achieved == min(kept.values())


def test_k_anonymity_can_decline_instead():
    policy = _policy(k_anonymity={"quasi_identifiers": ["age", "zip"], "k": 5,
                                  "action": "decline"})  # fmt: skip
    result = govern(_frame(200), policy, SECRET)
    assert not result.admitted and result.reasons[0].startswith("k-anonymity:")


def test_robust_outliers_are_flagged_or_dropped():
    frame = _frame(200)
    frame.loc[:4, "age"] = 119  # allowed by the schema, far from everyone else
    flag = govern(frame, _policy(outliers={"method": "robust", "threshold": 3.5}), SECRET)
    assert flag.outliers_flagged >= 5 and len(flag.frame) == 200
    drop = govern(frame, _policy(outliers={"method": "robust", "action": "drop"}), SECRET)
    assert drop.removed["outliers"] >= 5


def test_outliers_are_counted_per_column_for_the_local_report():
    """Robust: each column's own count over the threshold. Isolation forest scores whole
    rows: each flagged row is counted at its most unusual column."""
    frame = _frame(200)
    frame.loc[:4, "age"] = 119
    robust = govern(frame, _policy(outliers={"method": "robust", "threshold": 3.5}), SECRET)
    assert robust.outliers_by_column.get("age", 0) >= 5
    forest = govern(frame, _policy(outliers={"method": "isolation-forest"}), SECRET)
    assert sum(forest.outliers_by_column.values()) == forest.outliers_flagged > 0
    assert forest.outliers_by_column.get("age", 0) >= 5


def test_too_few_rows_decline():
    result = govern(_frame(4), _policy(), SECRET)
    assert not result.admitted and result.reasons[-1].startswith("rows: fewer than 10 left")


def test_the_coordinator_summary_withholds_small_counts():
    frame = _frame(100)
    frame.loc[:2, "consent"] = "no"  # 3 rows: fewer than min_count 10
    frame.loc[10:24, "consent"] = "withdrawn"  # 15 more: 18 in all
    result = govern(frame, _policy(), SECRET)
    summary = coordinator_summary(result, _policy(), "sha")
    assert summary["removed-consent"] == 18
    frame.loc[10:24, "consent"] = "yes"
    result = govern(frame, _policy(), SECRET)
    summary = coordinator_summary(result, _policy(), "sha")
    assert "removed-consent" not in summary and "removed-consent" in summary["withheld"]
    assert "rows-in" not in summary  # so a withheld count cannot be recovered by subtraction
    numbers = [v for k, v in summary.items() if isinstance(v, int) and k != "rows-used"]
    assert all(v == 0 or v >= 10 for v in numbers)


# --- drafting and the CLI ------------------------------------------------------------------
def test_a_draft_tags_columns_and_loads_as_a_policy():
    draft = draft_policy(_frame(), label="y")
    columns = draft["columns"]
    assert columns["email"]["tag"] == "identifier" and columns["email"]["pii"] == "drop"
    assert columns["age"]["tag"] == "quasi-identifier"
    assert columns["sex"]["type"] == "category"
    assert draft["consent"] == {"column": "consent", "accepted": ["yes"]}
    Policy.model_validate(yaml.safe_load(yaml.safe_dump(draft)))


def _aidmp(*args):
    code = "import sys; from aidmp.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def test_govern_init_then_check_passes_and_a_broken_file_fails(tmp_path):
    data = tmp_path / "rows.csv"
    _frame().to_csv(data, index=False)
    policy = tmp_path / "policy.yaml"
    init = _aidmp("govern", "init", str(data), "--out", str(policy), "--label", "y")
    assert init.returncode == 0, init.stderr
    assert "Review every line" in policy.read_text()
    ok = _aidmp("govern", "check", str(data), "--policy", str(policy), "--report", str(tmp_path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout and (tmp_path / "governance-report.html").is_file()
    _frame().drop(columns=["age"]).to_csv(data, index=False)
    bad = _aidmp("govern", "check", str(data), "--policy", str(policy))
    assert bad.returncode == 1 and "FAIL: schema: column 'age' missing" in bad.stdout


# --- regressions found in review -------------------------------------------------------
def test_identifiers_in_a_categorical_column_are_found_and_dropped():
    frame = _frame(200)
    frame["contact"] = pd.Categorical([f"p{i % 40}@example.org" for i in range(200)])
    policy = _policy(columns=_policy().model_dump()["columns"] | {"contact": {"type": "str"}})
    result = govern(frame, policy, SECRET)
    assert result.pii["contact"] == "email:drop" and "contact" not in result.frame.columns


def test_a_numeric_consent_column_matches_its_accepted_values():
    frame = _frame(100)
    frame["consent"] = [1] * 90 + [0] * 10
    policy = _policy(
        columns=_policy().model_dump()["columns"] | {"consent": {"type": "int"}},
        consent={"column": "consent", "accepted": ["1"]},
    )
    result = govern(frame, policy, SECRET)
    assert result.removed["consent"] == 10 and len(result.frame) == 90


def test_the_label_is_kept_even_if_it_looks_like_personal_data():
    frame = _frame(100).rename(columns={"y": "mobile"})
    columns = _policy().model_dump()["columns"]
    columns["mobile"] = columns.pop("y")
    result = govern(frame, _policy(label="mobile", columns=columns), SECRET)
    assert "mobile" in result.frame.columns


def test_infinity_is_not_a_valid_number():
    frame = _frame(100).astype({"age": object})
    frame.loc[:2, "age"] = "inf"
    result = govern(frame, _policy(), SECRET)
    assert result.removed["missing"] == 3


def test_unexpected_column_names_stay_out_of_shared_reasons():
    frame = _frame(50)
    frame["alice@example.org"] = 1  # a header-less file would put data in the header
    result = govern(frame, _policy(unexpected_columns="decline"), SECRET)
    assert not result.admitted
    assert "alice" not in " ".join(result.reasons)
    assert "alice" in " ".join(result.local_reasons)


def test_govern_init_takes_the_sites_phone_region_and_refuses_an_unknown_one(tmp_path):
    """UK numbers written nationally (no +44) are phones only once the site says GB."""
    data = tmp_path / "rows.csv"
    frame = _frame(120)
    frame["contact_no"] = [f"0113 496 {i:04d}" for i in range(120)]  # Ofcom's drama range
    frame.to_csv(data, index=False)
    policy = tmp_path / "policy.yaml"
    init = _aidmp("govern", "init", str(data), "--out", str(policy), "--label", "y",
                  "--phone-region", "gb")  # fmt: skip
    assert init.returncode == 0, init.stderr
    text = policy.read_text()
    assert "contact_no: identifier, drop: phone numbers" in text
    assert load_policy(policy)[0].detection.phone_regions == ["GB"]
    bad = _aidmp("govern", "init", str(data), "--out", str(tmp_path / "p2.yaml"),
                 "--phone-region", "XX")  # fmt: skip
    assert bad.returncode == 2 and "--phone-region XX" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
