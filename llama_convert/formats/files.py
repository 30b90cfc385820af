"""The one way an input file is opened: only regular files, never blocking, never read whole unbounded.

Users point the tool at directories they did not write. A FIFO named config.json would block an open
forever, a symlink to /dev/zero would be read until memory runs out, and a Git LFS pointer looks like
a corrupt checkpoint unless someone says what it is. Every reader goes through here first.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..core.errors import ConvertError

# Configs, indexes and YAMLs are kilobytes; the largest real index is a few hundred KB. Anything
# beyond this is not what it claims to be, and reading it whole would only exhaust memory.
MAX_TEXT_BYTES = 64 << 20

LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def _refuse_special(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise ConvertError(path, f"is {_kind(mode)}, not a regular file",
                           "point the tool at the real file, not a pipe, device or directory")


def _os_error(path: Path, e: OSError, what: str, missing_hint: str | None) -> ConvertError:
    if isinstance(e, FileNotFoundError):
        return ConvertError(path, f"{what} not found", missing_hint)
    return ConvertError(path, f"cannot read {what}: {e.strerror or e}")


def check_regular(path: Path, what: str = "file", missing_hint: str | None = None) -> os.stat_result:
    """stat (following symlinks) and refuse anything that is not a regular file, without opening it:
    opening some devices has side effects of its own."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise _os_error(path, e, what, missing_hint) from None
    _refuse_special(path, st.st_mode)
    return st


def open_input(path: Path, what: str = "file", missing_hint: str | None = None) -> BinaryIO:
    """A binary file object for a regular file that is checked on the descriptor actually opened,
    so a file swapped for a FIFO between the check and the open cannot block or fool us."""
    path = Path(path)
    check_regular(path, what, missing_hint)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _os_error(path, e, what, missing_hint) from None
    try:
        _refuse_special(path, os.fstat(fd).st_mode)
        # Regular files ignore O_NONBLOCK, but leave the descriptor in its ordinary blocking mode.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def check_not_lfs_pointer(path: Path, f: BinaryIO) -> None:
    """A weight file that starts like a Git LFS pointer was cloned without `git lfs`: say so, rather
    than calling it corrupt. Leaves the file position unchanged."""
    pos = f.tell()
    f.seek(0)
    head = f.read(len(LFS_MAGIC))
    f.seek(pos)
    if head == LFS_MAGIC:
        raise ConvertError(path, "is a Git LFS pointer, not the weights",
                           "run `git lfs pull` in the source repository")


def read_small(path: Path, what: str = "file", missing_hint: str | None = None,
               limit: int = MAX_TEXT_BYTES) -> bytes:
    """The whole content of a small input (config, index, YAML), refused above `limit` bytes."""
    with open_input(path, what, missing_hint) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise ConvertError(path, f"{what} is {size} bytes, more than the {limit >> 20} MiB any "
                                   f"{what} needs", "check that this is the right file")
            data = f.read(limit + 1)  # the size can grow while we read: never take more than the limit
        except OSError as e:
            raise _os_error(path, e, what, missing_hint) from None
    if len(data) > limit:
        raise ConvertError(path, f"{what} grew past {limit >> 20} MiB while being read")
    return data


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    # json keeps the last of a repeated key, silently picking one of two tensor entries or config values.
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json_object(raw: bytes, path: Path, what: str, hint: str | None = None) -> dict:
    """A UTF-8 JSON object with no repeated keys at any level, or one ConvertError saying why not."""
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as e:
        raise ConvertError(path, f"{what} is not UTF-8 text (byte {e.start})", hint) from None
    except _DuplicateKey as e:
        raise ConvertError(path, f"{what} has the key {e.args[0]!r} more than once, so which value is meant is "
                           "ambiguous", hint) from None
    except RecursionError:
        raise ConvertError(path, f"{what} is nested too deeply to be what it claims", hint) from None
    except ValueError as e:
        where = f" ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise ConvertError(path, f"{what} is not valid JSON{where}", hint) from None
    if not isinstance(data, dict):
        raise ConvertError(path, f"{what} must hold a JSON object, not {type(data).__name__}", hint)
    return data
