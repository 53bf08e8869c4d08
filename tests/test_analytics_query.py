"""The analytics query file: parsing, line numbers, the where-language, policy metadata."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aidmp.analytics.mechanisms import budget_table, plan_query, print_budget
from aidmp.analytics.query import (
    Query,
    QueryError,
    effective_min_count,
    load_query,
    parse_query,
    resolve,
)
from aidmp.analytics.where import WhereError, evaluate, parse_where
from aidmp.governance.policy import Policy, load_policy

REPO = Path(__file__).resolve().parents[1]
ADULT = REPO / "simulations" / "policies" / "adult.yaml"

# The issue's example, with the categories the adult policy does not declare.
GOOD = """\
epsilon: 1.0          # what this query may spend at each institution, in total
statistics:
  - {name: n, count: {}}
  - {name: n_over_65, count: {where: "age > 65"}}
  - {name: mean_age, mean: {column: age, bounds: [17, 90]}}
  - {name: hours, histogram: {column: hours-per-week, bins: [0, 20, 35, 40, 45, 60, 100]}}
  - {name: education, histogram: {column: education, categories: [Bachelors, HS-grad]}}
  - {name: age_q, quantiles: {column: age, q: [0.25, 0.5, 0.75], bounds: [17, 90]}}
  - {name: sex_income, crosstab: {rows: sex, columns: income, column_categories: ["<=50K", ">50K"]}}
  - {name: var_hours, variance: {column: hours-per-week, bounds: [1, 99]}, weight: 2}
"""


def _adult() -> Policy:
    return load_policy(ADULT)[0]


def test_the_issues_query_parses(tmp_path):
    path = tmp_path / "query.yaml"
    path.write_text(GOOD)
    query, digest = load_query(path)
    assert query.epsilon == 1.0 and query.delta == 1e-5
    assert [s.kind for s in query.statistics] == [
        "count", "count", "mean", "histogram", "histogram", "quantiles", "crosstab", "variance",
    ]  # fmt: skip
    assert query.statistics[1].spec.where == "age > 65"
    shares = query.shares()
    assert shares["var_hours"] == pytest.approx(2 / 9) and shares["n"] == pytest.approx(1 / 9)
    assert digest == query.digest() == parse_query(GOOD).digest()
    # The canonical JSON is itself a query (what travels to the nodes), with the same digest.
    import json

    assert parse_query(json.dumps(query.canonical())).digest() == digest


def test_a_bad_key_is_named_with_its_line(tmp_path):
    text = GOOD.replace('count: {where: "age > 65"}', 'count: {wher: "age > 65"}')
    path = tmp_path / "q.yaml"
    path.write_text(text)
    with pytest.raises(QueryError) as err:
        load_query(path)
    assert "line 4," in str(err.value)
    assert "statistics.1.count.wher" in str(err.value)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("epsilon: -1\nstatistics: [{name: n, count: {}}]\n", 1, "greater than 0"),
        ("epsilon: 1\nstatistics:\n  - {name: n, count: {}, sum: {column: a}}\n", 3, "exactly one"),
        ("epsilon: 1\nstatistics:\n  - {name: n}\n", 3, "exactly one"),
        ("epsilon: 1\nstatistics:\n  - {name: n, count: {}}\n  - {name: n, count: {}}\n", None,
         "two statistics"),
        ("epsilon: 1\nstatistics:\n  - name: m\n    mean: {column: a, bounds: [5, 1]}\n", 4,
         "low < high"),
        ("epsilon: 1\nstatistics:\n  - name: h\n    histogram: {column: a, bins: [0, 2, 1]}\n",
         4, "increase"),
        ("epsilon: 1\nstatistics:\n  - name: q\n    quantiles: {column: a, q: [0.5, 1.0]}\n", 4,
         "probability"),
        ("epsilon: 1\nstatistics:\n  - {name: 'bad name!', count: {}}\n", 3, "pattern"),
    ],
)  # fmt: skip
def test_invalid_queries_say_where(text, line, words):
    with pytest.raises(QueryError) as err:
        parse_query(text, "q.yaml")
    message = str(err.value)
    assert words in message
    if line is not None:
        assert f"q.yaml line {line}," in message


def test_yaml_aliases_and_non_mappings_are_refused():
    bomb = "a: &a [1, 1]\nb: &b [*a, *a]\nepsilon: 1\nstatistics: [{name: n, count: {}}]\n"
    with pytest.raises(QueryError, match="line 2: YAML aliases"):
        parse_query(bomb)
    with pytest.raises(QueryError, match="a query is a YAML mapping"):
        parse_query("- 1\n- 2\n")
    with pytest.raises(QueryError, match="YAML syntax error"):
        parse_query("epsilon: [1\n")
    with pytest.raises(QueryError, match="bytes"):
        parse_query("#" * (300 * 1024))


@pytest.mark.parametrize(
    "attack",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "age > 65 or eval('1')",
        "age > 65; import os",
        "(lambda: 1)()",
        "age > len('x')",
        "age > 65 and open('/etc/passwd')",
        "age + 1 > 65",
        "age > 65 and sex == 'Male' or __builtins__",
        "age[0] > 1",
    ],
)
def test_a_where_injection_is_refused(attack):
    with pytest.raises(WhereError):
        parse_where(attack)
    text = f'epsilon: 1\nstatistics:\n  - name: n\n    count: {{where: "{attack}"}}\n'
    with pytest.raises(QueryError) as err:
        parse_query(text, "q.yaml")
    assert "q.yaml line 4, statistics.0.count.where" in str(err.value)


def test_where_semantics():
    frame = pd.DataFrame(
        {
            "age": [70, 30, np.nan, 66, 65],
            "sex": ["Male", "Female", "Male", None, " Male"],
            "hours-per-week": [40, 50, 60, 20, 45],
            "and": [1, 2, 3, 4, 5],
        }
    )

    def rows(text):
        return frame.index[evaluate(parse_where(text), frame).to_numpy()].tolist()

    assert rows("age > 65") == [0, 3]
    assert rows('sex == "Male"') == [0, 2, 4]  # values are compared stripped
    assert rows("sex != 'Male'") == [1]  # a missing value fails != too
    assert rows("age > 65 and sex == 'Male'") == [0]
    assert rows("age <= 30 or hours-per-week >= 60") == [1, 2]
    assert rows("not (age > 65)") == [1, 2, 4]  # the complement, missing values included
    assert rows("sex in ['Female', 'Male'] AND NOT age >= 66") == [1, 2, 4]
    assert rows("sex not in ['Female']") == [0, 2, 4]
    assert rows("`and` == 3") == [2]
    assert rows("age == 65.0") == [4]
    assert parse_where("a > 1 and (b == 'x' or not c in [1, 2])").columns() == {"a", "b", "c"}
    with pytest.raises(WhereError, match="needs a number"):
        rows("sex > 'M'")
    with pytest.raises(WhereError, match="no column"):
        rows("weight > 1")
    with pytest.raises(WhereError, match="nested"):
        parse_where("not " * 40 + "a > 1")


def test_resolve_takes_bounds_and_categories_from_the_policy():
    policy = _adult()
    query = parse_query(
        "epsilon: 1\nstatistics:\n"
        "  - {name: m, mean: {column: age}}\n"
        "  - {name: q, quantiles: {column: hours-per-week, q: [0.5]}}\n"
        "  - {name: s, histogram: {column: sex}}\n"
        "  - {name: t, crosstab: {rows: sex, columns: workclass}}\n"
        "  - {name: c, count: {where: \"sex == 'Female' and age > 65\"}}\n"
    )
    resolved = resolve(query, policy)
    spec = {s.name: s.spec for s in resolved.statistics}
    assert spec["m"].bounds == (17, 90)
    assert spec["q"].bounds == (1, 99)
    assert spec["s"].categories == ["Female", "Male"]
    assert spec["t"].row_categories == ["Female", "Male"]
    assert spec["t"].column_categories[:2] == ["Private", "Self-emp-not-inc"]
    assert resolved.digest() != query.digest()
    # Query bounds win over the policy's.
    given = parse_query("epsilon: 1\nstatistics: [{name: m, mean: {column: age, bounds: [0, 5]}}]")
    assert resolve(given, policy).statistics[0].spec.bounds == (0, 5)


@pytest.mark.parametrize(
    ("statistic", "words"),
    [
        ("{name: e, histogram: {column: education}}", "categories are public metadata"),
        ("{name: e, histogram: {column: age}}", "needs its bins"),
        ("{name: x, crosstab: {rows: sex, columns: income}}", "categories are public metadata"),
        ("{name: f, mean: {column: fnlwgt}}", "bounds are public metadata"),
        ("{name: z, mean: {column: zodiac, bounds: [0, 1]}}", "not in the policy"),
        ("{name: w, count: {where: 'zodiac == 1'}}", "not in the policy"),
    ],
)
def test_resolve_refuses_what_neither_query_nor_policy_states(statistic, words):
    query = parse_query(f"epsilon: 1\nstatistics: [{statistic}]\n")
    with pytest.raises(QueryError, match=words):
        resolve(query, _adult())
    with pytest.raises(QueryError):
        plan_query(query, _adult())


def test_unresolved_metadata_is_refused_without_a_policy():
    query = parse_query("epsilon: 1\nstatistics: [{name: m, mean: {column: age}}]\n")
    with pytest.raises(QueryError, match="bounds are missing"):
        plan_query(query)


def test_identifier_columns_cannot_be_queried():
    policy = Policy.model_validate(
        {
            "label": "y",
            "columns": {
                "y": {"type": "int"},
                "mrn": {"type": "str", "tag": "identifier"},
                "email": {"type": "str", "pii": "hash"},
            },
        }
    )
    for column in ("mrn", "email"):
        query = parse_query(
            f"epsilon: 1\nstatistics: [{{name: c, histogram: {{column: {column}, "
            "categories: [a]}}]\n"
        )
        with pytest.raises(QueryError, match="cannot be queried"):
            resolve(query, policy)


def test_min_count_is_the_stricter_of_query_and_policy():
    policy = _adult()  # min_count 10
    loose = Query.model_validate({"epsilon": 1, "statistics": [{"name": "n", "count": {}}]})
    strict = loose.model_copy(update={"min_count": 25})
    assert effective_min_count(loose, policy) == 10
    assert effective_min_count(strict, policy) == 25
    assert effective_min_count(strict, None) == 25


def test_the_budget_split_is_printed_before_anything_runs(capsys):
    plan = plan_query(parse_query(GOOD), _adult())
    print_budget(plan)
    out = capsys.readouterr().out
    assert out.strip() == budget_table(plan)
    for stat in plan.statistics:
        assert stat.name in out
    assert "22.2%" in out and "11.1%" in out  # var_hours has weight 2 of 9
    assert "≤ 1 at δ 1e-05" in out
