"""The declarative mapping tables in mappings/: finding, loading (with `extends:`) and checking them."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from . import exprs, ops, value_types
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
    sha256: str               # of this file and every table it extends: what the conversion depended on
    data: dict

    @property
    def hf(self) -> dict:
        """architectures and model_type it converts, and transformers' model class for it."""
        return self.data["hf"]

    @property
    def mindformers(self) -> dict:
        return self.data["mindformers"]

    @property
    def yaml_name(self) -> str:
        return self.mindformers["yaml"]

    @property
    def config_rules(self) -> dict[str, dict]:
        return self.data["config"]

    @property
    def generation_rules(self) -> dict[str, dict]:
        return self.data.get("generation") or {}

    @property
    def model_config_rules(self) -> dict[str, dict]:
        """Types (and checks) of the MindFormers model_config keys read on the way back."""
        return self.data.get("model_config") or {}

    @property
    def flags(self) -> dict[str, dict]:
        return self.data.get("flags") or {}

    @property
    def hf_tensors(self) -> dict[str, dict]:
        return self.data["hf_tensors"]

    @property
    def ms_rules(self) -> list[TensorRule]:
        return [TensorRule(r["name"], tuple(r["from"]), r.get("op", "copy"), r.get("dtype", "param"),
                           tuple(r.get("when", ()))) for r in self.data["ms_tensors"]]

    def skip(self, side: str) -> dict[str, str]:
        """pattern -> reason, for source tensors of `side` ("hf" or "ms") that carry no model weight."""
        return {p: reason for reason, patterns in ((self.data.get("skip") or {}).get(side) or {}).items()
                for p in patterns}

    @property
    def tied_twins(self) -> dict[str, str]:
        return self.data.get("tied_twins") or {}


def safe_yaml(text: str | bytes):
    """yaml.safe_load, through libyaml when PyYAML has it: 2 ms instead of 15 for our table."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def table_path(name: str) -> Path:
    """A shipped table by name, or a table file given by path."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name)
    path = tables_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConvertError(None, f"--table {name}: no such mapping table",
                           f"shipped tables: {', '.join(shipped_names())}; or give the path of a table file")
    return path


def load_table(name: str = DEFAULT_TABLE) -> Table:
    """A table, with the tables it `extends:` merged in, checked whole before anything uses it."""
    path = table_path(name)
    data, digest = _read_chain(path, [])
    table = Table(data.get("name"), path, digest.hexdigest(), data)
    _check_table(table)
    return table


def _read_chain(path: Path, seen: list[Path]):
    """(merged data, running sha256) of a table and its ancestors; the base is merged first."""
    if path.resolve() in seen:
        raise ConvertError(path, f"extends itself through {' -> '.join(p.name for p in seen)}")
    raw = read_small(path, "mapping table")
    try:
        data = safe_yaml(raw)
    except yaml.YAMLError as e:
        raise ConvertError(path, f"mapping table is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConvertError(path, "a mapping table is a YAML mapping of sections (name, hf, config, ...)")
    base = data.pop("extends", None)
    if base is None:
        return data, hashlib.sha256(raw)
    if not isinstance(base, str):
        raise ConvertError(path, f"extends: {base!r} is not a table name")
    base_path = path.parent / f"{base}.yaml" if not base.endswith((".yaml", ".yml")) else path.parent / base
    if not base_path.is_file():
        raise ConvertError(path, f"extends: {base!r}: no table {base_path.name} beside it")
    merged, digest = _read_chain(base_path, [*seen, path.resolve()])
    digest.update(raw)
    return _merge(merged, data), digest


def _merge(base: dict, child: dict) -> dict:
    """The child's differences applied to its base: mappings merge key by key, a key set to null is
    removed, anything else (lists included) is replaced whole."""
    out = dict(base)
    for key, value in child.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@lru_cache(maxsize=1)
def _shipped(directory: Path) -> tuple[Table, ...]:
    return tuple(load_table(str(p)) for p in sorted(directory.glob("*.yaml")))


def shipped_tables() -> tuple[Table, ...]:
    return _shipped(tables_dir())


def shipped_names() -> list[str]:
    return [p.stem for p in sorted(tables_dir().glob("*.yaml"))]


def yaml_names() -> list[str]:
    """The MindFormers YAML file names the shipped tables write, the default table's first."""
    names = [load_table().yaml_name] + [t.yaml_name for t in shipped_tables()]
    return list(dict.fromkeys(names))


def select_for_hf(config: dict, where: Path, override: str | None = None) -> Table:
    """The table for a HF config.json: the one that lists its architecture, else its model_type."""
    if override:
        return load_table(override)
    archs = config.get("architectures")
    archs = archs if isinstance(archs, list) else []  # a wrong type is reported, by key, once a table checks it
    tables = shipped_tables()
    for table in tables:
        if any(a in table.hf["architectures"] for a in archs):
            return table
    model_type = config.get("model_type")
    for table in tables:
        if model_type is not None and model_type == table.hf["model_type"]:
            return table
    if not archs and model_type is None:
        return load_table()  # nothing says otherwise; the table's own checks name what is missing
    known = "; ".join(f"{t.name}: {', '.join(t.hf['architectures'])}" for t in tables)
    said = f"{archs}" + (f" (model_type {model_type!r})" if model_type is not None else "")
    raise ConvertError(where, f"architectures: {said} is not converted by any mapping table",
                       f"tables: {known}; a Llama-shaped variant can be tried with --table NAME|PATH")


def select_for_ms(recorded: str | None, override: str | None = None) -> Table:
    """The table for a MindFormers YAML: --table, else the one its writer recorded, else the default."""
    return load_table(override or recorded or DEFAULT_TABLE)


# What an entry of each keyed section may say. A verb is what happens to the key; exactly one applies,
# so that a misspelled verb (`ignor:`) is a table error instead of a key that silently does nothing.
_VERBS = {"config": {"to", "via", "require", "reject", "ignore", "check"}, "generation": {"to", "ignore"},
          "model_config": {"check"}}
_QUALIFIERS = {"type", "required", "nullable", "fields", "default", "back", "fail", "hint"}
_SECTIONS = {"name", "hf", "mindformers", "config", "generation", "model_config", "flags", "dims", "hf_tensors",
             "tied_twins", "skip", "ms_tensors"}


def _check_table(table: Table) -> None:
    data, path = table.data, table.path
    unknown = sorted(set(data) - _SECTIONS)
    if unknown:
        raise ConvertError(path, f"unknown section {unknown[0]!r}", f"a table has {', '.join(sorted(_SECTIONS))}")
    missing = [s for s in ("name", "hf", "mindformers", "config", "dims", "hf_tensors", "ms_tensors") if s not in data]
    if missing:
        raise ConvertError(path, f"has no {missing[0]!r} section")
    _check_header(table)
    for section in ("config", "generation", "model_config"):
        _check_entries(table, section)
        _check_types(table, section)
    typed = set(table.model_config_rules)
    _check_exprs(table, "config", "check", typed | {"hf", "value"})
    _check_exprs(table, "model_config", "check", typed | {"value"})
    _check_exprs(table, "flags", "is", typed | {"hf"})
    defined = set(typed)
    for name, expr in (data.get("dims") or {}).items():
        _check_expr(table, f"dims.{name}", expr, defined)
        defined.add(name)
    dims = data.get("dims") or {}
    flags = set(table.flags)
    for key, spec in table.hf_tensors.items():
        undefined = [d for d in spec.get("shape", ()) if not isinstance(d, int) and d not in dims]
        if undefined:
            raise ConvertError(path, f"hf_tensors.{key}: shape symbol {undefined[0]!r} is not under dims",
                               f"dims defines {', '.join(dims)}")
        bad = [w for w in spec.get("when", ()) if w.lstrip("!") not in flags]
        if bad:
            raise ConvertError(path, f"hf_tensors.{key} uses undeclared flags {bad}")
    for rule in table.ms_rules:
        unknown = [s for s in rule.sources if s not in table.hf_tensors]
        if unknown or rule.op not in ops.OPS or rule.dtype not in ("param", "norm"):
            raise ConvertError(path, f"ms_tensors rule {rule.name!r} names unknown sources {unknown}, "
                               f"op {rule.op!r} or dtype {rule.dtype!r}", f"ops: {', '.join(ops.OPS)}")
        bad = [w for w in rule.when if w.lstrip("!") not in flags]
        if bad:
            raise ConvertError(path, f"ms_tensors rule {rule.name!r} uses undeclared flags {bad}")
    for a, b in table.tied_twins.items():
        if a not in table.hf_tensors or b not in table.hf_tensors:
            raise ConvertError(path, f"tied_twins.{a}: {a} and {b} must both be hf_tensors keys")
    for side, groups in (data.get("skip") or {}).items():
        if side not in ("hf", "ms") or not isinstance(groups, dict) or not all(
                isinstance(ps, list) and all(isinstance(p, str) for p in ps) for ps in groups.values()):
            raise ConvertError(path, f"skip.{side}: write `hf:` or `ms:`, each a mapping of reason -> [patterns]")


def _check_header(table: Table) -> None:
    hf, mf = table.data["hf"], table.data["mindformers"]
    need = {"hf": (hf, {"architectures": list, "model_type": str, "model_class": str}),
            "mindformers": (mf, {"config_class": str, "model_class": str, "yaml": str, "fixed": dict, "device": dict,
                                 "context": dict, "trainer": dict, "processor": str, "tokenizer": dict})}
    for section, (got, keys) in need.items():
        if not isinstance(got, dict):
            raise ConvertError(table.path, f"{section}: must be a mapping of {', '.join(keys)}")
        for key, kind in keys.items():
            if not isinstance(got.get(key), kind):
                raise ConvertError(table.path, f"{section}.{key}: missing or not a {kind.__name__}")
    devices = set(mf["device"])
    if set(mf["context"]) != devices:
        raise ConvertError(table.path, f"mindformers.context: must name the devices of mindformers.device "
                           f"({', '.join(sorted(devices))}), not {', '.join(sorted(mf['context'])) or 'none'}")
    for section, keys in (("trainer", ("type", "model_name")), ("tokenizer", ("model", "json"))):
        if any(not isinstance(mf[section].get(k), str) for k in keys):
            raise ConvertError(table.path, f"mindformers.{section}: write {{{', '.join(f'{k}: NAME' for k in keys)}}}")
    for name, spec in table.flags.items():
        if not isinstance(spec, dict) or set(spec) - {"is", "doc"} or "is" not in spec:
            raise ConvertError(table.path, f"flags.{name}: write {{is: EXPRESSION, doc: what it means}}")


def _check_exprs(table: Table, section: str, word: str, defined: set[str]) -> None:
    for key, spec in (table.data.get(section) or {}).items():
        if isinstance(spec, dict) and word in spec:
            _check_expr(table, f"{section}.{key}", spec[word], defined)


def _check_expr(table: Table, where: str, expr, defined: set[str]) -> None:
    try:
        undefined = sorted(exprs.names(expr) - defined)
    except exprs.ExprError as e:
        raise ConvertError(table.path, f"{where}: {e}") from None
    if undefined:
        raise ConvertError(table.path, f"{where}: {expr!r} reads {undefined[0]!r}, which is not a typed "
                           f"model_config key", "list it under model_config with its type")


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
        optional = section == "model_config"  # there every entry types a key; a check is extra
        if len(said) > 1 or (not said and not optional):
            raise ConvertError(table.path, f"{section}.{key}: says {' and '.join(said) or 'no verb'}",
                               f"give exactly one of {', '.join(sorted(verbs))}")


def _check_types(table: Table, section: str) -> None:
    """Every `type:` is one of the closed set, and every key whose value is used declares one."""
    for key, spec in (table.data.get(section) or {}).items():
        used = section == "model_config" or any(v in spec for v in ("to", "via", "check"))
        if used and "type" not in spec:
            raise ConvertError(table.path, f"{section}.{key}: declares no `type:`",
                               f"every key whose value is used needs one of {', '.join(value_types.TYPES)}")
        kinds = [spec.get("type")] if "type" in spec else []
        kinds += list((spec.get("fields") or {}).values())
        bad = [n for k in kinds for n in value_types.unknown(k)]
        if bad:
            raise ConvertError(table.path, f"{section}.{key}: unknown type {bad[0]!r}",
                               f"known types: {', '.join(value_types.TYPES)}")


def holds(when: tuple[str, ...] | list[str], flags: dict[str, bool]) -> bool:
    return all(not flags[w[1:]] if w.startswith("!") else flags[w] for w in when)


def layers_present(patterns: list[str], names) -> list[int]:
    """The layer numbers that tensor names actually carry, by the table's {i} patterns (sorted)."""
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
    """A regular expression matching the pattern's names for any layer (the layer number is group 1);
    `*` in a skip pattern stands for any run of characters."""
    return "^" + re.escape(pattern).replace(re.escape(LAYER), r"(0|[1-9][0-9]*)").replace(r"\*", ".*") + "$"
