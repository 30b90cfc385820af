"""The mapping tables in mappings/: found by name or path, read with what they `extends:`, parsed
once into a typed `Table` (table.py) and kept, and chosen for a model."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from ..core.errors import ConvertError
from ..formats.files import read_small
from .schema import Table, from_data

__all__ = ["DEFAULT_TABLE", "Table", "load_table", "select_for_hf", "select_for_ms", "shipped_tables",
           "shipped_names", "tables_dir", "yaml_names", "safe_yaml"]

DEFAULT_TABLE = "llama"


@lru_cache(maxsize=1)
def tables_dir() -> Path:
    """mappings/ ships inside the wheel as llama_convert/mappings; a source checkout has it at the root."""
    packaged = Path(str(resources.files("llama_convert"))) / "mappings"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "mappings"


def safe_yaml(text: str | bytes):
    """yaml.safe_load, through libyaml when PyYAML has it: 2 ms instead of 15 for our table."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def is_path(name: str) -> bool:
    """How --table and extends: tell a file from a shipped table's name."""
    return name.endswith((".yaml", ".yml")) or "/" in name


def table_path(name: str) -> Path:
    """A shipped table by name, or a table file given by path."""
    if is_path(name):
        return Path(name)
    path = tables_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConvertError(None, f"--table {name}: no such mapping table",
                           f"shipped tables: {', '.join(shipped_names())}; or give the path of a table file")
    return path


def load_table(name: str = DEFAULT_TABLE) -> Table:
    """A table, with the tables it `extends:` merged in, checked whole before anything uses it.

    Tables are read on every call (an edited file is seen at once) but parsed and checked only when
    their bytes are new: bulk plans thousands of rows with the same few tables.
    """
    path = table_path(name)
    chain = _read_chain(path, [])
    digest = hashlib.sha256()
    for _, raw in chain:
        digest.update(raw)
    return _parsed_table(path, digest.hexdigest(), tuple(chain))


@lru_cache(maxsize=64)
def _parsed_table(path: Path, sha256: str, chain: tuple[tuple[Path, bytes], ...]) -> Table:
    merged: dict = {}
    for file, raw in chain:
        merged = _merge(merged, {k: v for k, v in _parsed_yaml(file, raw).items() if k != "extends"})
    return from_data(merged, path, sha256)


class _TableLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Refuses a key written twice in one mapping. YAML keeps the last one silently, so a table's second
    `config:` would drop the first whole, and a repeated entry would hide the one above it."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`: merged keys may be overridden, which is what merging is for
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is written twice in one mapping (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


@lru_cache(maxsize=64)
def _parsed_yaml(path: Path, raw: bytes) -> dict:
    """The YAML of one table file (shared: read it, never change it)."""
    try:
        data = yaml.load(raw, Loader=_TableLoader)
    except yaml.YAMLError as e:
        raise ConvertError(path, f"mapping table is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConvertError(path, "a mapping table is a YAML mapping of sections (name, hf, config, ...)")
    return data


def _read_chain(path: Path, seen: list[Path]) -> list[tuple[Path, bytes]]:
    """(file, bytes) of a table and of every table it extends, the base first.

    `extends: NAME` is a shipped table, wherever the extending table is; `extends: PATH` (ending .yaml
    or .yml, or holding a /) is a file relative to the extending table.
    """
    raw = read_small(path, "mapping table")  # first: it names a missing file or a symlink loop as such
    real = path.resolve()
    if real in seen:
        raise ConvertError(path, f"extends itself through {' -> '.join(p.name for p in seen)}")
    base = _parsed_yaml(path, raw).get("extends")
    if base is None:
        return [(path, raw)]
    if not isinstance(base, str) or not base:
        raise ConvertError(path, f"extends: {base!r} is not a table name")
    if is_path(base):
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConvertError(path, f"extends: {base!r}: no table {base_path}",
                               "a path in extends: is relative to the table that says it")
    else:
        base_path = tables_dir() / f"{base}.yaml"
        if not base_path.is_file():
            raise ConvertError(path, f"extends: {base!r}: no table {base}.yaml among the shipped tables "
                               f"({', '.join(shipped_names())})",
                               "extend a shipped table by name, or a table file by its path: extends: ./base.yaml")
    return [*_read_chain(base_path, [*seen, real]), (path, raw)]


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
    names = [load_table().mindformers.yaml] + [t.mindformers.yaml for t in shipped_tables()]
    return list(dict.fromkeys(names))


def select_for_hf(config: dict, where: Path, override: str | None = None) -> Table:
    """The table for a HF config.json: the one that lists its architecture, else its model_type."""
    if override:
        return load_table(override)
    archs = config.get("architectures")
    archs = archs if isinstance(archs, list) else []  # a wrong type is reported, by key, once a table checks it
    tables = shipped_tables()
    for table in tables:
        if any(a in table.hf.architectures for a in archs):
            return table
    model_type = config.get("model_type")
    for table in tables:
        if model_type is not None and model_type == table.hf.model_type:
            return table
    if not archs and model_type is None:
        return load_table()  # nothing says otherwise; the table's own checks name what is missing
    known = "; ".join(f"{t.name}: {', '.join(t.hf.architectures)}" for t in tables)
    said = f"{archs}" + (f" (model_type {model_type!r})" if model_type is not None else "")
    raise ConvertError(where, f"architectures: {said} is not converted by any mapping table",
                       f"tables: {known}; a Llama-shaped variant can be tried with --table NAME|PATH")


def select_for_ms(recorded: str | None, override: str | None = None) -> Table:
    """The table for a MindFormers YAML: --table, else the one its writer recorded, else the default."""
    return load_table(override or recorded or DEFAULT_TABLE)
