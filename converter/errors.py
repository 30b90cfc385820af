"""The one exception type users see: what is wrong, with which file, and what to do."""
from __future__ import annotations

from pathlib import Path


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
        return " ".join(text.split())
