"""The declarative mapping tables in mappings/: loading them and expanding their tensor rules."""
from __future__ import annotations

import ast
import hashlib
import operator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from . import ops
from .errors import ConvertError

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
    try:
        raw = path.read_bytes()
        data = safe_yaml(raw)
    except FileNotFoundError:
        raise ConvertError(path, "mapping table not found") from None
    except yaml.YAMLError as e:
        raise ConvertError(path, f"mapping table is not valid YAML: {str(e).splitlines()[0]}") from None
    table = Table(data["name"], path, hashlib.sha256(raw).hexdigest(), data)
    _check_table(table)
    return table


def _check_table(table: Table) -> None:
    flags = set(table.data.get("flags", {}))
    for rule in table.ms_rules:
        unknown = [s for s in rule.sources if s not in table.hf_tensors]
        if unknown or rule.op not in ops.OPS or rule.dtype not in ("param", "norm"):
            raise ConvertError(table.path, f"ms_tensors rule {rule.name!r} names unknown sources {unknown}, "
                               f"op {rule.op!r} or dtype {rule.dtype!r}")
        bad = [w for w in rule.when if w.lstrip("!") not in flags]
        if bad:
            raise ConvertError(table.path, f"ms_tensors rule {rule.name!r} uses undeclared flags {bad}")


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def eval_dim(expr: str | int, env: dict[str, int]) -> int:
    """Integer arithmetic over config keys: + - * // and parentheses, nothing else."""
    if isinstance(expr, int):
        return expr

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return int(env[node.id])
        raise ValueError(f"unsupported dimension expression {expr!r}")

    return ev(ast.parse(str(expr), mode="eval"))


def holds(when: tuple[str, ...] | list[str], flags: dict[str, bool]) -> bool:
    return all(not flags[w[1:]] if w.startswith("!") else flags[w] for w in when)


def layer_names(pattern: str, num_layers: int) -> list[tuple[int | None, str]]:
    if "{i}" not in pattern:
        return [(None, pattern)]
    return [(i, pattern.replace("{i}", str(i))) for i in range(num_layers)]


def pattern_regex(pattern: str) -> str:
    import re
    return "^" + re.escape(pattern).replace(re.escape("{i}"), r"\d+") + "$"
