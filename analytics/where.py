"""The `where` filter of a statistic: a tiny, safe expression language over columns.

    age > 65
    sex == "Male" and hours-per-week >= 40
    not (income == ">50K") or `marital status` in ["Divorced", "Separated"]

Grammar (keywords `and`, `or`, `not`, `in` in any case):

    expr       := conjunct ("or" conjunct)*
    conjunct   := negation ("and" negation)*
    negation   := "not" negation | "(" expr ")" | comparison
    comparison := column OP literal | column ["not"] "in" "[" literal ("," literal)* "]"
    OP         := "==" | "!=" | "<" | "<=" | ">" | ">="
    column     := a name of letters, digits, "_", "-" and "." (not starting with a digit
                  or "-"), or any text in backquotes
    literal    := a number, a string in single or double quotes, true or false

It is parsed here, by hand, into a small tree; nothing is ever handed to `eval`, and
there are no calls, attributes, arithmetic or subscripts, so `__import__('os')` is a
syntax error. A row whose value is missing in a compared column fails that comparison
(`!=` and `not in` included), so a filter never counts a row by accident of its
missing value; `not (...)` is the complement, missing values included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from aidmp.errors import AidmpError, DeclineCode, snippet

if TYPE_CHECKING:
    import pandas as pd

MAX_WHERE_CHARS = 1000  # a filter is a line, not a program
MAX_DEPTH = 16  # nested "not" and parentheses
MAX_IN_ITEMS = 256

Literal_ = float | str | bool
Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in"]


class WhereError(AidmpError):
    """A filter that is not in the language, or that does not fit the data."""

    decline_code = DeclineCode.BAD_CONFIG


# --- the tree ----------------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    column: str
    op: Op
    value: Literal_ | tuple[Literal_, ...]

    def columns(self) -> set[str]:
        return {self.column}


@dataclass(frozen=True)
class Not:
    operand: Node

    def columns(self) -> set[str]:
        return self.operand.columns()


@dataclass(frozen=True)
class BoolOp:
    op: Literal["and", "or"]
    operands: tuple[Node, ...]

    def columns(self) -> set[str]:
        return set().union(*(o.columns() for o in self.operands))


Node = Compare | Not | BoolOp


# --- tokens --------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<quoted>`[^`]+`)
  | (?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[()\[\],])
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false"}
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t"}


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, name, keyword, op, punct, end
    text: str
    at: int


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(_ESCAPES.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def _tokens(text: str) -> list[_Token]:
    tokens, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise WhereError(
                f"where: unexpected character {snippet(text[at])} at position {at + 1}; a "
                'filter compares columns with values, e.g. age > 65 and sex == "Male"'
            )
        kind = match.lastgroup or ""
        word = match.group()
        if kind == "name" and word.lower() in _KEYWORDS:
            tokens.append(_Token("keyword", word.lower(), at))
        elif kind == "quoted":
            tokens.append(_Token("name", word[1:-1], at))
        elif kind == "string":
            tokens.append(_Token("string", _unescape(word[1:-1]), at))
        elif kind != "space":
            tokens.append(_Token(kind, word, at))
        at = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


# --- the parser ------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def at_keyword(self, word: str) -> bool:
        return self.peek().kind == "keyword" and self.peek().text == word

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, token: _Token, wanted: str) -> WhereError:
        got = "the end of the filter" if token.kind == "end" else snippet(token.text)
        return WhereError(f"where: expected {wanted} at position {token.at + 1}, got {got}")

    def expect(self, kind: str, text: str, wanted: str) -> None:
        token = self.take()
        if token.kind != kind or token.text != text:
            raise self.fail(token, wanted)

    def parse(self) -> Node:
        node = self.expr(0)
        if self.peek().kind != "end":
            raise self.fail(self.peek(), '"and", "or" or the end of the filter')
        return node

    def expr(self, depth: int) -> Node:
        parts = [self.conjunct(depth)]
        while self.at_keyword("or"):
            self.take()
            parts.append(self.conjunct(depth))
        return parts[0] if len(parts) == 1 else BoolOp("or", tuple(parts))

    def conjunct(self, depth: int) -> Node:
        parts = [self.negation(depth)]
        while self.at_keyword("and"):
            self.take()
            parts.append(self.negation(depth))
        return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))

    def negation(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise WhereError(f"where: nested more than {MAX_DEPTH} deep")
        token = self.peek()
        if self.at_keyword("not"):
            self.take()
            return Not(self.negation(depth + 1))
        if token.kind == "punct" and token.text == "(":
            self.take()
            node = self.expr(depth + 1)
            self.expect("punct", ")", '")"')
            return node
        return self.comparison()

    def comparison(self) -> Compare:
        column = self.take()
        if column.kind != "name":
            raise self.fail(column, "a column name (in `backquotes` if it is a keyword)")
        token = self.take()
        if token.kind == "op":
            return Compare(column.text, token.text, self.literal())  # type: ignore[arg-type]
        if token.kind == "keyword" and token.text == "not":
            self.expect("keyword", "in", '"in" after "not"')
            return Compare(column.text, "not in", self.items())
        if token.kind == "keyword" and token.text == "in":
            return Compare(column.text, "in", self.items())
        raise self.fail(token, "a comparison (==, !=, <, <=, >, >=, in) after the column")

    def items(self) -> tuple[Literal_, ...]:
        self.expect("punct", "[", '"[" starting a list of values')
        values = [self.literal()]
        while self.peek().kind == "punct" and self.peek().text == ",":
            self.take()
            values.append(self.literal())
            if len(values) > MAX_IN_ITEMS:
                raise WhereError(f"where: a list holds at most {MAX_IN_ITEMS} values")
        self.expect("punct", "]", '"," or "]"')
        return tuple(values)

    def literal(self) -> Literal_:
        token = self.take()
        if token.kind == "number":
            return float(token.text)
        if token.kind == "string":
            return token.text
        if token.kind == "keyword" and token.text in ("true", "false"):
            return token.text == "true"
        raise self.fail(token, "a value (a number, a quoted string, true or false)")


def parse_where(text: str) -> Node:
    """The filter's tree, or a WhereError that says where the text went wrong."""
    if len(text) > MAX_WHERE_CHARS:
        raise WhereError(f"where: a filter is at most {MAX_WHERE_CHARS} characters")
    if not text.strip():
        raise WhereError("where: the filter is empty; leave `where` out to count every row")
    return _Parser(text).parse()


# --- evaluation ----------------------------------------------------------------------


def evaluate(node: Node, frame: pd.DataFrame) -> pd.Series:
    """A boolean mask over `frame`'s rows: True where the filter holds."""
    import pandas as pd

    if isinstance(node, BoolOp):
        masks = [evaluate(o, frame) for o in node.operands]
        out = masks[0]
        for mask in masks[1:]:
            out = (out & mask) if node.op == "and" else (out | mask)
        return out
    if isinstance(node, Not):
        return ~evaluate(node.operand, frame)
    if node.column not in frame.columns:
        raise WhereError(f"where: no column {snippet(node.column)} in the governed data")
    series = frame[node.column]
    values = node.value if isinstance(node.value, tuple) else (node.value,)
    if node.op in ("in", "not in"):
        texts = {_as_text(v) for v in values}
        hit = series.notna() & as_texts(series).isin(texts)
        return (hit if node.op == "in" else series.notna() & ~hit).fillna(False).astype(bool)
    value = values[0]
    if isinstance(value, bool | str):
        if node.op not in ("==", "!="):
            raise WhereError(
                f"where: {snippet(node.column)} {node.op} compares order, which needs a number"
            )
        equal = as_texts(series) == _as_text(value)
        hit = equal if node.op == "==" else ~equal
        return (series.notna() & hit).fillna(False).astype(bool)
    numbers = pd.to_numeric(series, errors="coerce").astype("float64")
    ops = {
        "==": numbers.__eq__, "!=": numbers.__ne__, "<": numbers.__lt__,
        "<=": numbers.__le__, ">": numbers.__gt__, ">=": numbers.__ge__,
    }  # fmt: skip
    return (numbers.notna() & ops[node.op](value)).fillna(False).astype(bool)


def _as_text(value: Literal_) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def as_texts(series: pd.Series) -> pd.Series:
    """Values as the text a filter compares them with: 1.0 -> "1", True -> "true"."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        return series.map({True: "true", False: "false"}).astype("string")
    if pd.api.types.is_numeric_dtype(series):
        return series.map(lambda v: None if pd.isna(v) else _as_text(float(v))).astype("string")
    return series.astype("string").str.strip()
