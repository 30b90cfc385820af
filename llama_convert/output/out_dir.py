"""OUT_DIR checked before any work, and the debris of killed runs around it reclaimed.

Guarantees, for runs nobody watches:
- OUT_DIR never overlaps a source (the source directory or any file the plan reads, symlinks resolved).
- --force replaces only an empty directory, a symlink (the link, never its target), or an earlier output
  of ours that holds nothing but what its conversion.json lists, at the recorded sizes (a listed file may
  be gone): a file a user added to it or changed since is never deleted. Anything else is refused
  untouched, naming what is in the way.
- The output is written into a hidden sibling `.OUT.partial-HOST-PID` and renamed into place with a
  rename that never replaces anything (renameat2 RENAME_NOREPLACE; where the filesystem lacks it, a
  per-OUT_DIR lock taken before work starts). Of two runs into one new OUT_DIR exactly one wins.
- A failed run removes what it made: its partial directory, and the missing parents of OUT_DIR it
  created, as long as nothing else has been put in them.
- SIGTERM and SIGINT remove the partial directory before the process ends; a later run into the same
  OUT_DIR reclaims what a killed run left (its partial directory, or the previous output it had moved
  aside, which is put back if OUT_DIR is missing). Only this host's entries of dead owners are touched.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from stat import S_ISREG

from ..core.errors import ConvertError
from ..core.paths import resolved
from ..formats.files import read_small
from .fs import HOST, RenameUnsupported, owner_alive, real_entry, rename_noreplace

CONVERSION_RECORD = "conversion.json"
_RECORD_LIMIT = 256 << 20  # a conversion.json is a few MB at most; anything bigger is not ours
# What report.provenance writes: a conversion.json without all of it is not a complete record of ours.
RECORD_KEYS = frozenset({"tool", "version", "direction", "created", "mapping_table", "options", "source", "hashes",
                         "outputs", "tensor_count", "tensors", "skipped", "config"})
_SHOWN = 5                 # foreign entries named in a refusal


def _locations(path: Path) -> set[Path]:
    """The entry itself and, if it is a symlink, what it finally points at."""
    entry = real_entry(path)
    return {entry, resolved(path)} if entry.is_symlink() else {entry}


def refuse_overlap(out: Path, sources: list[Path]) -> None:
    outs = _locations(out)
    for source in sources:
        kind = "source directory" if Path(source).is_dir() else "source file"
        for s in _locations(source):
            for o in outs:
                if o == s:
                    problem = f"the output directory is the {kind} {source}"
                elif s.is_relative_to(o):
                    problem = f"the output directory contains the {kind} {source}"
                elif o.is_relative_to(s):
                    problem = f"the output directory lies inside the {kind} {source}"
                else:
                    continue
                raise ConvertError(out, problem, "choose an OUT_DIR outside the source; nothing was written")


def recorded_outputs(directory: Path) -> dict[str, int] | None:
    """{name: size} of the files an output of ours lists in its conversion.json, or None when there is no
    complete record of ours: a regular file, JSON, with every key provenance writes and outputs given
    as plain file names (never conversion.json itself, which is written after the list) with sizes."""
    record = Path(directory) / CONVERSION_RECORD
    try:
        if not S_ISREG(os.lstat(record).st_mode):
            return None  # we never write a link or anything else under that name
        data = json.loads(read_small(record, CONVERSION_RECORD, limit=_RECORD_LIMIT).decode("utf-8"))
    except (ConvertError, OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("tool") != "llama-convert" or not RECORD_KEYS <= data.keys():
        return None
    outputs = data["outputs"]
    if not isinstance(outputs, list) or not outputs:
        return None
    listed: dict[str, int] = {}
    for f in outputs:
        name, size = (f.get("name"), f.get("size")) if isinstance(f, dict) else (None, None)
        if (not isinstance(name, str) or name in ("", ".", "..", CONVERSION_RECORD) or not _our_name(name)
                or "\0" in name or name in listed or type(size) is not int or size < 0):
            return None
        listed[name] = size
    return listed


# The one subdirectory an output of ours holds: ms2hf's PEFT adapter (OUT_DIR/adapter/).
SUBDIRS = ("adapter",)


def _our_name(name: str) -> bool:
    """A file name an output of ours lists: a plain name, or one inside a subdirectory we write."""
    parts = name.split("/")
    return len(parts) == 1 or (len(parts) == 2 and parts[0] in SUBDIRS and parts[1] not in ("", ".", ".."))


def foreign_entries(directory: Path, listed: dict[str, int], prefix: str = "") -> list[str]:
    """What a directory holds beyond the files `listed` with their sizes (and the record itself)."""
    found = []
    with os.scandir(directory) as entries:
        for e in sorted(entries, key=lambda e: e.name):
            if e.name == CONVERSION_RECORD and not prefix:
                continue
            if e.is_symlink():
                found.append(f"{prefix}{e.name} (a symbolic link)")
            elif e.is_dir() and not prefix and e.name in SUBDIRS and any(n.startswith(f"{e.name}/") for n in listed):
                found += foreign_entries(Path(e.path), listed, f"{e.name}/")
            elif e.is_dir():
                found.append(f"{prefix}{e.name}/")
            elif not e.is_file():
                found.append(f"{prefix}{e.name} (not a regular file)")
            elif prefix + e.name not in listed:
                found.append(prefix + e.name)
            elif (size := e.stat(follow_symlinks=False).st_size) != listed[prefix + e.name]:
                found.append(f"{prefix}{e.name} (changed since: {size} bytes, recorded {listed[prefix + e.name]})")
    return found


def _few(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def replace_refusal(directory: Path, shown: Path | None = None) -> ConvertError | None:
    """None when --force may replace the directory: it is empty, or holds nothing but what the conversion.json
    of an earlier output of ours lists, at the recorded sizes. Else the refusal, naming up to five entries
    in the way. A listed file that is gone stands in nobody's way."""
    where = shown or directory
    names = sorted(os.listdir(directory))
    if not names:
        return None
    listed = recorded_outputs(directory)
    if listed is None:
        return ConvertError(where, f"is not a llama-convert output (no complete {CONVERSION_RECORD} of ours); "
                            f"refusing to delete it. It holds: {_few(names)}",
                            "remove it yourself or choose another OUT_DIR")
    foreign = foreign_entries(directory, listed)
    if not foreign:
        return None
    return ConvertError(where, f"holds what is not part of the earlier llama-convert output there: {_few(foreign)}. "
                        f"--force replaces only exactly the files its {CONVERSION_RECORD} lists; nothing was deleted",
                        "move those out of it, or choose another OUT_DIR")


def check_out_dir(out: Path, force: bool, sources: list[Path] | tuple[Path, ...] = ()) -> None:
    """Refuse an OUT_DIR that overlaps a source, exists without --force, or is not ours to replace.

    Reads only; called before any work by the CLI and the API, and again by Transaction."""
    out = Path(out)
    refuse_overlap(out, [Path(s) for s in sources])
    refuse_existing(out, force)


def refuse_existing(out: Path, force: bool) -> None:
    """An existing OUT_DIR is replaced only with --force, and only if it is ours to replace."""
    if not os.path.lexists(out):
        # Missing parents are created as `mkdir -p` would (by Transaction); only a file in the way is refused.
        ancestor = real_entry(out).parent
        while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise ConvertError(ancestor, "is not a directory, so the output directory cannot be created under it",
                               "choose another OUT_DIR")
        return
    if not force:
        raise ConvertError(out, "output directory already exists", "pass --force to replace it")
    if out.is_symlink():
        return  # --force replaces the link; its target is never touched
    if not out.is_dir():
        raise ConvertError(out, "exists and is not a directory; refusing to replace it",
                           "move it away or choose another OUT_DIR")
    refusal = replace_refusal(out)
    if refusal is not None:
        raise refusal


# ---------------------------------------------------------------- debris of killed runs

def _debris_pattern(entry: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(entry.name)}\.(partial|old)-{re.escape(HOST)}-(\d+)")


def remove_entry(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    else:
        shutil.rmtree(path, ignore_errors=True)


def reclaim(out: Path) -> list[str]:
    """Remove this host's partial directories of OUT whose owner is dead, and put back (or, if OUT exists,
    remove) a previous output a dead run had moved aside. Returns one line per entry dealt with."""
    entry = real_entry(out)
    pattern = _debris_pattern(entry)
    try:
        names = sorted(os.listdir(entry.parent))
    except OSError:
        return []
    notes = []
    for name in names:
        m = pattern.fullmatch(name)
        if not m or owner_alive(int(m[2]), entry.parent / name):
            continue
        path, pid = entry.parent / name, int(m[2])
        if m[1] == "old" and not os.path.lexists(entry):
            try:
                try:
                    rename_noreplace(path, entry)
                except RenameUnsupported:
                    os.rename(path, entry)  # an empty OUT created meanwhile is the only thing this could replace
            except OSError:
                continue  # another run restored it first, or OUT_DIR appeared: a later run removes it
            notes.append(f"restored {out} from {name}, moved aside by process {pid} that died before replacing it")
            continue
        if m[1] == "old" and path.is_dir() and not path.is_symlink() and (kept := replace_refusal(path)):
            # Moved aside, then found to hold files of a user's (a run re-checks it there): not ours to delete.
            notes.append(f"kept {name}, moved aside by dead process {pid}: {kept.problem}")
            continue
        remove_entry(path)
        notes.append(f"reclaimed {name} left by dead process {pid}")
    return notes


