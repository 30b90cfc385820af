"""The output directory as a transaction: written aside into a hidden sibling, renamed into place, removed on
any failure or signal (see out_dir.py for the guarantees)."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import threading
from pathlib import Path
from types import TracebackType
from typing import Callable

from ..console.progress import Progress
from ..core.errors import ConvertError
from ..core.signals import Terminated, raise_terminated
from ..core.sizes import human_bytes
from .fs import HOST, OutDirLock, noreplace_works, real_entry, rename_noreplace
from .out_dir import reclaim, refuse_existing, refuse_overlap, remove_entry, replace_refusal

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
        refuse_overlap(self.out, self.sources)  # before reclaim, which deletes beside OUT_DIR
        for line in reclaim(self.out):
            self.notify(line)
        refuse_existing(self.out, self.force)
        try:  # from the first directory made on, a failure removes what this run made
            self._make_parents()
            self.free = shutil.disk_usage(self.entry.parent).free
            if self.needed > self.free:
                raise ConvertError(self.out, f"not enough free space: the output needs {human_bytes(self.needed)}, "
                                   f"{human_bytes(self.free)} is free there", "free some space or choose another OUT_DIR")
            self._catch_signals()
            self._make_partial()
            if not noreplace_works(self.partial):
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
                remove_entry(self.old)
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
            raise ConvertError(self.out, f"disk full while writing the output: it needs {human_bytes(self.needed)}, "
                               f"{human_bytes(self.free or 0)} was free when the run started",
                               "free some space or choose another OUT_DIR; the partial output was removed") from None

    def _cleanup(self) -> None:
        remove_entry(self.partial)

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

