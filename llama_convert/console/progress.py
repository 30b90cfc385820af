"""What a person watches while a conversion runs: a byte-based bar on a terminal, a line per finished
file in a log, nothing when asked to be quiet. Everything goes to stderr, so stdout (--json) stays clean.

The callback API is three calls, made by whoever does the work (execute.py; verify's stages):
`advance(nbytes)` as tensor bytes are written, `file_done(name, size)` when an output file is complete,
`stage(name, index, total)` for work measured in steps rather than bytes; and `close()`. Besides,
`notice(line)` tells of something done to the user's files that they did not ask for (debris of a
crashed run reclaimed, a moved-aside OUT_DIR restored): shown by every display but the quiet one.
"""
from __future__ import annotations

import sys
from typing import TextIO

from ..core.sizes import human_bytes


class Progress:
    """Shows no progress, only notices (on stderr): the default of library calls."""

    def notice(self, line: str) -> None:
        if sys.stderr is not None:  # None when started with stderr closed; print() would fall back to stdout
            print(f"llama-convert: {line}", file=sys.stderr, flush=True)

    def start(self, total_bytes: int, what: str = "converting") -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def file_done(self, name: str, size: int) -> None:
        pass

    def stage(self, name: str, index: int, total: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Quiet(Progress):
    """--quiet: nothing at all; errors still reach stderr, as exceptions."""

    def notice(self, line: str) -> None:
        pass


class Lines(Progress):
    """One line per finished file (and per stage): what a log file or CI output can use."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def file_done(self, name: str, size: int) -> None:
        self.notice(f"wrote {name} ({human_bytes(size)})")

    def notice(self, line: str) -> None:
        print(f"llama-convert: {line}", file=self.stream, flush=True)

    def stage(self, name: str, index: int, total: int) -> None:
        self.notice(f"[{index}/{total}] {name}")


class Bar(Progress):
    """tqdm's bar in bytes, with rate and ETA; finished files are printed above it."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.bar = None

    def start(self, total_bytes: int, what: str = "converting") -> None:
        from tqdm import tqdm
        self.close()
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=what,
                        file=self.stream, leave=True, **_shape())

    def advance(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def file_done(self, name: str, size: int) -> None:
        self.notice(f"wrote {name} ({human_bytes(size)})")

    def notice(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def stage(self, name: str, index: int, total: int) -> None:
        from tqdm import tqdm
        if self.bar is None or self.bar.unit != "stage":
            self.close()
            self.bar = tqdm(total=total, unit="stage", file=self.stream, leave=True, **_shape(),
                            bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}]")
        self.bar.set_description_str(name)
        self.bar.update(index - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _shape() -> dict:
    """The terminal's size for tqdm. A terminal that reports none (a fresh pty says 0 x 0) gets 100 x 24:
    tqdm would draw an empty bar in 0 columns, and none at all in 0 rows."""
    import shutil
    size = shutil.get_terminal_size((100, 24))
    return {"ncols": min(size.columns or 100, 120), "nrows": size.lines or 24}


def for_terminal(quiet: bool = False, stream: TextIO | None = None) -> Progress:
    """The display that fits where stderr goes: nothing if quiet, a bar on a terminal, else lines."""
    stream = stream or sys.stderr
    if quiet or stream is None:  # no stderr at all (closed by the caller): nowhere to show anything
        return Quiet()
    isatty = getattr(stream, "isatty", None)
    return Bar(stream) if isatty is not None and isatty() else Lines(stream)
