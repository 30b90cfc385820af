"""The one exception type users see: what is wrong, with which file, and what to do."""
from __future__ import annotations

from pathlib import Path


def printable(text: str) -> str:
    """Text any stream or file can take. A path with bytes that are not UTF-8 reaches Python as lone
    surrogates (\\udcff for the byte 0xff), which a UTF-8 encoder refuses: they are shown as \\xff."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name gives (from JSON, say): show it escaped
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


class ConvertError(Exception):
    """Bad input or usage. The CLI prints it on one line and exits 2."""

    def __init__(self, where: str | Path | None, problem: str, hint: str | None = None):
        self.where = str(where) if where is not None else None
        self.problem = problem
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.where}: {self.problem}" if self.where else self.problem
        if self.hint:
            text += f" ({self.hint})"
        return printable(" ".join(text.split()))
