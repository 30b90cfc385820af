"""Reading a bulk manifest (JSONL, CSV or YAML) into checked rows, every problem named with its row.

Precedence: a row's value beats the file's defaults, which beat the command line's. Relative paths are
relative to the manifest. Everything that can be found without reading a checkpoint (unknown keys,
bad values, missing sources, duplicate or overlapping outputs) is found here, before anything runs.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import ConvertError
from ..options import HF2MSOptions, MS2HFOptions, parse_size

DIRECTIONS = ("hf2ms", "ms2hf")
OPTION_KEYS = {
    "hf2ms": ("format", "dtype", "qkv_concat", "untie", "seq_length", "max_shard_size", "device", "hash", "table"),
    "ms2hf": ("dtype", "max_shard_size", "hash", "table", "config"),
}
ROW_KEYS = ("src", "out", "id", "direction", "verify")
NOTE_KEYS = ("repo", "commit", "note")   # recorded in the report, not acted on (bulk plan writes them)
BOOL_KEYS = ("verify", "qkv_concat", "untie", "hash")
KNOWN = set(ROW_KEYS) | set(NOTE_KEYS) | {k for keys in OPTION_KEYS.values() for k in keys}
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclass(frozen=True)
class Row:
    where: str                 # "line 4", "jobs[2]": for messages
    id: str
    src: Path
    out: Path
    direction: str
    verify: bool
    options: HF2MSOptions | MS2HFOptions
    config: Path | None = None  # ms2hf: the MindFormers YAML, when not beside the checkpoint
    notes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"id": self.id, "src": str(self.src), "out": str(self.out), "direction": self.direction,
                "verify": self.verify, "options": self.options.as_dict(), **self.notes}


def read_manifest(path: Path, cli_defaults: dict | None = None) -> list[Row]:
    """The manifest's rows, checked. Raises one ConvertError naming every bad row."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(path, f"cannot read the manifest: {getattr(e, 'strerror', None) or e}") from None
    defaults, raw = _parse(path, text)
    problems: list[str] = []
    merged_defaults = {**(cli_defaults or {}), **defaults}
    for key in merged_defaults:
        if key not in KNOWN or key in ("src", "out", "id"):
            problems.append(f"defaults: unknown key {key!r}" if key not in KNOWN else f"defaults: {key} belongs in a row")
    rows = []
    for where, values in raw:
        row = _row(path, where, {**merged_defaults, **values}, values, problems)
        if row is not None:
            rows.append(row)
    _check_together(rows, problems)
    if problems:
        raise ConvertError(path, "; ".join(problems), "fix these rows; nothing was run")
    if not rows:
        raise ConvertError(path, "holds no rows", "write one object per line with at least src and out")
    return rows


def _parse(path: Path, text: str) -> tuple[dict, list[tuple[str, dict]]]:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _parse_yaml(path, text)
    if suffix == ".csv":
        return {}, _parse_csv(path, text)
    return _parse_jsonl(path, text)


def _parse_jsonl(path: Path, text: str) -> tuple[dict, list[tuple[str, dict]]]:
    defaults, rows = {}, []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConvertError(path, f"line {n}: not JSON ({e.msg})", "write one JSON object per line") from None
        if not isinstance(value, dict):
            raise ConvertError(path, f"line {n}: a JSON {type(value).__name__}, not an object")
        if set(value) == {"defaults"} and isinstance(value["defaults"], dict):
            defaults.update(value["defaults"])
        else:
            rows.append((f"line {n}", value))
    return defaults, rows


def _parse_csv(path: Path, text: str) -> list[tuple[str, dict]]:
    lines = [ln for ln in text.splitlines(keepends=True)]
    reader = csv.reader(io.StringIO("".join(lines)))
    rows, header = [], None
    for record in reader:
        n = reader.line_num
        if not record or not any(c.strip() for c in record) or record[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [h.strip() for h in record]
            continue
        if len(record) > len(header):
            raise ConvertError(path, f"line {n}: {len(record)} values for {len(header)} columns")
        # An empty cell is a value not given: the defaults apply.
        rows.append((f"line {n}", {k: v.strip() for k, v in zip(header, record) if v.strip() != ""}))
    if header is None:
        raise ConvertError(path, "has no header row", "the first line names the columns: src,out,...")
    return rows


def _parse_yaml(path: Path, text: str) -> tuple[dict, list[tuple[str, dict]]]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConvertError(path, f"not YAML ({' '.join(str(e).split())})") from None
    if isinstance(doc, list):
        doc = {"jobs": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), list):
        raise ConvertError(path, "a YAML manifest needs a list `jobs:` (and optionally `defaults:`)")
    extra = set(doc) - {"defaults", "jobs"}
    if extra:
        raise ConvertError(path, f"unknown top-level key {sorted(extra)[0]!r}", "a YAML manifest has defaults: and jobs:")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConvertError(path, "defaults: must be a mapping")
    rows = []
    for i, job in enumerate(doc["jobs"]):
        if not isinstance(job, dict):
            raise ConvertError(path, f"jobs[{i}]: a {type(job).__name__}, not a mapping")
        rows.append((f"jobs[{i}]", job))
    return defaults, rows


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ValueError(f"must be true or false, not {value!r}")


def _int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"must be a whole number, not {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"must be a whole number, not {value!r}") from None
    if n < 1:
        raise ValueError(f"must be at least 1, not {n}")
    return n


def _size(value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"is a size (e.g. 5GB), not {value!r}")
    return parse_size(str(value))


def _coerce(key: str, value):
    if key in BOOL_KEYS:
        return _bool(value)
    if key == "seq_length":
        return _int(value)
    if key == "max_shard_size":
        return _size(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, not {value!r}")
    return value.strip()


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _row(manifest: Path, where: str, values: dict, own: dict, problems: list[str]) -> Row | None:
    bad = [f"{where}: unknown key {k!r}" for k in own if k not in KNOWN]
    direction = values.get("direction", "hf2ms")
    if direction not in DIRECTIONS:
        bad.append(f"{where}: direction {direction!r}; choose hf2ms or ms2hf")
        direction = "hf2ms"
    allowed = OPTION_KEYS[direction]
    for k in own:
        if k in KNOWN and k not in allowed and k not in ROW_KEYS and k not in NOTE_KEYS:
            bad.append(f"{where}: {k} is not an option of {direction}")
    for k in ("src", "out"):
        if k not in values:
            bad.append(f"{where}: no {k}")
    checked = {}
    for k, v in values.items():
        if k in KNOWN and (k in allowed or k in ROW_KEYS):
            try:
                checked[k] = _coerce(k, v)
            except ValueError as e:
                bad.append(f"{where}: {k} {e}")
    options = None
    opts = {k: checked[k] for k in allowed if k in checked and k != "config"}
    try:
        options = (HF2MSOptions if direction == "hf2ms" else MS2HFOptions)(**opts)
    except ValueError as e:
        bad.append(f"{where}: {e}")
    base = manifest.parent
    src = _path(base, checked["src"]) if "src" in checked else None
    if src is not None and not src.exists():
        bad.append(f"{where}: source {checked['src']} does not exist")
    config = _path(base, checked["config"]) if "config" in checked else None
    if config is not None and not config.is_file():
        bad.append(f"{where}: config {checked['config']} is not a file")
    problems += bad
    if bad:
        return None
    out = _path(base, checked["out"])
    notes = {k: values[k] for k in NOTE_KEYS if k in values}
    return Row(where, checked.get("id", ""), src, out, direction, checked.get("verify", False), options, config, notes)


def _check_together(rows: list[Row], problems: list[str]) -> None:
    """Outputs that collide or sit inside a source, and ids that repeat; ids default to OUT's name."""
    names = [r.out.name for r in rows]
    for i, r in enumerate(rows):
        if not r.id:
            rid = r.out.name if names.count(r.out.name) == 1 else str(r.out)
            rows[i] = Row(r.where, rid, r.src, r.out, r.direction, r.verify, r.options, r.config, r.notes)
    seen_out: dict[Path, str] = {}
    seen_id: dict[str, str] = {}
    srcs = [(r.where, r.src.resolve()) for r in rows]
    for r in rows:
        out = r.out.parent.resolve() / r.out.name
        if out in seen_out:
            problems.append(f"{r.where}: out {r.out} is also the out of {seen_out[out]}")
        seen_out.setdefault(out, r.where)
        if r.id in seen_id:
            problems.append(f"{r.where}: id {r.id!r} is also the id of {seen_id[r.id]}")
        seen_id.setdefault(r.id, r.where)
        for where, src in srcs:
            whose = "its own" if where == r.where else f"the source of {where}"
            if out == src or src.is_relative_to(out):
                problems.append(f"{r.where}: out {r.out} would hold {whose} source")
            elif out.is_relative_to(src):
                problems.append(f"{r.where}: out {r.out} lies inside {whose} source {src}")
