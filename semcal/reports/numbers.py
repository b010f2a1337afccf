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


def format_percent(value, digits: int = 1, sign: bool = False) -> str:
    """A share (0-1) as a percentage for people: n/a for missing, inf as written, `sign` adds "%"."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return "n/a" if not isinstance(value, str) else value
    if value in (float("inf"), float("-inf")):
        return format_number(value)
    return f"{round(100 * value, digits) + 0.0:.{digits}f}" + ("%" if sign else "")  # + 0.0: -0.0 becomes 0.0
