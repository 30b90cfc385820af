"""The declarative mapping tables in mappings/: loading them and expanding their tensor rules."""
from __future__ import annotations

import ast
import hashlib
import operator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from . import ops, value_types
from .errors import ConvertError
from .formats.files import read_small

DEFAULT_TABLE = "llama"


def tables_dir() -> Path:
    """mappings/ ships inside the wheel as converter/mappings; a source checkout has it at the root."""
    packaged = Path(str(resources.files("converter"))) / "mappings"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "mappings"


@dataclass(frozen=True)
class TensorRule:
    name: str                 # MindFormers name pattern
    sources: tuple[str, ...]  # hf_tensors keys
    op: str
    dtype: str                # "param" or "norm"
    when: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    name: str
    path: Path
    sha256: str
    data: dict

    @property
    def config_rules(self) -> dict[str, dict]:
        return self.data["config"]

    @property
    def generation_rules(self) -> dict[str, dict]:
        return self.data.get("generation", {})

    @property
    def model_config_rules(self) -> dict[str, dict]:
        """Types of the MindFormers model_config keys read on the way back."""
        return self.data.get("model_config", {})

    @property
    def hf_tensors(self) -> dict[str, dict]:
        return self.data["hf_tensors"]

    @property
    def ms_rules(self) -> list[TensorRule]:
        return [TensorRule(r["name"], tuple(r["from"]), r.get("op", "copy"), r.get("dtype", "param"),
                           tuple(r.get("when", ()))) for r in self.data["ms_tensors"]]

    @property
    def skip(self) -> dict[str, str]:
        return self.data.get("skip", {})

    @property
    def tied_twins(self) -> dict[str, str]:
        return self.data.get("tied_twins", {})


def safe_yaml(text: str | bytes):
    """yaml.safe_load, through libyaml when PyYAML has it: 2 ms instead of 15 for our table."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_table(name: str = DEFAULT_TABLE) -> Table:
    path = Path(name) if name.endswith((".yaml", ".yml")) else tables_dir() / f"{name}.yaml"
    raw = read_small(path, "mapping table")
    try:
        data = safe_yaml(raw)
    except yaml.YAMLError as e:
        raise ConvertError(path, f"mapping table is not valid YAML: {str(e).splitlines()[0]}") from None
    table = Table(data["name"], path, hashlib.sha256(raw).hexdigest(), data)
    _check_table(table)
    return table


# What an entry of each keyed section may say. A verb is what happens to the key; exactly one applies,
# so that a misspelled verb (`ignor:`) is a table error instead of a key that silently does nothing.
_VERBS = {"config": {"to", "via", "require", "reject", "ignore"}, "generation": {"to", "ignore"},
          "model_config": set()}
_QUALIFIERS = {"type", "required", "nullable", "fields", "default"}


def _check_table(table: Table) -> None:
    for section in ("config", "generation", "model_config"):
        _check_entries(table, section)
        _check_types(table, section)
    for name, expr in table.data.get("dims", {}).items():
        try:
            eval_dim(expr, {}, names_only=True)
        except ValueError as e:
            raise ConvertError(table.path, f"dims.{name}: {e}") from None
    dims = table.data.get("dims", {})
    for key, spec in table.hf_tensors.items():
        undefined = [d for d in spec.get("shape", ()) if not isinstance(d, int) and d not in dims]
        if undefined:
            raise ConvertError(table.path, f"hf_tensors.{key}: shape symbol {undefined[0]!r} is not under dims",
                               f"dims defines {', '.join(dims)}")
    flags = set(table.data.get("flags", {}))
    for key, spec in table.hf_tensors.items():
        bad = [w for w in spec.get("when", ()) if w.lstrip("!") not in flags]
        if bad:
            raise ConvertError(table.path, f"hf_tensors.{key} uses undeclared flags {bad}")
    for rule in table.ms_rules:
        unknown = [s for s in rule.sources if s not in table.hf_tensors]
        if unknown or rule.op not in ops.OPS or rule.dtype not in ("param", "norm"):
            raise ConvertError(table.path, f"ms_tensors rule {rule.name!r} names unknown sources {unknown}, "
                               f"op {rule.op!r} or dtype {rule.dtype!r}")
        bad = [w for w in rule.when if w.lstrip("!") not in flags]
        if bad:
            raise ConvertError(table.path, f"ms_tensors rule {rule.name!r} uses undeclared flags {bad}")


def _check_entries(table: Table, section: str) -> None:
    verbs = _VERBS[section]
    for key, spec in (table.data.get(section) or {}).items():
        if not isinstance(spec, dict):
            raise ConvertError(table.path, f"{section}.{key}: must be a mapping such as {{to: KEY, type: TYPE}}")
        unknown = sorted(set(spec) - verbs - _QUALIFIERS)
        said = [v for v in spec if v in verbs]
        if unknown:
            raise ConvertError(table.path, f"{section}.{key}: unknown word {unknown[0]!r}",
                               f"an entry may say {', '.join(sorted(verbs | _QUALIFIERS))}")
        if verbs and len(said) != 1:
            raise ConvertError(table.path, f"{section}.{key}: says {' and '.join(said) or 'no verb'}",
                               f"give exactly one of {', '.join(sorted(verbs))}")


def _check_types(table: Table, section: str) -> None:
    """Every `type:` is one of the closed set, and every key whose value is used declares one."""
    for key, spec in table.data.get(section, {}).items():
        used = section == "model_config" or "to" in spec or "via" in spec
        if used and "type" not in spec:
            raise ConvertError(table.path, f"{section}.{key}: declares no `type:`",
                               f"every key whose value is used needs one of {', '.join(value_types.TYPES)}")
        kinds = [spec.get("type")] if "type" in spec else []
        kinds += list((spec.get("fields") or {}).values())
        bad = [n for k in kinds for n in value_types.unknown(k)]
        if bad:
            raise ConvertError(table.path, f"{section}.{key}: unknown type {bad[0]!r}",
                               f"known types: {', '.join(value_types.TYPES)}")


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def eval_dim(expr: str | int, env: dict[str, int], names_only: bool = False) -> int:
    """Integer arithmetic over config keys: + - * // and parentheses, nothing else.

    The env values are validated positive integers (value_types) by the time shapes are computed, so a
    division by zero or a missing name here means the table, not the input, is wrong: ValueError.
    With names_only, only the expression's form is checked (table loading) and 1 stands for every name.
    """
    if isinstance(expr, int) and not isinstance(expr, bool):
        return expr

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.FloorDiv) and right == 0:
                raise ValueError(f"{expr!r} divides by zero")
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name):
            if names_only:
                return 1
            value = env.get(node.id)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{expr!r} needs model_config.{node.id}, which is {value_types.kind(value)}")
            return value
        raise ValueError(f"unsupported dimension expression {expr!r}")

    try:
        tree = ast.parse(str(expr), mode="eval")
    except SyntaxError:
        raise ValueError(f"unsupported dimension expression {expr!r}") from None
    return ev(tree)


def holds(when: tuple[str, ...] | list[str], flags: dict[str, bool]) -> bool:
    return all(not flags[w[1:]] if w.startswith("!") else flags[w] for w in when)


def layers_present(patterns: list[str], names) -> list[int]:
    """The layer numbers that tensor names actually carry, by the table's {i} patterns (sorted)."""
    import re
    rxs = [re.compile(pattern_regex(p)) for p in patterns if LAYER in p]
    found = set()
    for name in names:
        for rx in rxs:
            m = rx.match(name)
            if m:
                found.add(int(m.group(1)))
                break
    return sorted(found)


def describe_layers(layers: list[int]) -> str:
    """'layers 0..1 (2 layers)', or which are there when they are not 0..n-1."""
    if not layers:
        return "no decoder layers"
    if layers == list(range(len(layers))):
        return f"layers 0..{layers[-1]} ({len(layers)} layers)"
    shown = ", ".join(map(str, layers[:6])) + (", ..." if len(layers) > 6 else "")
    return f"layers {shown} ({len(layers)} layers, not numbered 0..{len(layers) - 1})"


# A name pattern with {i} stands for every decoder layer. These three are the only places that know it.
LAYER = "{i}"


def layer_name(pattern: str, layer: int | None) -> str:
    """The pattern for one layer (a whole-model name, without {i}, stays as it is)."""
    return pattern if layer is None else pattern.replace(LAYER, str(layer))


def layer_names(pattern: str, num_layers: int) -> list[tuple[int | None, str]]:
    if LAYER not in pattern:
        return [(None, pattern)]
    return [(i, layer_name(pattern, i)) for i in range(num_layers)]


def pattern_regex(pattern: str) -> str:
    """A regular expression matching the pattern's names for any layer; the layer number is group 1."""
    import re
    return "^" + re.escape(pattern).replace(re.escape(LAYER), r"(0|[1-9][0-9]*)") + "$"
