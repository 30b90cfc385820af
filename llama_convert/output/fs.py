"""The filesystem operations an output directory relies on: where an entry itself lives, a rename that never
replaces anything (renameat2 RENAME_NOREPLACE) with a per-OUT_DIR lock where the filesystem lacks it, and
whether the process that made an entry may still be using it (/proc)."""
from __future__ import annotations

import errno
import fcntl
import functools
import os
from pathlib import Path

from ..core.errors import ConvertError
from ..core.paths import resolved

HOST = os.uname().nodename or "localhost"  # what socket.gethostname() says, without importing socket
_CLOCK_SLACK = 2.0         # /proc start times are whole seconds plus ticks: allow for rounding


class RenameUnsupported(OSError):
    """The filesystem (or the C library) cannot rename without replacing."""


def real_entry(path: Path) -> Path:
    """Where `path` itself lives: its parent with symlinks resolved, and its own name (a link stays a link)."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        return resolved(path)
    return resolved(path.parent) / path.name


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


def noreplace_works(scratch: Path) -> bool:
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


