"""How result numbers are shown to people (summaries, tables, pages)."""

from __future__ import annotations


def format_number(value, digits: int = 4) -> str:
    """A result number for people: n/a for missing, "inf" as written, else `digits` significant digits."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if value != value:  # NaN
        return "n/a"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"
