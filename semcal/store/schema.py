"""Typed records saved as JSON (results.json: semcal.reports.results; fit_results.json: semcal.fit.fit_results):
dataclasses to and from their file form, with a schema version, NaN and infinities handled here once.

In the file NaN is null and ±inf the strings "inf" / "-inf" (files.plain_json: plain JSON every
reader accepts); `from_dict` turns them back into floats where the schema says float (and in
free-form values), so no reader special-cases them. A field made with `merged()` holds a block's
other keys (what differs by filter), merged into the block in the file. An optional field left at
None is left out of the file.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from semcal.core.errors import UserError
from semcal.store import files

T = TypeVar("T")


def merged() -> Any:
    """A dict field holding the block's keys that no other field names, merged into the block in the file."""
    return field(default_factory=dict, metadata={"merged": True})


def to_dict(record: Any) -> dict[str, Any]:
    """The record as written to its file: plain JSON values, NaN as None, ±inf as "inf" / "-inf"."""
    return files.plain_json(_unwrap(record))


def _unwrap(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for spec in fields(value):
            item = getattr(value, spec.name)
            if spec.metadata.get("merged"):
                out.update({key: _unwrap(stat) for key, stat in item.items()})
            elif item is not None or spec.default is not None:  # optional and absent: left out
                out[spec.name] = _unwrap(item)
        return out
    if isinstance(value, dict):
        return {key: _unwrap(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unwrap(item) for item in value]
    return value


def write(path: str | Path, record: Any) -> Path:
    """Write the record (strict JSON, its schema version included)."""
    return files.write_json(path, to_dict(record), strict=True)


def read(path: str | Path, cls: type[T], stage: str, version: int, fix: str) -> T:
    """The record of type `cls` in `path`, checked: readable JSON of `stage` at schema `version`,
    every required field there. `fix` ends each refusal: how to write the file again."""
    try:
        data = files.read_json(path)
    except (OSError, ValueError) as err:  # ValueError: not JSON, or not UTF-8
        raise UserError(f"{path} cannot be read ({str(err)[:120]}); {fix}.") from None
    if not isinstance(data, dict) or data.get("stage") != stage:
        raise UserError(f"{path} is not a `semcal {stage}` output; pass a folder `semcal {stage}` wrote.")
    found = data.get("schema_version")
    if found != version:
        written = "no schema version (an older semcal)" if found is None else f"schema version {found!r}"
        raise UserError(f"{path} has {written} and this semcal reads version {version}; {fix} to regenerate it.")
    return from_dict(cls, data, str(path), fix)


def from_dict(cls: type[T], data: Any, where: str, fix: str) -> T:
    """A record from its file form (numbers back to floats where the schema says float)."""
    if not isinstance(data, dict):
        raise UserError(f"{where} is not a JSON object as its schema says; {fix}.")
    hints = typing.get_type_hints(cls)
    known = {spec.name for spec in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    missing = []
    for spec in fields(cls):  # type: ignore[arg-type]
        if spec.metadata.get("merged"):
            values[spec.name] = {key: numbers(item) for key, item in data.items() if key not in known}
        elif spec.name in data:
            values[spec.name] = _value(hints[spec.name], data[spec.name], f"{where}: {spec.name}", fix)
        elif spec.default is MISSING and spec.default_factory is MISSING:
            missing.append(spec.name)
    if missing:
        raise UserError(f"{where} lacks its {', '.join(missing)}; {fix}.")
    return cls(**values)


def _value(kind: Any, value: Any, where: str, fix: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if is_dataclass(arg) and isinstance(value, (dict, arg)):
                return _value(arg, value, where, fix)
        chosen = next(arg for arg in args if arg is not type(None) and not is_dataclass(arg))
        return _value(chosen, value, where, fix)
    if is_dataclass(kind):  # a block built in memory may be typed already
        return value if isinstance(value, kind) else from_dict(kind, value, where, fix)
    if kind is float:
        return as_float(value, where, fix)
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} is not a JSON object as its schema says; {fix}.")
        return {key: _value(args[1], item, f"{where}: {key}", fix) for key, item in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where} is not a list as its schema says; {fix}.")
        return [_value(args[0], item, where, fix) for item in value]
    return numbers(value) if kind is Any else value


def as_float(value: Any, where: str, fix: str) -> float:
    """A number of the file as a float: null is NaN, "inf" / "-inf" infinities."""
    if value is None:
        return math.nan
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where} is {value!r}, not a number; {fix}.")
    return float(value)


def numbers(value: Any) -> Any:
    """Free-form values (a block's `stats`) with "inf" / "-inf" back as floats."""
    if isinstance(value, dict):
        return {key: numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [numbers(item) for item in value]
    return float(value) if isinstance(value, str) and value in ("inf", "-inf") else value


def file_value(value: Any) -> Any:
    """One value as its file holds it (a page that shows numbers as results.json has them)."""
    return files.plain_json(value)
