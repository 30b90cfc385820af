"""The output directory as a transaction: checked before any work, written aside, renamed into place.

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

import errno
import functools
import fcntl
import json
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from stat import S_ISREG
from types import TracebackType
from typing import Callable

from ..core.errors import ConvertError
from ..formats.files import read_small
from ..core.paths import resolved
from ..console.progress import Progress

HOST = os.uname().nodename or "localhost"  # what socket.gethostname() says, without importing socket
CONVERSION_RECORD = "conversion.json"
_RECORD_LIMIT = 256 << 20  # a conversion.json is a few MB at most; anything bigger is not ours
_CLOCK_SLACK = 2.0         # /proc start times are whole seconds plus ticks: allow for rounding
# What report.provenance writes: a conversion.json without all of it is not a complete record of ours.
RECORD_KEYS = frozenset({"tool", "version", "direction", "created", "mapping_table", "options", "source", "hashes",
                         "outputs", "tensor_count", "tensors", "skipped", "config"})
_SHOWN = 5                 # foreign entries named in a refusal


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt is for SIGINT, so that cleanup runs before the process ends."""

    exit_code = 143


def raise_terminated(signum: int, frame) -> None:
    raise Terminated()


class RenameUnsupported(OSError):
    """The filesystem (or the C library) cannot rename without replacing."""


def real_entry(path: Path) -> Path:
    """Where `path` itself lives: its parent with symlinks resolved, and its own name (a link stays a link)."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        return resolved(path)
    return resolved(path.parent) / path.name


def _locations(path: Path) -> set[Path]:
    """The entry itself and, if it is a symlink, what it finally points at."""
    entry = real_entry(path)
    return {entry, resolved(path)} if entry.is_symlink() else {entry}


def _refuse_overlap(out: Path, sources: list[Path]) -> None:
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
        if (not isinstance(name, str) or name in ("", ".", "..", CONVERSION_RECORD) or "/" in name or "\0" in name
                or name in listed or type(size) is not int or size < 0):
            return None
        listed[name] = size
    return listed


def foreign_entries(directory: Path, listed: dict[str, int]) -> list[str]:
    """What a directory holds beyond the files `listed` with their sizes (and the record itself)."""
    found = []
    with os.scandir(directory) as entries:
        for e in sorted(entries, key=lambda e: e.name):
            if e.name == CONVERSION_RECORD:
                continue
            if e.is_symlink():
                found.append(f"{e.name} (a symbolic link)")
            elif e.is_dir():
                found.append(f"{e.name}/")
            elif not e.is_file():
                found.append(f"{e.name} (not a regular file)")
            elif e.name not in listed:
                found.append(e.name)
            elif (size := e.stat(follow_symlinks=False).st_size) != listed[e.name]:
                found.append(f"{e.name} (changed since: {size} bytes, recorded {listed[e.name]})")
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
    _refuse_overlap(out, [Path(s) for s in sources])
    _refuse_existing(out, force)


def _refuse_existing(out: Path, force: bool) -> None:
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


# ---------------------------------------------------------------- the rename that never replaces

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


@functools.cache
def _renameat2():
    """libc's renameat2, or None. Looked up at the first rename: ctypes costs start-up time every command pays."""
    import ctypes
    return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename src to dst, failing with FileExistsError if dst exists (as anything, even a dangling link)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        raise RenameUnsupported(errno.ENOSYS, "renameat2 is not available", str(dst))
    if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return
    import ctypes  # loaded by _renameat2 already
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        raise RenameUnsupported(err, "this filesystem cannot rename without replacing", str(dst))
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _noreplace_works(scratch: Path) -> bool:
    """Whether renameat2 NOREPLACE works on the filesystem of `scratch` (an empty directory of ours)."""
    a, b = scratch / "probe-a", scratch / "probe-b"
    a.mkdir()
    try:
        rename_noreplace(a, b)
    except RenameUnsupported:
        a.rmdir()
        return False
    b.rmdir()
    return True


class OutDirLock:
    """The fallback where renameat2 is missing: an flock on `.OUT.lock`, held from before work starts
    until the output is in place. The loser is refused at once instead of after all its work."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = real_entry(out).parent / f".{real_entry(out).name}.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ConvertError(self.out, "another run is writing this output directory",
                                   "wait for it to finish, or choose another OUT_DIR") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed the file as we opened it: lock the new one
                self.fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)  # while still holding it, so that a waiter sees a new inode
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------- debris of killed runs

def _process_start(pid: int) -> float | None:
    """Seconds since the epoch when process `pid` started, or None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22: starttime, in clock ticks after boot
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].startswith("Z")


def owner_alive(pid: int, entry: Path) -> bool:
    """Whether the process that made `entry` may still be using it: the PID runs, and started before the
    entry last changed (a process that started later merely reuses the PID of a dead owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _zombie(pid):
        return False
    started = _process_start(pid)
    try:
        changed = os.lstat(entry).st_ctime
    except FileNotFoundError:
        return True  # gone already: someone else is handling it
    return started is None or started <= changed + _CLOCK_SLACK


def _debris_pattern(entry: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(entry.name)}\.(partial|old)-{re.escape(HOST)}-(\d+)")


def _remove(path: Path) -> None:
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
        _remove(path)
        notes.append(f"reclaimed {name} left by dead process {pid}")
    return notes


# ---------------------------------------------------------------- the transaction

def _human(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class Transaction:
    """Write OUT_DIR all or nothing.

        with Transaction(out, force, sources, needed_bytes) as tx:
            ... write files into tx.partial ...
            tx.commit()

    Entering checks OUT_DIR (again: the plan now knows every source file), reclaims debris of dead runs,
    makes OUT_DIR's missing parents, refuses a plan that clearly does not fit, and makes the partial
    directory. Leaving without commit() (an exception, SIGTERM, SIGINT) removes the partial directory and
    the parents this run made that are still empty, and nothing else.
    """

    def __init__(self, out: Path, force: bool, sources: list[Path], needed_bytes: int = 0,
                 notify: Callable[[str], None] | None = None):
        self.out = Path(out)
        self.entry = real_entry(self.out)
        self.force = force
        self.sources = list(sources)
        self.needed = needed_bytes
        self.notify = notify or Progress().notice  # a library caller's default: notices on stderr
        self.partial = self.entry.parent / f".{self.entry.name}.partial-{HOST}-{os.getpid()}"
        self.old = self.entry.parent / f".{self.entry.name}.old-{HOST}-{os.getpid()}"
        self.free: int | None = None
        self.committed = False
        self.made: list[Path] = []  # parents of OUT_DIR this run created, outermost first
        self._lock: OutDirLock | None = None
        self._handlers: dict[int, object] = {}

    def __enter__(self) -> Transaction:
        _refuse_overlap(self.out, self.sources)  # before reclaim, which deletes beside OUT_DIR
        for line in reclaim(self.out):
            self.notify(line)
        _refuse_existing(self.out, self.force)
        try:  # from the first directory made on, a failure removes what this run made
            self._make_parents()
            self.free = shutil.disk_usage(self.entry.parent).free
            if self.needed > self.free:
                raise ConvertError(self.out, f"not enough free space: the output needs {_human(self.needed)}, "
                                   f"{_human(self.free)} is free there", "free some space or choose another OUT_DIR")
            self._catch_signals()
            self._make_partial()
            if not _noreplace_works(self.partial):
                self._lock = OutDirLock(self.out)
                self._lock.acquire()
        except BaseException as e:  # a signal can land here too, once the partial directory exists
            self._end(e)
            raise
        return self

    def _make_parents(self) -> None:
        """mkdir -p of OUT_DIR's parent, remembering which directories this run made."""
        missing, d = [], self.entry.parent
        while not os.path.lexists(d) and d != d.parent:
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue  # another run made it just now: that run's to remove, not ours
            self.made.append(d)

    def _make_partial(self) -> None:
        for _ in range(3):
            try:
                self.partial.mkdir()
                return
            except FileNotFoundError:  # a failing run into a sibling OUT_DIR removed the parents it had made
                self._make_parents()
        self.partial.mkdir()

    def _remove_parents(self) -> None:
        """rmdir of the parents this run made, innermost first, stopping at the first that is not empty."""
        for d in reversed(self.made):
            try:
                d.rmdir()
            except OSError:
                return  # something else lives there now (another run's output, a user's file): keep it
        self.made = []

    def commit(self) -> None:
        """Put the partial directory in place of OUT_DIR; with force, the previous output goes only after."""
        self._ignore_signals()  # from here on the output exists: a late signal must not half-undo it
        moved_aside = False
        if self.force and os.path.lexists(self.entry):
            try:
                self._rename(self.entry, self.old)
                moved_aside = True
            except FileNotFoundError:
                pass  # a concurrent --force run moved it aside first
        if moved_aside:
            self._keep_what_is_not_ours()
        try:
            self._rename(self.partial, self.entry)
        except FileExistsError:
            raise ConvertError(self.out, "was created by another run while this one worked",
                               "this run's output was discarded; nothing was replaced") from None
        finally:
            if moved_aside:  # replaced as asked, by this run or by the one that beat it
                _remove(self.old)
        self.committed = True

    def _keep_what_is_not_ours(self) -> None:
        """Check the earlier output again where nobody can add to it any more: a file put into OUT_DIR
        while this run worked puts the earlier output back and discards this run's."""
        if self.old.is_symlink() or not self.old.is_dir():
            return
        refusal = replace_refusal(self.old, self.out)
        if refusal is None:
            return
        try:
            self._rename(self.old, self.entry)
        except OSError:
            raise ConvertError(self.out, f"{refusal.problem}; another run took OUT_DIR meanwhile, so the earlier "
                               f"output waits in {self.old.name}", "move it back by hand") from None
        raise ConvertError(self.out, f"{refusal.problem} (added or changed while this run worked)",
                           "this run's output was discarded; move those out of it, or choose another OUT_DIR")

    def _rename(self, src: Path, dst: Path) -> None:
        if self._lock is None:
            rename_noreplace(src, dst)
            return
        if os.path.lexists(dst):  # under the lock only a user's hand could have put it there
            raise FileExistsError(errno.EEXIST, "exists", str(dst))
        os.rename(src, dst)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._end(error)

    def _end(self, error: BaseException | None) -> None:
        """Remove what is not committed, give back the signals, and end as the error asks."""
        die_by_sigterm = isinstance(error, Terminated) and self._handlers.get(signal.SIGTERM) is signal.SIG_DFL
        try:
            if not self.committed:
                self._ignore_signals()  # a second Ctrl-C must not interrupt the cleanup
                self._cleanup()
        finally:
            if self._lock:
                self._lock.release()
            if not self.committed:
                self._remove_parents()  # after the lock file, which lives in OUT_DIR's parent
            self._restore_signals()
        if die_by_sigterm:  # nobody asked to hear of SIGTERM: end as it would have ended us, only cleaned up
            os.kill(os.getpid(), signal.SIGTERM)
        self._refuse_disk_full(error)

    def _refuse_disk_full(self, error: BaseException | None) -> None:
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            raise ConvertError(self.out, f"disk full while writing the output: it needs {_human(self.needed)}, "
                               f"{_human(self.free or 0)} was free when the run started",
                               "free some space or choose another OUT_DIR; the partial output was removed") from None

    def _cleanup(self) -> None:
        _remove(self.partial)

    def _catch_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread; there the caller decides
        for sig, handler in ((signal.SIGTERM, raise_terminated), (signal.SIGINT, signal.default_int_handler)):
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue  # started under nohup or in the background: the caller wants it ignored
            self._handlers[sig] = previous
            signal.signal(sig, handler)

    def _ignore_signals(self) -> None:
        for sig in self._handlers:
            signal.signal(sig, signal.SIG_IGN)

    def _restore_signals(self) -> None:
        for sig, previous in self._handlers.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._handlers = {}

