"""How every command ends: its exit status and, for anything but success, one line on stderr.

0 done; 1 only "a check found a difference" (returned by the command itself); 2 bad input, usage or
installation, with the file and the problem; 3 only a bug of ours (a traceback would read as exit 1,
"parity failed", to a CI gate); 130 / 143 after SIGINT / SIGTERM, once cleanup has run. The CLI and a
bulk row's runner (bulk/row.py) end by the same rules, so a row fails exactly as the command would.
"""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Callable, Iterator

from ..core.errors import ConvertError
from ..core.extras import missing
from ..core.signals import Terminated, raise_terminated

PREFIX = "llama-convert: "


def ending(error: BaseException, command: str) -> tuple[int, str]:
    """(exit status, the stderr line) for an exception that ends `command`; raised again when it is a bug
    and LLAMA_CONVERT_TRACEBACK asks for the traceback."""
    if isinstance(error, Terminated):
        return 143, f"{PREFIX}terminated (SIGTERM); nothing half-written was left"
    if isinstance(error, KeyboardInterrupt):
        return 130, f"{PREFIX}interrupted (SIGINT); nothing half-written was left"
    if isinstance(error, ConvertError):
        return 2, f"{PREFIX}error: {error.one_line()}"
    if isinstance(error, OSError):  # disk full, permissions, a file vanishing mid-run: nothing was left half-written
        where = f"{error.filename}: " if error.filename else ""
        return 2, f"{PREFIX}error: {where}{error.strerror or error}"
    if isinstance(error, ModuleNotFoundError) and (refusal := missing(error, command)) is not None:
        return 2, f"{PREFIX}error: {refusal.one_line()}"  # an optional dependency: the installation's fault
    if os.environ.get("LLAMA_CONVERT_TRACEBACK"):
        raise error
    first = (str(error).strip().splitlines() or [""])[0][:200]
    return 3, (f"{PREFIX}internal error: {type(error).__name__}: {first} (a bug in llama-convert, not in your "
               f"input: rerun with LLAMA_CONVERT_TRACEBACK=1 and report what it prints)")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM unwinds like SIGINT does, so a partial output is removed before the process ends. The
    handler is restored afterwards: a caller such as click's CliRunner goes on living in this process."""
    before = signal.getsignal(signal.SIGTERM)
    if before is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        if before is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, before)


def run_command(work: Callable[[], int | None], command: str, say: Callable[[str], None]) -> int:
    """Run `work` as a command: its own status (None: 0), or the status of the exception that ended it,
    whose line goes to `say`."""
    with sigterm_raises():
        try:
            return work() or 0
        except Exception as e:
            code, line = ending(e, command)
        except (KeyboardInterrupt, Terminated) as e:
            code, line = ending(e, command)
    say(line)
    return code
