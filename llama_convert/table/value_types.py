"""The closed set of value types a mapping table may declare for a config key (`type:`).

A config file is untrusted input: JSON allows Infinity and NaN, a hand-edited file holds "4" where 4
belongs, and a bool is an int to Python. Every value the table declares is checked here, against its
named type, before any translation rule sees it; so the rules may assume well-formed values, and the
next architecture's table states its own keys' types instead of code doing it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Callable, Protocol

from ..core.errors import ConvertError

# MindSpore and MindFormers keep sizes and token ids in int32 fields; anything larger is a corrupt file,
# and refusing it here means no shape computed from the config can reach a size that allocates nonsense.
INT_MAX = 2**31 - 1
# The parameter dtypes MindFormers' Llama is built in and llama-convert writes (dtypes.FLOATS).
FLOAT_DTYPES = ("bfloat16", "float16", "float32")


def kind(value: object) -> str:
    """What a JSON/YAML value is, in the words a user knows from the file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "not a finite number" if not math.isfinite(value) else "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def show(value: object) -> str:
    """A short rendering of a scalar (containers are only named: they may be huge or deeply nested)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:40] + "..."
        return '"' + text.replace('"', '\\"') + '"'
    if isinstance(value, int) and abs(value) > 10**12:
        if value.bit_length() > 14000:  # str() of an int over 4300 digits raises ValueError
            return f"a number of about {int(value.bit_length() * math.log10(2))} digits"
        return f"a {len(str(abs(value)))}-digit number"
    if isinstance(value, (int, float)):
        return repr(value)
    return {list: "[...]", tuple: "[...]", dict: "{...}"}.get(type(value), kind(value))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    # math.isfinite(10**400) raises OverflowError: an int is finite by nature
    return _is_int(v) or isinstance(v, float) and math.isfinite(v)


def _int_in(lo: int) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        if not _is_int(v):
            return "type"
        if v < lo:
            return "range"
        if v > INT_MAX:
            return "large"
        return None
    return check


def _any_int(v: object) -> str | None:
    if not _is_int(v):
        return "type"
    return "large" if abs(v) > INT_MAX else None


def _number(lo: float, lo_open: bool, hi: float | None = None) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        if not _is_number(v):
            return "type"
        if abs(v) > 1e308:  # an int beyond any float; the rules compute with float(v)
            return "range"
        if v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
            return "range"
        return None
    return check


def _token_id(v: object) -> str | None:
    # -1 is how LLaMA-1 era configs (and MindFormers) say "no such token"; HF loads it unchanged.
    if not _is_int(v):
        return "type"
    if v < -1:
        return "range"
    return "large" if v > INT_MAX else None


def _token_ids(v: object) -> str | None:
    if isinstance(v, list):
        if not v:
            return "range"
        return next((p for p in map(_token_id, v) if p), None)
    return _token_id(v)


def _bool(v: object) -> str | None:
    return None if isinstance(v, bool) else "type"


def _instance(t: type) -> Callable[[object], str | None]:
    return lambda v: None if isinstance(v, t) else "type"


def _string_list(v: object) -> str | None:
    return None if isinstance(v, list) and all(isinstance(x, str) for x in v) else "type"


def _float_dtype(v: object) -> str | None:
    if not isinstance(v, str):
        return "type"
    return None if v in FLOAT_DTYPES else "range"


# name -> (check, what it expects). A check returns None when the value is good, else "type" (wrong
# kind of value), "range" (right kind, out of range) or "large" (beyond what any model has).
TYPES: dict[str, tuple[Callable[[object], str | None], str]] = {
    "positive_int": (_int_in(1), "a positive integer"),
    "nonneg_int": (_int_in(0), "an integer >= 0"),
    "int": (_any_int, "an integer"),
    "positive_number": (_number(0.0, True), "a finite number > 0"),
    "nonneg_number": (_number(0.0, False), "a finite number >= 0"),
    "probability": (_number(0.0, False, 1.0), "a number in [0, 1]"),
    "bool": (_bool, "true or false"),
    "token_id": (_token_id, "a token id (an integer >= 0, or -1 for none)"),
    "token_ids": (_token_ids, "a token id or a non-empty list of token ids"),
    "string": (_instance(str), "a string"),
    "string_list": (_string_list, "a list of strings"),
    "float_dtype": (_float_dtype, "one of " + ", ".join(FLOAT_DTYPES)),
    "mapping": (_instance(dict), "a mapping"),
}


def problem(type_names: str | Sequence[str], value: object) -> str | None:
    """None if value is of (one of) the named types, else what is wrong, e.g. '"4" is a string; expected ...'."""
    names = [type_names] if isinstance(type_names, str) else list(type_names)
    verdicts = [TYPES[n][0](value) for n in names]
    if None in verdicts:
        return None
    expected = _expects(names)
    if "large" in verdicts:
        return f"{show(value)} is too large (at most {INT_MAX}); expected {expected}"
    if "range" in verdicts:
        if value == []:
            return f"is an empty list; expected {expected}"
        if isinstance(value, str):
            return f"{show(value)} is not {expected}"
        return f"{show(value)} is out of range; expected {expected}"
    if isinstance(value, list) and "token_ids" in names and value and not all(map(_is_int, value)):
        return f"is a list holding {kind(next(x for x in value if not _is_int(x)))}; expected {expected}"
    if value is None or isinstance(value, (list, tuple, dict)):
        return f"is {kind(value)}; expected {expected}"
    return f"{show(value)} is {kind(value)}; expected {expected}"


def unknown(type_names: Sequence[object]) -> list[str]:
    """The names in a table's `type:` that are not in the closed set (a table error)."""
    return [str(n) for n in type_names if not isinstance(n, str) or n not in TYPES]


class Declared(Protocol):
    """What a table entry declares about a key's value (table.Key)."""
    type: tuple[str, ...] | None
    required: bool
    nullable: bool
    fields: Mapping[str, tuple[str, ...]]


def check_fields(specs: Mapping[str, Declared], data: dict, where: object, prefix: str = "") -> None:
    """Check every key of data that specs declares a `type:` for; raise ConvertError naming the first bad one.

    A spec may say `required` (absent or null is an error), `nullable` (null means "not given", as HF
    reads it), and `fields` {subkey: types} for the keys of a mapping value.
    """
    for key, spec in specs.items():
        if spec.type is not None:
            _check(f"{prefix}{key}", spec.type, spec.required, spec.nullable, spec.fields, data, key, where)


def _check(name: str, types: Sequence[str], required: bool, nullable: bool, fields: Mapping[str, Sequence[str]],
           data: dict, key: str, where: object) -> None:
    if key not in data or data[key] is None:
        if required:
            raise ConvertError(where, f"{name}: {'missing' if key not in data else 'is null'}; "
                                      f"expected {_expects(types)}")
        if key in data and not nullable:
            raise ConvertError(where, f"{name}: is null; expected {_expects(types)}")
        return
    value = data[key]
    bad = problem(types, value)
    if bad:
        raise ConvertError(where, f"{name}: {bad}", _quoted_number_hint(value))
    if isinstance(value, dict):
        for sub, sub_types in fields.items():
            _check(f"{name}.{sub}", sub_types, False, False, {}, value, sub, where)


def _quoted_number_hint(value: object) -> str | None:
    """A number that arrived as a string was usually quoted by hand, or written the way YAML 1.1 misreads."""
    if not isinstance(value, str):
        return None
    try:
        float(value)
    except ValueError:
        return None
    return ("write the number without quotes; in YAML write 1.0e-05 rather than 1e-05, which YAML 1.1 "
            "readers (PyYAML, and so MindFormers) take for a string")


def _expects(type_names: str | Sequence[str]) -> str:
    names = [type_names] if isinstance(type_names, str) else type_names
    return " or ".join(TYPES[n][1] for n in names)
