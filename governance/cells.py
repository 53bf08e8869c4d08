"""Cell values from an institution's file, made inert before they are copied anywhere.

A cell can hold a spreadsheet formula (`=cmd|' /C calc'!A0`) that runs when a report,
a draft or a summary is opened in a spreadsheet, or ten megabytes of text. Whatever
governance copies out of the data (example values, category lists, column names in
summary keys) goes through `inert` first: a value that a spreadsheet would read as a
formula gets a leading quote, and every value is cut to `MAX_CELL_CHARS`. The HTML
report escapes on top of this (governance/report.py).
"""

from __future__ import annotations

from typing import Any

# What a spreadsheet takes for the start of a formula (OWASP's list: =, +, -, @, tab, CR).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MAX_CELL_CHARS = 200


def needs_escape(text: str, limit: int = MAX_CELL_CHARS) -> bool:
    """True when `inert` would change `text`."""
    return len(text) > limit or text.startswith(FORMULA_STARTS)


def inert(value: object, limit: int = MAX_CELL_CHARS) -> str:
    """`value` as text that no spreadsheet evaluates, at most `limit` characters.

    Idempotent: an inert value passes through unchanged.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) > 4 * limit:
        text = text[: 4 * limit]  # never copy more than this of a huge cell
    if text.startswith(FORMULA_STARTS):
        text = "'" + text
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def inert_tree(obj: Any, limit: int = MAX_CELL_CHARS) -> Any:
    """`obj` (JSON-like: dicts, lists, scalars) with every string key and value inert."""
    if isinstance(obj, str):
        return inert(obj, limit)
    if isinstance(obj, dict):
        return {
            inert(k, limit) if isinstance(k, str) else k: inert_tree(v, limit)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [inert_tree(v, limit) for v in obj]
    return obj
