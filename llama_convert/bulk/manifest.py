"""Reading a bulk manifest (JSONL, CSV or YAML) into checked rows, every problem named with its line.

Precedence: a row's value beats the file's defaults, which beat the command line's. Relative paths are
relative to the manifest.

Two kinds of problem. A manifest-wide one stops the run before anything starts: a file that cannot be
read or parsed (or is not a regular file, or is too big), YAML aliases, defaults that are wrong for
every row, two rows whose outputs are the same or nest, an output that holds a source, the manifest or
the report. A problem only one row has (an unknown key, a bad value, a missing source, an output under a
regular file) makes that row `invalid`, with its line and key, and the other rows run.
"""
from __future__ import annotations

import codecs
import csv
import dataclasses
import difflib
import io
import json
import os
import stat
import unicodedata
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from ..core.errors import ConvertError
from ..formats.files import read_small
from ..core.options import HF2MSOptions, MS2HFOptions, SourceOptions, boolean, flags, parse_value
from .overlap import MANIFEST, OUT, SOURCE, Named, Resolver, conflicts, summary

# A row's options are its direction's declared options (core/options.py): the same names, values and checks
# as on the command line. `config` (ms2hf) is where the source's YAML is, a path like src.
OPTIONS = {"hf2ms": HF2MSOptions, "ms2hf": MS2HFOptions}
DIRECTIONS = tuple(OPTIONS)
# An hf2ms row's src may be a hub repo id, as hf2ms takes it: `revision` and `download` say which snapshot
# and whether it may be fetched. They pick the source; they are not options of the conversion.
SOURCE_KEYS = tuple(k for k, f in flags(SourceOptions).items() if f.manifest)
OPTION_KEYS = {d: tuple(k for k, f in flags(cls).items() if f.manifest)
               + (("config",) if d == "ms2hf" else SOURCE_KEYS) for d, cls in OPTIONS.items()}
ROW_KEYS = ("src", "out", "id", "direction", "verify")
NOTE_KEYS = ("repo", "commit", "note")   # recorded in the report, not acted on (bulk plan writes them)
PATH_KEYS = ("src", "out", "config")
KNOWN = set(ROW_KEYS) | set(NOTE_KEYS) | {k for keys in OPTION_KEYS.values() for k in keys}


def unknown_key(key: object, what: str = "key") -> str:
    """`unknown key 'qkv_concatt' (did you mean 'qkv_concat'?)`: a typo is named with its likely fix."""
    close = difflib.get_close_matches(str(key), sorted(KNOWN), n=1, cutoff=0.6)
    return f"unknown {what} {_shown(key)}" + (f" (did you mean {close[0]!r}?)" if close else "")


# A manifest of 100,000 rows is about 20 MB. Beyond these, a file is not a manifest but a mistake or a
# bomb, and reading it whole (or keeping a row object per line) would only exhaust memory.
MAX_MANIFEST_BYTES = 32 << 20
MAX_ROWS = 100_000
MAX_VALUE_CHARS = 4096     # any one value: a path is at most PATH_MAX (4096) bytes
MAX_SEQ_LENGTH = 2**31 - 1
MAX_YAML_DEPTH = 8         # document, jobs, row, value: anything deeper is not a manifest


@dataclass(frozen=True, slots=True)
class Row:
    where: str                 # "line 4": for messages
    id: str
    src: Path | None
    out: Path | None
    direction: str
    verify: bool
    options: HF2MSOptions | MS2HFOptions | None
    config: Path | None = None  # ms2hf: the MindFormers YAML, when not beside the checkpoint
    notes: dict = field(default_factory=dict)
    problem: str | None = None  # why the row cannot run: it is reported invalid, and the others run

    def as_dict(self) -> dict:
        return {"id": self.id, "src": str(self.src), "out": str(self.out), "direction": self.direction,
                "verify": self.verify, "options": self.options.as_dict() if self.options else None, **self.notes}


def read_manifest(path: Path, cli_defaults: dict | None = None, also: list[tuple[Path, str, str]] = (),
                  fetch: bool = True) -> list[Row]:
    """The manifest's rows, each checked (a row with a problem of its own carries it in `problem`).
    Raises one ConvertError naming every manifest-wide problem. `also`: more files of the run as (path,
    kind, role): the report and its journal (overlap.REPORT), an earlier report (overlap.RETRY).
    A row's hub repo id is resolved in the local hub cache; `fetch`: a row that says `download` is
    fetched here when the cache lacks it (a dry run passes False: it fetches nothing)."""
    path = Path(path)
    text = _decode(path, read_small(path, "bulk manifest", "check the manifest's path", MAX_MANIFEST_BYTES))
    defaults, raw = _parse(path, text)
    problems = _check_defaults(cli_defaults or {}, "--set ") + _check_defaults(defaults, "defaults: ")
    if problems:
        raise ConvertError(path, "; ".join(problems), "fix the defaults; nothing was run")
    if not raw:
        raise ConvertError(path, "holds no rows", "write one object per line with at least src and out")
    merged = {**(cli_defaults or {}), **defaults}
    parents: dict[Path, str | None] = {}
    rows = [_row(path, where, values, merged, shape, parents, fetch) for where, values, shape in raw]
    del text, raw   # what was parsed is in the rows now; thousands of rows' worth
    given = [bool(r.id) for r in rows]
    rows = _with_ids(rows)
    problems = _same_ids(rows, given)
    found = conflicts(_named(path, rows, also))
    if found:
        problems.append(summary(found))
    if problems:
        rule = ("outputs must be disjoint: none inside another, a source, the manifest or the report; "
                if found else "ids must be unique; ")
        raise ConvertError(path, "; ".join(problems), rule + "nothing was run")
    return rows


# ---------------------------------------------------------------- parsing


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8, with or without the BOM spreadsheet programs write; UTF-16 when a BOM says so."""
    encoding = "utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise ConvertError(path, f"bulk manifest is not {encoding.upper().removesuffix('-SIG')} text (byte {e.start})",
                           "save it as UTF-8") from None


def _parse(path: Path, text: str) -> tuple[dict, list[tuple[str, dict, list[str]]]]:
    """(defaults, rows): each row its line, its values and what is wrong with its shape (CSV only)."""
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        defaults, rows = _parse_yaml(path, text)
    elif suffix == ".csv":
        defaults, rows = {}, _parse_csv(path, text)
    else:
        defaults, rows = _parse_jsonl(path, text)
    if len(rows) > MAX_ROWS:
        raise ConvertError(path, f"holds more than {MAX_ROWS} rows", "split it into several manifests")
    return defaults, rows


class _RepeatedKey(Exception):
    pass


def _object(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):  # json would silently keep the last of two values
        raise _RepeatedKey(next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1))
    return out


def _parse_jsonl(path: Path, text: str) -> tuple[dict, list[tuple[str, dict, list[str]]]]:
    defaults, rows = {}, []
    # Lines end at \n only: str.splitlines would also split at U+2028 and others a JSON string may hold.
    for n, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            value = json.loads(line, object_pairs_hook=_object)
        except json.JSONDecodeError as e:
            raise ConvertError(path, f"line {n}: not JSON ({e.msg}, column {e.colno})",
                               "write one JSON object per line") from None
        except RecursionError:
            raise ConvertError(path, f"line {n}: nested too deeply to be a manifest row") from None
        except _RepeatedKey as e:
            raise ConvertError(path, f"line {n}: the key {_shown(e.args[0])} more than once") from None
        if not isinstance(value, dict):
            raise ConvertError(path, f"line {n}: a JSON {type(value).__name__}, not an object")
        if set(value) == {"defaults"} and isinstance(value["defaults"], dict):
            defaults.update(value["defaults"])
        else:
            rows.append((f"line {n}", value, []))
            if len(rows) > MAX_ROWS:
                break
    return defaults, rows


def _parse_csv(path: Path, text: str) -> list[tuple[str, dict, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, header = [], None
    try:
        for record in reader:
            n = reader.line_num
            if not record or not any(c.strip() for c in record) or record[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = _csv_header(path, n, [h.strip() for h in record])
                continue
            rows.append((f"line {n}", *_csv_row(header, record)))
            if len(rows) > MAX_ROWS:
                break
    except csv.Error as e:
        raise ConvertError(path, f"line {reader.line_num}: not CSV ({e})") from None
    if header is None:
        raise ConvertError(path, "has no header row", "the first line names the columns: src,out,...")
    return rows


def _csv_header(path: Path, n: int, header: list[str]) -> list[str]:
    """A column that is not a key would make every row invalid: that is the manifest's problem."""
    unknown = [h for h in header if h and h not in KNOWN]
    if unknown:
        raise ConvertError(path, f"line {n}: {unknown_key(unknown[0], 'column')}",
                           f"columns are keys: {', '.join(sorted(KNOWN))}")
    repeated = [h for h, k in Counter(h for h in header if h).items() if k > 1]
    if repeated:
        raise ConvertError(path, f"line {n}: the column {repeated[0]!r} more than once")
    return header


def _csv_row(header: list[str], record: list[str]) -> tuple[dict, list[str]]:
    # An empty cell is a value not given: the defaults apply. A trailing empty column (spreadsheets
    # write them) is no value at all.
    values = {k: v.strip() for k, v in zip(header, record) if v.strip() != "" and k}
    if len(record) > len(header):
        return values, [f"{len(record)} values for {len(header)} columns"]
    if any(not k and v.strip() for k, v in zip(header, record)):
        return values, ["a value under a column with no name"]
    return values, []


def _parse_yaml(path: Path, text: str) -> tuple[dict, list[tuple[str, dict, list[str]]]]:
    lines = _yaml_rows(path, text)
    try:
        doc = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as e:
        raise ConvertError(path, f"not YAML ({' '.join(str(e).split())})") from None
    if isinstance(doc, list):
        doc = {"jobs": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), list):
        raise ConvertError(path, "a YAML manifest needs a list `jobs:` (and optionally `defaults:`)")
    extra = set(doc) - {"defaults", "jobs"}
    if extra:
        raise ConvertError(path, f"unknown top-level key {_shown(sorted(map(str, extra))[0])}",
                           "a YAML manifest has defaults: and jobs:")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConvertError(path, "defaults: must be a mapping")
    rows = []
    for i, (job, line) in enumerate(zip(doc["jobs"], lines)):
        if not isinstance(job, dict):
            raise ConvertError(path, f"line {line} (jobs[{i}]): a {type(job).__name__}, not a mapping")
        rows.append((f"line {line}", job, []))
    return defaults, rows


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STARTS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_ENDS = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


class _Level:
    def __init__(self, is_map: bool, is_jobs: bool):
        self.is_map, self.is_jobs, self.expect_key, self.keys, self.key = is_map, is_jobs, True, set(), None


def _yaml_rows(path: Path, text: str) -> list[int]:
    """The line of each row, from the parser's events, before any value is built: an alias (`*a`, `<<:`)
    is refused, not expanded (ten nested aliases make a billion values from a few hundred bytes), and so
    are nesting deeper than any manifest needs and a key given twice (YAML would keep the last)."""
    lines: list[int] = []
    levels: list[_Level] = []
    try:
        for ev in yaml.parse(text, Loader=_LOADER):
            line = ev.start_mark.line + 1
            if isinstance(ev, yaml.AliasEvent):
                raise ConvertError(path, f"line {line}: a YAML alias (*{ev.anchor})",
                                   "a manifest may not use anchors and aliases (&a, *a, <<:): write each value out")
            if isinstance(ev, _ENDS):
                levels.pop()
                continue
            if not isinstance(ev, (yaml.ScalarEvent, *_STARTS)):
                continue
            parent = levels[-1] if levels else None
            is_jobs = parent is None and isinstance(ev, yaml.SequenceStartEvent)
            if parent is not None and parent.is_map:
                if parent.expect_key:
                    parent.key = ev.value if isinstance(ev, yaml.ScalarEvent) else object()
                    if parent.key in parent.keys:
                        raise ConvertError(path, f"line {line}: the key {_shown(parent.key)} more than once",
                                           "YAML would silently keep the last")
                    parent.keys.add(parent.key)
                else:
                    is_jobs = len(levels) == 1 and parent.key == "jobs" and isinstance(ev, yaml.SequenceStartEvent)
                parent.expect_key = not parent.expect_key
            elif parent is not None and parent.is_jobs:
                lines.append(line)
            if isinstance(ev, _STARTS):
                levels.append(_Level(isinstance(ev, yaml.MappingStartEvent), is_jobs))
                if len(levels) > MAX_YAML_DEPTH:
                    raise ConvertError(path, f"line {line}: nested too deeply to be a manifest")
    except yaml.YAMLError as e:
        raise ConvertError(path, f"not YAML ({' '.join(str(e).split())})") from None
    return lines


# ---------------------------------------------------------------- values


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value, key: str) -> str:
    """Every string a manifest gives: bounded, and nothing a file name, a report or a terminal cannot hold."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, not {_shown(value)}")
    if len(value) > MAX_VALUE_CHARS:
        raise ValueError(f"is {len(value)} characters long; the limit is {MAX_VALUE_CHARS}")
    if "\0" in value:
        raise ValueError("holds a NUL byte, which no file name or text value may hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"is not valid Unicode text: {_shown(value)}") from None
    if key not in PATH_KEYS and any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"holds a control character: {_shown(value)}")
    return value.strip()


def _coerce(key: str, value):
    """A row's value as its key takes it: a declared option by its own parser (a key both directions
    declare is read the same way by both), a flag of the row as true or false, anything else as text."""
    if key == "verify":
        return boolean(value)
    for cls in (*OPTIONS.values(), SourceOptions):
        if key in flags(cls):
            if isinstance(value, str):
                _text(value, key)   # bounded, no NUL: before any parser sees it
            return parse_value(cls, key, value)
    return _text(value, key)


def _check_defaults(defaults: dict, where: str) -> list[str]:
    """Defaults apply to every row, so a wrong one is the manifest's problem, not a row's."""
    problems = []
    for key, value in defaults.items():
        if key not in KNOWN:
            problems.append(f"{where}{unknown_key(key)}")
        elif key in ("src", "out", "id"):
            problems.append(f"{where}{key} belongs in a row")
        else:
            try:
                _coerce(key, value)
            except ValueError as e:
                problems.append(f"{where}{key} {e}")
    return problems


# ---------------------------------------------------------------- rows


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()   # RuntimeError for ~user that does not exist
    return p if p.is_absolute() else base / p


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # missing, or a file stands where a parent must be
        return None


def _out_problem(out: Path, parents: dict[Path, str | None]) -> str | None:
    """An output that cannot be made: it is a file, or a file stands where one of its parents must be.
    `parents` remembers each parent's answer: the rows of a manifest share OUT_ROOT."""
    st = _stat(out)
    if st is not None:
        return None if stat.S_ISDIR(st.st_mode) else f"out {out} is a file, not a directory"
    if out.parent not in parents:
        parents[out.parent] = None
        for parent in (out.parent, *out.parent.parents):
            if (st := _stat(parent)) is not None:
                parents[out.parent] = None if stat.S_ISDIR(st.st_mode) else f"{parent} is a file, not a directory"
                break
    return f"out {out}: {parents[out.parent]}" if parents[out.parent] else None


def _row(manifest: Path, where: str, own: dict, defaults: dict, shape: list[str], parents: dict,
         fetch: bool = True) -> Row:
    """The row, its values checked; what is wrong with it (each problem with its key) goes into
    `problem`, led by the manifest and the line, as the report and the row's stderr line show it."""
    bad = [*shape, *(unknown_key(k) for k in own if k not in KNOWN)]
    values = {**defaults, **{k: v for k, v in own.items() if k in KNOWN}}
    checked: dict = {}
    for k, v in values.items():
        try:
            checked[k] = _coerce(k, v)
        except ValueError as e:
            bad.append(f"{k} {e}")
    direction = checked.get("direction", "hf2ms")
    if direction not in DIRECTIONS:
        bad.append(f"direction {_shown(direction)}; choose hf2ms or ms2hf")
        direction = "hf2ms"
    allowed = OPTION_KEYS[direction]
    bad += [f"{k} is not an option of {direction}" for k in own
            if k in KNOWN and k not in allowed and k not in ROW_KEYS and k not in NOTE_KEYS]
    bad += [f"no {k}" for k in ("src", "out") if k not in values]
    options = None
    try:
        options = (HF2MSOptions if direction == "hf2ms" else MS2HFOptions)(
            **{k: checked[k] for k in allowed if k in checked and k not in ("config", *SOURCE_KEYS)})
    except ValueError as e:
        bad.append(str(e))
    if getattr(options, "adapter", None) and not Path(options.adapter).is_absolute():
        # a path like src: relative to the manifest, not to wherever bulk is started
        options = dataclasses.replace(options, adapter=str(manifest.parent / options.adapter))
    paths: dict[str, Path] = {}
    for k in PATH_KEYS:
        if k in checked and (k != "config" or direction == "ms2hf"):
            try:
                paths[k] = _path(manifest.parent, checked[k])
            except RuntimeError as e:
                bad.append(f"{k} {checked[k]}: {e}")
    hub: dict = {}
    problem = None
    if direction == "hf2ms" and "src" in paths:
        source = SourceOptions(**{k: checked[k] for k in SOURCE_KEYS if k in checked})
        paths["src"], hub, problem = _hub_source(paths["src"], checked["src"], source, fetch)
        bad += [problem] if problem else []
    bad += _files_problems({k: p for k, p in paths.items() if not (k == "src" and problem)}, checked, parents)
    out = paths.get("out")
    rid = checked.get("id") if isinstance(checked.get("id"), str) else ""
    notes = {**hub, **{k: checked[k] for k in NOTE_KEYS if k in checked}}
    return Row(where, rid, paths.get("src"), out, direction, bool(checked.get("verify", False)), options,
               paths.get("config"), notes, f"{manifest}: {where}: " + "; ".join(bad) if bad else None)


def _hub_source(path: Path, given: str, source: SourceOptions, fetch: bool) -> tuple[Path, dict, str | None]:
    """(the directory, {"repo", "commit"} when it is a hub snapshot, the row's problem) for an hf2ms row's
    src: a path (relative to the manifest) that exists, else a hub repo id at `revision`, resolved in
    the local hub cache as hf2ms resolves it (a models--ORG--NAME cache folder too). Downloaded only
    when the row says `download` (and `fetch`); a repo the cache lacks is this row's problem alone."""
    from ..sources.hub import Spelling, hub_origin, looks_like_repo_id, resolve_source
    row_keys = Spelling(download='set "download": true on the row', revision="revision")
    is_id = _stat(path) is None and looks_like_repo_id(given)
    if not is_id and not source.revision and not path.name.startswith("models--"):
        return path, {}, None   # a directory, or nothing (said as a missing source)
    only_look = is_id and source.download and not fetch   # a dry run of a row that may download
    try:
        found = resolve_source(given if is_id else path, source.revision, source.download and not only_look,
                               row_keys)
    except ConvertError as e:
        said = (f"{given}: not in the local hub cache; a run fetches it first (download), a dry run does not"
                if only_look else e.one_line())
        return path, {}, f"src {said}"
    origin = hub_origin(found)
    return found, ({"repo": origin["repo_id"], "commit": origin["commit"]} if origin else {}), None


def _files_problems(paths: dict[str, Path], given: dict, parents: dict) -> list[str]:
    bad = []
    try:
        if "src" in paths and _stat(paths["src"]) is None:
            bad.append(f"source {given['src']} does not exist")
        if "config" in paths:
            st = _stat(paths["config"])
            if st is None or not stat.S_ISREG(st.st_mode):
                bad.append(f"config {given['config']} is not a file")
        if "out" in paths and (problem := _out_problem(paths["out"], parents)):
            bad.append(problem)
    except OSError as e:   # a name too long, a loop of links, a directory we may not enter
        bad.append(f"{e.filename}: {e.strerror}")
    return bad


def _with_ids(rows: list[Row]) -> list[Row]:
    """A row without an id is named by OUT's name when no other row's OUT has that name, else by OUT; a
    row without a usable OUT by its line."""
    names = Counter(r.out.name for r in rows if r.out is not None and not r.id)
    return [r if r.id else replace(r, id=(r.out.name if names[r.out.name] == 1 else str(r.out)) if r.out else r.where)
            for r in rows]


def _same_ids(rows: list[Row], given: list[bool]) -> list[str]:
    """Ids that repeat; two ids made from one OUT are not told apart from the outputs' own clash."""
    first: dict[str, tuple[str, bool]] = {}
    problems = []
    for r, own in zip(rows, given):
        if r.id in first and (own or first[r.id][1]):
            problems.append(f"{r.where}: id {r.id!r} is also the id of {first[r.id][0]}")
        first.setdefault(r.id, (r.where, own))
    return problems


def _named(manifest: Path, rows: list[Row], also: list[tuple[Path, str, str]]) -> list[Named]:
    resolve = Resolver()
    named = [Named(resolve.key(manifest), MANIFEST, "the manifest", str(manifest))]
    named += [Named(resolve.key(path), kind, role, str(path)) for path, kind, role in also]
    for r in rows:
        for path, kind, role in ((r.src, SOURCE, "source"), (r.config, SOURCE, "config"), (r.out, OUT, "out")):
            if path is not None:
                named.append(Named(resolve.key(path, keep_last=kind == OUT), kind, role, str(path), r.where))
    return named
