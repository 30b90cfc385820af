"""The standard streams are the caller's: a reader that leaves (`| head -1`) or a stream closed before we
start (`2>&-`) is not bad input. The work finishes, what no one reads is dropped, and stdout never
receives what was meant for a missing stderr (--json promises stdout the JSON alone)."""
from __future__ import annotations

import errno
import io
import os
import sys
from typing import Callable

from ..core.errors import printable


class Forgiving(io.TextIOBase):
    """A standard stream whose reader may leave (`| head -1`): what finds no reader is dropped, and the
    descriptor is pointed at /dev/null, so later writes (anyone's, the flush at exit too) go nowhere
    quietly. Text is made printable: a path's non-UTF-8 bytes are shown as \\xNN, never a crash."""

    def __init__(self, stream: io.TextIOBase):
        self.stream = stream

    @property
    def encoding(self) -> str:
        return self.stream.encoding

    @property
    def errors(self) -> str | None:
        return self.stream.errors

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def write(self, text: str) -> int:
        try:
            self.stream.write(printable(text))
        except BrokenPipeError:
            self._reader_gone()
        return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.stream.fileno())
        finally:
            os.close(devnull)
        try:
            self.stream.flush()  # what was buffered for the reader that left goes to /dev/null now
        except OSError:
            pass


def standard_streams() -> Callable[[], None]:
    """Make stdin, stdout and stderr safe to use, whatever the caller left them as; returns the undo.

    A descriptor closed by the caller (`2>&-`) gets /dev/null: else the next file we open would take its
    number, and a library writing to "stderr" would write into the output. Python then has no
    sys.stderr, and print() to a missing stream writes to stdout, where --json promises the JSON alone."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError as e:
            if e.errno != errno.EBADF:
                continue
            devnull = os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd itself, unless a lower was free
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
    saved = sys.stdout, sys.stderr
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, open(os.devnull, "w"))
            continue
        try:
            stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue  # not a real descriptor (click's CliRunner): nothing to forgive
        setattr(sys, name, Forgiving(stream))

    def restore() -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = saved
    return restore
