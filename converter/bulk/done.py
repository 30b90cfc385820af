"""Is a row done? Decided from OUT's conversion.json, the authoritative record, never from "OUT exists".

Done means: the same tool version, the same mapping table (by hash), the same options, the same source
files (sizes; sha256 where recorded), and every output file listed present with its size. Anything
else is not done, and says why.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..hashing import hub_blob_sha256, sha256_of
from ..outdir import CONVERSION_RECORD
from ..version import __version__


def _relative(path: Path, root: Path) -> str:
    """As conversion.json names source files: relative to the source directory, else absolute."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path.resolve())


def source_digest(path: Path) -> str:
    """A hub cache blob's name is its sha256 (checked when it was converted); other files are read."""
    return hub_blob_sha256(path) or sha256_of(path)


def not_done_reason(plan, out: Path) -> str | None:
    """None when OUT holds this plan's conversion; else why not, in a few words."""
    record_path = Path(out) / CONVERSION_RECORD
    if not Path(out).exists():
        return "not converted yet"
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        return f"{out} holds no {CONVERSION_RECORD}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{CONVERSION_RECORD} is unreadable"
    if not isinstance(record, dict):
        return f"{CONVERSION_RECORD} is unreadable"
    if record.get("version") != __version__:
        return f"tool version differs: {record.get('version')} -> {__version__}"
    if record.get("direction", "hf2ms") != plan.direction:
        return f"direction differs: {record.get('direction')}"
    table = record.get("mapping_table") or {}
    if table.get("sha256") != plan.table.sha256:
        return f"mapping table differs: {table.get('name')} ({str(table.get('sha256'))[:12]}) -> " \
               f"{plan.table.name} ({plan.table.sha256[:12]})"
    recorded_opts, opts = record.get("options") or {}, plan.options.as_dict()
    changed = sorted(k for k in set(recorded_opts) | set(opts) if recorded_opts.get(k) != opts.get(k))
    if changed:
        return f"options differ: {', '.join(changed)}"
    why = _sources_differ(plan, (record.get("source") or {}).get("files") or [])
    if why:
        return why
    for f in record.get("outputs") or []:
        p = Path(out) / str(f.get("name"))
        if not p.is_file():
            return f"output missing: {f.get('name')}"
        if p.stat().st_size != f.get("size"):
            return f"output size differs: {f.get('name')}"
    if not record.get("outputs"):
        return f"{CONVERSION_RECORD} lists no outputs"
    return None


def _sources_differ(plan, recorded: list[dict]) -> str | None:
    root = plan.source.root
    now = {_relative(p, root): p for p in plan.source.input_files()}
    before = {str(f.get("name")): f for f in recorded}
    if set(now) != set(before):
        diff = sorted(set(now) ^ set(before))
        return f"source files differ: {', '.join(diff[:3])}{' ...' if len(diff) > 3 else ''}"
    for name, path in now.items():
        f = before[name]
        if path.stat().st_size != f.get("size"):
            return f"source changed: {name} (size)"
    for name, path in now.items():
        if before[name].get("sha256") and source_digest(path) != before[name]["sha256"]:
            return f"source changed: {name} (sha256)"
    return None
