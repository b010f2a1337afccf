"""Stage configuration: plain dataclasses, `--name=value` overrides, and script entry.

Every stage has a dataclass of plain values (its config). The same values appear as
variables at the top of the stage's script; `run_script` collects them, applies
command-line overrides typed by the field's declared type, and calls the stage.
Nothing here evaluates user input: values are parsed by type, never by `eval`.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import sys
import tokenize
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from semcal.core.errors import UserError

C = TypeVar("C")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "null"}


def _field_types(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """Return (accepts None, the type without None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != len(typing.get_args(tp)):
            return True, args[0]  # settings are Optional[X] of one type X
    return False, tp


def parse_value(text: str, tp: Any) -> Any:
    """Read `text` as a value of type `tp`; raise ValueError with the expected form."""
    optional, tp = _is_optional(tp)
    if optional and text.strip().lower() in _NONE:
        return None
    origin = typing.get_origin(tp)
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected a boolean (true/false, yes/no, 1/0)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    if tp is str:
        return text
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (str,)
        items = [part.strip() for part in text.split(",") if part.strip()]
        return [parse_value(item, item_tp) for item in items]
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp) or (str, str)
        parsed = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if "=" not in part:
                raise ValueError("expected key=value pairs separated by commas, e.g. a=1,b=2")
            key, value = part.split("=", 1)
            parsed[parse_value(key.strip(), key_tp)] = parse_value(value.strip(), value_tp)
        return parsed
    raise ValueError(f"settings of type {tp} cannot be given on the command line")


def describe_type(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    origin = typing.get_origin(inner)
    if origin in (list, tuple):
        name = f"comma-separated list of {describe_type(typing.get_args(inner)[0])}"
    elif origin is dict:
        name = "key=value,key=value"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or none" if optional else name


def field_comments(config_cls: type) -> dict[str, str]:
    """The trailing `# comment` of each field line in the dataclass source (for --help); a field
    a subclass redeclares takes the subclass's comment, the others their base class's."""
    comments: dict[str, str] = {}
    names = {f.name for f in dataclasses.fields(config_cls)}
    for klass in config_cls.__mro__:
        if dataclasses.is_dataclass(klass):
            for name, comment in _own_field_comments(klass, names).items():
                comments.setdefault(name, comment)
    return comments


def _own_field_comments(config_cls: type, names: set[str]) -> dict[str, str]:
    try:
        source = inspect.getsource(config_cls)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    line_name: str | None = None
    for tok in tokens:
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names:
            line_name = tok.string
        elif tok.type == tokenize.COMMENT and line_name is not None:
            comments.setdefault(line_name, tok.string.lstrip("# ").strip())
        elif tok.type == tokenize.NEWLINE:
            line_name = None
    return comments


def settings_help(config_cls: type, current: Any = None) -> str:
    """One line per setting: name, current value (the default unless given), type, meaning."""
    types_ = _field_types(config_cls)
    comments = field_comments(config_cls)
    current = config_cls() if current is None else current
    lines = []
    for f in dataclasses.fields(config_cls):
        value = getattr(current, f.name)
        lines.append(f"  --{f.name}={_format_default(value)}  ({describe_type(types_[f.name])})")
        if f.name in comments:
            lines.append(f"      {comments[f.name]}")
    return "\n".join(lines)


def _format_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def apply_overrides(config: C, argv: Sequence[str]) -> C:
    """Return a copy of `config` with every `--name=value` in argv applied.

    Unknown names and values that do not parse as the field's type raise UserError,
    whose message lists the valid names (or says which form was expected).
    """
    config_cls = type(config)
    types_ = _field_types(config_cls)
    valid = [f.name for f in dataclasses.fields(config_cls)]
    changes: dict[str, Any] = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise UserError(
                f"cannot read argument {arg!r}: settings are given as --name=value. Valid names: {', '.join(valid)}"
            )
        name, text = arg[2:].split("=", 1)
        name = name.replace("-", "_")
        if name not in types_:
            raise UserError(f"unknown setting {name!r} for {config_cls.__name__}. Valid names: {', '.join(valid)}")
        try:
            changes[name] = parse_value(text, types_[name])
        except ValueError as err:
            raise UserError(
                f"--{name}={text}: {err} (type {describe_type(types_[name])}, "
                f"default {_format_default(getattr(config, name))})"
            ) from None
    return dataclasses.replace(config, **changes)


def apply_settings(config: C, settings: dict[str, str], where: str) -> C:
    """A copy of `config` with `settings` (name -> value, as a `name=value,...` setting gives them)
    applied; a bad one is a UserError that names the setting `where` they came from."""
    try:
        return apply_overrides(config, [f"--{name}={value}" for name, value in settings.items()])
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def below_minimum(config: Any, minimums: dict[str, int]) -> list[str]:
    """One problem per setting below its minimum, e.g. "n_runs must be at least 1 (got 0)"; none is not checked."""
    problems = []
    for name, low in minimums.items():
        value = getattr(config, name)
        if value is not None and value < low:
            problems.append(f"{name} must be {'0 or more' if low == 0 else f'at least {low}'} (got {value})")
    return problems


def config_from_script(config_cls: type[C], script_vars: dict[str, Any]) -> C:
    """Build a config from the variables a stage script defines at its top."""
    names = {f.name for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    return config_cls(**{k: v for k, v in script_vars.items() if k in names})


def run_script(
    stage: Callable[[C], Any],
    config_cls: type[C],
    script_vars: dict[str, Any],
    argv: Sequence[str] | None = None,
) -> Any:
    """Entry point of a stage script: its variables, then command-line overrides, then the stage."""
    from semcal.core import console, threads

    argv = list(sys.argv[1:] if argv is None else argv)
    console.setup("--verbose" in argv)
    argv = [arg for arg in argv if arg != "--verbose"]
    thread_setting, argv = threads.split_option(argv)
    try:
        with threads.limited(thread_limit(thread_setting)):
            return _run_script(stage, config_cls, script_vars, argv)
    except UserError as err:
        sys.exit(f"error: {err}")


def thread_limit(value: str | None) -> int | None:
    """semcal.core.threads.wanted for an entry point: a bad `--threads` is the one sentence of a UserError."""
    from semcal.core import threads

    try:
        return threads.wanted(value)
    except ValueError as err:
        raise UserError(str(err)) from None


def _run_script(stage: Callable[[C], Any], config_cls: type[C], script_vars: dict[str, Any], argv: list[str]) -> Any:
    config = config_from_script(config_cls, script_vars)
    if any(a in ("-h", "--help") for a in argv):
        print(
            f"Settings (edit them at the top of the script, or pass --name=value):\n{settings_help(config_cls, config)}"
        )
        notes = getattr(sys.modules.get(config_cls.__module__), "HELP_NOTES", "")
        if notes:
            print(f"\n{notes}")
        return None
    return stage(apply_overrides(config, argv))


def to_arguments(config: Any, leave_out: Sequence[str] = ()) -> list[str]:
    """`config` as the --name=value arguments that apply_overrides reads back."""
    return [
        f"--{name}={_format_default(value)}" for name, value in config_to_dict(config).items() if name not in leave_out
    ]


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
