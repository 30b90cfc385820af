"""YAML data into frozen dataclasses, by their type hints: the schema is the check, and the types are
the documentation of what a file may say.

A class's fields are the words its mapping may hold (`field(metadata={"yaml": "from"})` when the
word is not a Python name); a field with a default may be left out. Supported hints: str, int,
float, bool, None, Literal[...], unions of these, tuple[X, ...] (a YAML list), OneOrMore[X] (one
value or a list of them), Mapping[str, X] (read-only, in file order) and nested dataclasses. A
class's `__post_init__` states what its own fields must agree on by raising `Invalid`.

Every error is one ConvertError naming the file and the entry by its path in the file, in the
file's words: `mappings/x.yaml: config.hidden_size: unknown word 'too' (write one of back, check, ...)`.
That path, keys of mappings included, and start-up are why this is not a library: msgspec's errors
say `$.config[...]` for every key of a mapping, so the entry would go unnamed; pydantic's import
alone (~0.35 s here) is several times a bf16 conversion's start-up; cattrs reports exception groups
and imports in ~0.1 s. This module imports nothing the tool does not already import.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, NoReturn, TypeVar, Union

from ..core.errors import ConvertError
from .value_types import kind, show

T = TypeVar("T")

EMPTY: Mapping = types.MappingProxyType({})


class _OneOrMore:
    """Marks tuple[X, ...] fields whose YAML may give a single X instead of a list."""


X = TypeVar("X")
OneOrMore = Annotated[tuple[X, ...], _OneOrMore]


class Unset:
    """The value of a field the file left out, where null is a value of its own (`back: null`)."""
    _it: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._it is None:
            cls._it = super().__new__(cls)
        return cls._it

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


class Record:
    """Equality, hash and repr of a schema class, by its fields, written once for all of them.

    Python 3.11's @dataclass compiles every method it generates separately, for every class: ~0.5 ms
    a method here, 6 methods for each of the table's 15 classes, paid at every start of the tool.
    `record` has it generate only __init__ and the frozen __setattr__/__delattr__.
    """
    __slots__ = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


def record(cls: type[T]) -> type[T]:
    """A frozen dataclass deriving from Record (see there)."""
    return dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)


def empty() -> Any:
    """A dataclass field defaulting to the empty read-only mapping."""
    return dataclasses.field(default_factory=lambda: EMPTY)


class Invalid(ValueError):
    """Raised by a schema class's __post_init__: what is wrong with it (the entry's path is added)."""

    def __init__(self, problem: str, hint: str | None = None, at: str | None = None):
        super().__init__(problem)
        self.problem, self.hint, self.at = problem, hint, at   # at: the field it is about, if one


class _Error(Exception):
    def __init__(self, where: str, problem: str, hint: str | None = None):
        self.where, self.problem, self.hint = where, problem, hint


def build(cls: type[T], data: object, file: Path | str, **given: Any) -> T:
    """`data` (parsed YAML) as a `cls`; fields named in `given` are set from it, not from the file."""
    try:
        return _dataclass(cls, data, "", given)
    except _Error as e:
        raise ConvertError(file, f"{e.where}: {e.problem}" if e.where else e.problem, e.hint) from None


@lru_cache(maxsize=None)
def _fields(cls: type) -> tuple[tuple[str, str, Any, bool], ...]:
    """(python name, YAML word, resolved hint, required) of each field of a dataclass."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append((f.name, f.metadata.get("yaml", f.name), hints[f.name], required))
    return tuple(out)


@lru_cache(maxsize=None)
def _schema(cls: type, given: frozenset[str]) -> tuple[tuple[tuple[str, str, Any, bool], ...], frozenset[str], str]:
    """A class's fields read from the file (with each one's converter), their words, and its unknown-key noun."""
    fields = tuple((name, word, _converter(hint), required) for name, word, hint, required in _fields(cls)
                   if name not in given)
    return fields, frozenset(word for _, word, _, _ in fields), getattr(cls, "WORD", "word")


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _dataclass(cls: type, data: object, where: str, given: dict | None = None) -> Any:
    fields, words, noun = _schema(cls, frozenset(given or ()))
    if not isinstance(data, dict):
        raise _Error(where, f"{_is(data)}; expected {_expects(cls)}")
    unknown = [k for k in data if k not in words]
    if unknown:
        raise _Error(where, f"unknown {noun} {unknown[0]!r}", f"write one of {', '.join(sorted(words))}")
    kwargs = dict(given or {})
    for name, word, convert, required in fields:
        if word in data:
            kwargs[name] = convert(data[word], _join(where, word))
        elif required:
            raise _Error(_join(where, word), "missing", f"expected {_expects(_hint(cls, name))}")
    try:
        return cls(**kwargs)
    except Invalid as e:
        raise _Error(_join(where, e.at) if e.at else where, e.problem, e.hint) from None


def _hint(cls: type, name: str) -> Any:
    return next(hint for field, _, hint, _ in _fields(cls) if field == name)


Convert = Callable[[object, str], Any]   # (value, its path in the file) -> the typed value


@lru_cache(maxsize=None)
def _converter(hint: Any) -> Convert:
    """The function that checks and converts a value of one hint: made once per hint, so that a table's
    thousand values cost a call each, not a walk through typing's introspection."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        inner = _converter(args[0])
        if _OneOrMore in args[1:]:
            return lambda v, where: inner(v if isinstance(v, list) else [v], where)
        return inner
    if dataclasses.is_dataclass(hint):
        return lambda v, where: _dataclass(hint, v, where)
    expected = _expects(hint)

    def refuse(v: object, where: str) -> NoReturn:
        raise _Error(where, f"{_is(v)}; expected {expected}")

    if origin in (Union, types.UnionType):
        real = [h for h in args if h is not Unset and h is not type(None)]
        if len(real) == 1:  # X | None: X's own checks, with their own words
            inner = _converter(real[0])
            if type(None) not in args:
                return inner
            return lambda v, where: None if v is None else inner(v, where)
    if origin is tuple:
        item = _converter(args[0])

        def tuple_of(v: object, where: str) -> tuple:
            if not isinstance(v, list):
                refuse(v, where)
            return tuple(item(x, f"{where}[{i}]") for i, x in enumerate(v))
        return tuple_of
    if origin is Mapping:
        value = _converter(args[1])

        def mapping_of(v: object, where: str) -> Mapping:
            if not isinstance(v, dict):
                refuse(v, where)
            bad = next((k for k in v if not isinstance(k, str)), None)
            if bad is not None:
                raise _Error(where, f"key {show(bad)} is {kind(bad)}; expected a name", "quote it in the YAML")
            return types.MappingProxyType({k: value(x, _join(where, k)) for k, x in v.items()})
        return mapping_of
    ok = _scalar_test(hint)

    def scalar(v: object, where: str) -> object:
        if not ok(v):
            refuse(v, where)
        return v
    return scalar


def _scalar_test(hint: Any) -> Callable[[object], bool]:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        tests = [_scalar_test(h) for h in typing.get_args(hint) if h is not Unset]
        return lambda v: any(t(v) for t in tests)
    if origin is Literal:
        allowed = typing.get_args(hint)
        return lambda v: any(v == a and type(v) is type(a) for a in allowed)
    if hint is Any or hint is object:
        return lambda v: True
    if hint is type(None):
        return lambda v: v is None
    if hint is float:  # YAML writes 1 for 1.0
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    return lambda v: type(v) is hint


_NOUNS = {str: ("a string", "strings"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          bool: ("a boolean", "booleans"), type(None): ("null", "nulls")}


def _expects(hint: Any, many: bool = False) -> str:
    """What a hint asks for, in the words of the file ('a list of strings'); `many`: in the plural."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        if _OneOrMore in args[1:]:
            one = typing.get_args(args[0])[0]
            return f"{_expects(one, many)} or {'lists' if many else 'a list'} of {_expects(one, True)}"
        return _expects(args[0], many)
    if dataclasses.is_dataclass(hint):
        return f"{'mappings' if many else 'a mapping'} of {', '.join(word for _, word, _, _ in _fields(hint))}"
    if origin is tuple:
        return f"{'lists' if many else 'a list'} of {_expects(args[0], True)}"
    if origin is Mapping:
        return f"{'mappings' if many else 'a mapping'} of names to {_expects(args[1], True)}"
    if origin in (Union, types.UnionType):
        words = [_expects(h, many) for h in args if h is not Unset]
        return ", ".join(words[:-1]) + " or " + words[-1]
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    return _NOUNS[hint][many] if hint in _NOUNS else getattr(hint, "__name__", str(hint))


def _is(value: object) -> str:
    """'"4" is a string', 'is a list': a scalar shown as the file wrote it, a container only named."""
    if value is None or isinstance(value, (list, dict)):
        return f"is {kind(value)}"
    return f"{show(value)} is {kind(value)}"
