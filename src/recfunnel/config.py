"""Typed run configuration: one frozen dataclass per stage, nested in a pipeline config.

Every config is a `@dataclass(frozen=True)` whose fields all have defaults and a one-line
doc, given with `param`; a nested section is a field whose type is another config class,
given with `section`:

    @dataclass(frozen=True)
    class TrainConfig:
        lr: float = param(1e-3, "Adam learning rate.")
        loss: Literal["bce", "bpr"] = param("bpr", "Training loss.")
        ks: tuple[int, ...] = param((50, 100), "Recall cut-offs to report.")
        seed: int | None = param(None, "Random seed; none draws one.")

        def validate(self) -> None:  # optional; raise ConfigError to reject a value
            if self.lr <= 0:
                raise ConfigError(f"lr must be > 0, got {self.lr}")

    @dataclass(frozen=True)
    class PipelineConfig:
        train: TrainConfig = section(TrainConfig, "Two-tower training.")

    config = load_config(PipelineConfig, "run.toml", ["--train.lr=3e-4", "--train.ks=10,50"])
    save_config(config, run_dir / "config.json")

A value is set, later ones winning, by the defaults in code, then a TOML file (one
`[train]` table per section), then `section.field=value` overrides from the command line.
Keys are checked against the dataclasses: an unknown key or a value of the wrong type is a
`ConfigError` naming the dotted key and what is allowed. After a config is built, each
section's `validate()` runs, innermost first.

Supported field types: int, float (ints are accepted), str, bool, `Literal[...]`,
`tuple[X, ...]` (a TOML/JSON list, or comma-separated on the command line), `X | None`
(`none`/`null` on the command line, `null` in JSON; TOML has no null) and nested config
classes. Annotations are resolved with `typing.get_type_hints`, so config classes must be
defined at module level (string annotations from `from __future__ import annotations` are
fine there).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from recfunnel.atomic import write_atomic
from recfunnel.errors import ConfigError

C = TypeVar("C")

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")
_NONE = ("none", "null")
# The largest seed torch.manual_seed takes; numpy's default_rng takes any int >= 0.
SEED_MAX = 2**64 - 1


# --- declaring configs ---------------------------------------------------------------------


def require_positive(**values: float) -> None:
    """A ConfigError naming the first of `values` (field name -> value) that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value}")


_ABSENT = object()


def param(default: Any, help: str, *, saved_without: Any = _ABSENT) -> Any:
    """A config field with a default and a one-line doc (shown by `describe`).

    `saved_without`: for a field added after runs were saved, the value a saved config
    without it meant (what the code did before the field existed); `config_from_json`
    reads it there, so an older run directory loads as it was trained, while new configs
    get `default`."""
    metadata = {"help": help}
    if saved_without is not _ABSENT:
        metadata["saved_without"] = saved_without
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type, help: str = "") -> Any:
    """A nested config section whose default is `cls()`."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


# --- building ------------------------------------------------------------------------------


def from_dict(cls: type[C], data: Mapping[str, Any], *, where: str = "") -> C:
    """Build `cls` from a (nested) mapping, e.g. parsed TOML or JSON; missing keys keep
    their defaults. `where` is the dotted prefix used in error messages. Lists become
    tuples and ints are accepted for float fields; anything else of the wrong type, or an
    unknown key, raises ConfigError. Runs the `validate` hooks."""
    config = _build(cls, data, where)
    validate_config(config, where=where)
    return config


def apply_overrides(config: C, overrides: Sequence[str]) -> C:
    """A copy of `config` with `key.path=value` overrides applied in order (a leading `--`
    is ignored). The text is parsed by the field's type: `1e-3`, `true`/`no`, `none`,
    `50,100,200` for a tuple. Runs the `validate` hooks."""
    config = _apply_overrides(config, overrides)
    validate_config(config)
    return config


def load_config(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """The defaults of `cls`, updated by the TOML file at `path` (if given), then by the
    command-line `overrides`. The `validate` hooks run once, on the final config, so an
    override may repair a value the file got wrong."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        config = _build(cls, data, "")
    except ConfigError as e:
        if path is None:
            raise
        raise ConfigError(f"{path}: {e}") from None
    config = _apply_overrides(config, overrides)
    validate_config(config)
    return config


def validate_config(config: Any, *, where: str = "") -> None:
    """Run `validate()` on every section of `config` that defines one, innermost first, so
    a section may rely on its subsections being valid. A ConfigError raised by a nested
    section's hook is prefixed with its dotted path."""
    for f in _fields(type(config)):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_config(value, where=_join(where, f.name))
        else:
            _check_finite(value, _join(where, f.name))
            if f.name == "seed":
                _check_seed(value, _join(where, f.name))
    hook = getattr(config, "validate", None)
    if callable(hook):
        try:
            hook()
        except ConfigError as e:
            if not where:
                raise
            raise ConfigError(f"{where}: {e}") from e


def _check_finite(value: Any, key: str) -> None:
    """Every float of a config is finite: NaN slips through range checks (`lr <= 0` is
    False for NaN), and no field means anything by infinity. Checked here, once, for all."""
    if isinstance(value, tuple | list):
        for i, item in enumerate(value):
            _check_finite(item, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")


def _check_seed(value: Any, key: str) -> None:
    """Every field named `seed` seeds numpy and torch, which refuse a negative or too large
    one only when training reaches it (a traceback, maybe minutes in). Checked here, once."""
    if isinstance(value, int) and not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{key} must be an integer in 0..2**64-1, got {value}")


# --- saving --------------------------------------------------------------------------------


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts, lists and scalars (tuples become lists), ready for
    `json.dump`. None stays None: a TOML writer must leave such keys out."""
    return {f.name: _plain(getattr(config, f.name)) for f in _fields(type(config))}


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as JSON (indent 2), atomically: a reader never sees half a
    file, and an interrupted save leaves the old one in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_dict(config), indent=2) + "\n"
    write_atomic(path, text.encode("utf-8"))


def config_from_json(cls: type[C], path: str | Path) -> C:
    """Read back a config written by `save_config`; it compares equal to the one saved."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        return from_dict(cls, _fill_saved_without(cls, data))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _fill_saved_without(cls: type, data: Any) -> Any:
    """`data` with each absent field that declares `saved_without` set to that value, in
    `cls` and its sections (see `param`)."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return data
    data = dict(data)
    for f in dataclasses.fields(cls):
        factory = f.default_factory
        if f.name in data and dataclasses.is_dataclass(factory):
            data[f.name] = _fill_saved_without(factory, data[f.name])
        elif f.name not in data and "saved_without" in f.metadata:
            data[f.name] = f.metadata["saved_without"]
    return data


# --- documentation -------------------------------------------------------------------------


def describe(cls: type) -> list[tuple[str, str, str]]:
    """One `(dotted key, default as text, help)` row per field, sections expanded in place,
    for `--help` epilogs and docs. The default is written as an override would take it
    (`50,100`, `none`, `true`); help is "" for a field declared without one."""
    return _describe(_build(cls, {}, ""), "")


def _describe(config: Any, where: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for f in _fields(type(config)):
        key = _join(where, f.name)
        value = getattr(config, f.name)
        if _section_type(_hints(type(config))[f.name]) is not None:
            rows.extend(_describe(value, key))
        else:
            rows.append((key, _as_text(value), f.metadata.get("help", "")))
    return rows


# --- internals -----------------------------------------------------------------------------


def _build(cls: type[C], data: Any, where: str) -> C:
    """from_dict without the validate hooks."""
    fields = {f.name: f for f in _fields(cls)}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where or 'config'}: expected a table of keys ({_key_list(cls)}), got {data!r}"
        )
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown_key(cls, str(key), where))
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key!r}")
    return cls(**kwargs)


def _apply_overrides(config: C, overrides: Sequence[str]) -> C:
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of strings, not one string")
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        path, eq, value = text.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} has no value; write it as --{path}=VALUE")
        parts = path.split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: {path!r} is not a dotted key like train.lr")
        config = _set(config, parts, value, "")
    return config


def _set(config: C, parts: list[str], text: str, where: str) -> C:
    name, rest = parts[0], parts[1:]
    cls = type(config)
    key = _join(where, name)
    if name not in {f.name for f in _fields(cls)}:
        raise ConfigError(_unknown_key(cls, name, where))
    tp = _hints(cls)[name]
    is_section = _section_type(tp) is not None
    if rest:
        if not is_section:
            raise ConfigError(
                f"unknown key {_join(key, '.'.join(rest))!r}: {key!r} is a value "
                f"({_type_name(tp)}), not a section"
            )
        value = _set(getattr(config, name), rest, text, key)
    elif is_section:
        raise ConfigError(
            f"{key!r} is a section; set one of its keys as {key}.KEY=VALUE, "
            f"KEY one of: {_key_list(_section_type(tp))}"
        )
    else:
        value = _parse_text(tp, text, key)
    return dataclasses.replace(config, **{name: value})


def _convert(tp: Any, value: Any, key: str) -> Any:
    """A value from TOML/JSON checked against (and lightly coerced to) the type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    sub = _section_type(tp)
    if sub is not None:
        return _build(sub, value, key)
    if _is_optional(tp):
        if value is None:
            return None
        try:
            return _convert(_strip_none(tp), value, key)
        except ConfigError as e:
            if str(e).startswith(f"{key}: expected "):  # name the full type, "X or none"
                raise ConfigError(_expected(tp, value, key)) from None
            raise
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
    elif origin is tuple:
        if isinstance(value, list | tuple):
            items = _tuple_item_types(tp, len(value), key, value)
            pairs = enumerate(zip(items, value, strict=True))
            return tuple(_convert(t, v, f"{key}[{i}]") for i, (t, v) in pairs)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    else:
        raise TypeError(f"{key}: unsupported config field type {tp!r}")
    raise ConfigError(_expected(tp, value, key))


def _parse_text(tp: Any, text: str, key: str) -> Any:
    """A value from the command line: text parsed by the field's type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_optional(tp):
        if text.strip().lower() in _NONE:
            return None
        try:
            return _parse_text(_strip_none(tp), text, key)
        except ConfigError as e:
            if str(e).startswith(f"{key}: expected "):
                raise ConfigError(_expected(tp, text, key, from_text=True)) from None
            raise
    word = text.strip()
    if origin is Literal:
        for a in args:
            if _as_text(a) == word:
                return a
    elif origin is tuple:
        pieces = [p.strip() for p in text.split(",")] if word else []
        items = _tuple_item_types(tp, len(pieces), key, text)
        pairs = enumerate(zip(items, pieces, strict=True))
        return tuple(_parse_text(t, p, f"{key}[{i}]") for i, (t, p) in pairs)
    elif tp is bool:
        if word.lower() in _TRUE:
            return True
        if word.lower() in _FALSE:
            return False
    elif tp is int:
        try:
            return int(word)
        except ValueError:
            pass
    elif tp is float:
        try:
            return float(word)
        except ValueError:
            pass
    elif tp is str or tp is Any:
        return text
    else:
        raise TypeError(f"{key}: unsupported config field type {tp!r}")
    raise ConfigError(_expected(tp, text, key, from_text=True))


def _expected(tp: Any, got: Any, key: str, *, from_text: bool = False) -> str:
    allowed = _type_name(tp)
    if from_text and bool in (tp, *typing.get_args(tp)):
        allowed += f" ({'/'.join(_TRUE + _FALSE)})"
    return f"{key}: expected {allowed}, got {got!r}"


def _tuple_item_types(tp: Any, n: int, key: str, value: Any) -> tuple[Any, ...]:
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return (args[0],) * n
    if len(args) != n:
        raise ConfigError(_expected(tp, value, key))
    return args


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> list[dataclasses.Field[Any]]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a config dataclass")
    if not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"config class {cls.__name__} must be @dataclass(frozen=True)")
    return [f for f in dataclasses.fields(cls) if f.init]


def _section_type(tp: Any) -> type | None:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    return None


def _is_optional(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if type(None) in args and len(args) == 2:
            return True
        raise TypeError(f"unsupported config field type {tp!r}: only X | None unions")
    return False


def _strip_none(tp: Any) -> Any:
    return next(a for a in typing.get_args(tp) if a is not type(None))


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _section_type(tp) is not None:
        return "a section"
    if origin is typing.Union or origin is types.UnionType:
        return f"{_type_name(_strip_none(tp))} or none"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)}: " + ", ".join(_type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _unknown_key(cls: type, name: str, where: str) -> str:
    names = [f.name for f in _fields(cls)]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {_join(where, close[0])!r}?)" if close else ""
    level = f"in [{where}]" if where else "at the top level"
    return f"unknown config key {_join(where, name)!r}{hint}; valid keys {level}: {_key_list(cls)}"


def _key_list(cls: type) -> str:
    hints = _hints(cls)
    return ", ".join(
        f.name + (" (section)" if _section_type(hints[f.name]) else "") for f in _fields(cls)
    )


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _as_text(value: Any) -> str:
    """A value as it would be written in an override."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(_as_text(v) for v in value)
    return str(value)
