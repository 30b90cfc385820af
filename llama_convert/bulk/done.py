"""Is a row done? Decided from OUT's conversion.json, the authoritative record, never from "OUT exists".

Done means: the same tool version, the same mapping table (by hash), the same options, the same source
files (sizes; sha256 where recorded), and every output file listed present with its size. Anything
else is not done, and says why.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..formats.files import parse_json_object, read_small
from ..core.errors import ConvertError
from ..output.hashing import hub_blob_sha256, sha256_of
from ..output.out_dir import CONVERSION_RECORD
from ..core.version import __version__


@dataclass(frozen=True)
class Expected:
    """What OUT's conversion.json must say for a row to be done: the little of a plan the check needs
    (a whole plan holds every tensor of the model; a bulk run may have thousands)."""
    direction: str
    table_name: str
    table_sha256: str
    options: dict
    sources: tuple[tuple[str, int], ...]   # each input file as conversion.json names it, and its size

    @classmethod
    def of(cls, plan) -> Expected:
        root = plan.source.root
        return cls(plan.direction, plan.table.name, plan.table.sha256, plan.options.as_dict(),
                   tuple((_relative(p, root), p.stat().st_size) for p in plan.source.input_files()))


def _relative(path: Path, root: Path) -> str:
    """As conversion.json names source files: relative to the source directory, else absolute."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path.resolve())


_digests: dict[tuple, str] = {}


def source_digest(path: Path) -> str:
    """A hub cache blob's name is its sha256 (checked when it was converted); other files are read, once
    per run for each file (hard-linked copies of a model are one file)."""
    if blob := hub_blob_sha256(path):
        return blob
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _digests:
        _digests[key] = sha256_of(path)
    return _digests[key]


def not_done_reason(expected: Expected, src: Path, out: Path) -> str | None:
    """None when OUT holds the conversion `expected` describes of the source SRC; else why not, in a few words."""
    out = Path(out)
    if not out.exists():
        return "not converted yet"
    record_path = out / CONVERSION_RECORD
    if not os.path.lexists(record_path):
        return f"{out} holds no {CONVERSION_RECORD}"
    try:
        record = parse_json_object(read_small(record_path, CONVERSION_RECORD), record_path, CONVERSION_RECORD)
    except ConvertError:
        return f"{CONVERSION_RECORD} is unreadable"
    if record.get("version") != __version__:
        return f"tool version differs: {record.get('version')} -> {__version__}"
    if record.get("direction", "hf2ms") != expected.direction:
        return f"direction differs: {record.get('direction')}"
    table = record.get("mapping_table") if isinstance(record.get("mapping_table"), dict) else {}
    if table.get("sha256") != expected.table_sha256:
        return f"mapping table differs: {table.get('name')} ({str(table.get('sha256'))[:12]}) -> " \
               f"{expected.table_name} ({expected.table_sha256[:12]})"
    recorded_opts = record.get("options") if isinstance(record.get("options"), dict) else {}
    changed = sorted(str(k) for k in set(recorded_opts) | set(expected.options)
                     if recorded_opts.get(k) != expected.options.get(k))
    if changed:
        return f"options differ: {', '.join(changed)}"
    source = record.get("source") if isinstance(record.get("source"), dict) else {}
    files = source.get("files") if isinstance(source.get("files"), list) else []
    why = _sources_differ(expected, Path(src), [f for f in files if isinstance(f, dict)])
    if why:
        return why
    outputs = record.get("outputs") if isinstance(record.get("outputs"), list) else []
    for f in outputs:
        name = str(f.get("name")) if isinstance(f, dict) else ""
        p = out / name
        if not name or not p.is_file() or not p.resolve().is_relative_to(out.resolve()):
            return f"output missing: {name}"
        if p.stat().st_size != f.get("size"):
            return f"output size differs: {name}"
    if not outputs:
        return f"{CONVERSION_RECORD} lists no outputs"
    return None


def _sources_differ(expected: Expected, root: Path, recorded: list[dict]) -> str | None:
    now = dict(expected.sources)
    before = {str(f.get("name")): f for f in recorded}
    if set(now) != set(before):
        diff = sorted(set(now) ^ set(before))
        return f"source files differ: {', '.join(diff[:3])}{' ...' if len(diff) > 3 else ''}"
    for name, size in now.items():
        if size != before[name].get("size"):
            return f"source changed: {name} (size)"
    for name in now:
        if before[name].get("sha256") and source_digest(root / name) != before[name]["sha256"]:
            return f"source changed: {name} (sha256)"
    return None
