"""Which paths of a bulk run lie inside (or are) which others, found in O(n log n).

A run names many paths: each row's source and output, the manifest, the report and its journal. An
output that holds another output, a source, the manifest or the report would delete it when the row is
redone; a report written inside a source overwrites it. Checking every pair is quadratic (10,000 rows:
50 million pairs), so the paths are sorted by their components instead: then every path's ancestors
are on one stack, and each path is compared only with the few directories above it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# What each kind of path may share with another (be it, or lie inside it): sources may nest or repeat
# (two rows may read one model); files that are only read may sit anywhere but inside an output.
# Everything else is a conflict: an output is replaced when its row runs, the report is rewritten.
SOURCE, OUT, MANIFEST, RETRY, REPORT = "source", "out", "manifest", "retry", "report"
_ALLOWED = {frozenset((SOURCE,)), frozenset((SOURCE, MANIFEST)), frozenset((SOURCE, RETRY)),
            frozenset((MANIFEST, RETRY)), frozenset((RETRY,)), frozenset((RETRY, REPORT))}
_WRITTEN = (OUT, REPORT)
MAX_LISTED = 8


@dataclass(frozen=True, slots=True)
class Named:
    """A path of the run: what it is (kind), what to call it ("out", "--report"), and whose it is."""
    key: str                 # the path as resolved (Resolver.key)
    kind: str
    role: str                # "out", "source", "config"; "the manifest", "--report", "the journal", ...
    path: str                # as the user gave it (made absolute), for messages
    where: str | None = None  # the row ("line 4"); None for the run's own files

    def subject(self) -> str:
        return f"{self.where}: {self.role} {self.path}" if self.where else f"{self.role} {self.path}"

    def object(self, subject: Named) -> str:
        if self.where is None:
            return f"{self.role} {self.path}"
        return f"its own {self.role}" if self.where == subject.where else f"the {self.role} of {self.where}"


class Resolver:
    """Paths with symlinks resolved, never raising (a loop or a missing part stays as written). The rows
    of a manifest share parents (OUT_ROOT/a, OUT_ROOT/b, ...): each parent is resolved once, and each
    path costs one lstat of its own."""

    def __init__(self) -> None:
        self._dirs: dict[str, str] = {}

    def key(self, path: Path | str, keep_last: bool = False) -> str:
        """The resolved path with each separator written as NUL, which no name holds and which sorts before
        every character: the keys sort as the paths' components would, and a key starts with its
        ancestors' keys plus NUL. One string a path, not a tuple of its parts: 10,000 rows hold 30,000.
        keep_last: an output that is a symlink is replaced as a link, so only its parent is resolved."""
        parent, name = os.path.split(os.fspath(path))
        if name in ("", ".", ".."):
            real = os.path.realpath(path)
        else:
            if parent not in self._dirs:
                self._dirs[parent] = os.path.realpath(parent)
            real = os.path.join(self._dirs[parent], name)
            if not keep_last and os.path.islink(real):
                real = os.path.realpath(real)
        return "" if real == os.sep else real.replace(os.sep, "\0")   # the root: every key starts with "" + NUL


class _Group:
    """The paths named at one place: the first of each kind stands for the rest, so that 10,000 rows
    reading one source cost 10,000 steps, not 50 million comparisons."""
    __slots__ = ("key", "firsts", "rows")

    def __init__(self, key: str):
        self.key = key
        self.firsts: dict[str, tuple[int, Named]] = {}
        self.rows: dict[tuple[str | None, str], tuple[int, Named]] = {}  # (row, kind): to say "its own"

    def own(self, kind: str, where: str | None, default: tuple[int, Named]) -> tuple[int, Named]:
        return self.rows.get((where, kind), default) if where is not None else default


def conflicts(named: list[Named]) -> list[str]:
    """Every kind of overlap, once per pair of places, in the order the paths were given, each message
    led by the path that would be written ("line 4: out X lies inside the source of line 2")."""
    groups: dict[str, _Group] = {}
    found: list[tuple[int, str]] = []
    for i, n in enumerate(named):
        group = groups.setdefault(n.key, _Group(n.key))
        for j, other in group.firsts.values():   # the same path named twice
            if _clash(other, n):
                found.append(_message(group.own(other.kind, n.where, (j, other)), (i, n), inside=False))
        group.firsts.setdefault(n.kind, (i, n))
        group.rows.setdefault((n.where, n.kind), (i, n))
    stack: list[_Group] = []  # the current path's ancestors, outermost first: one per directory level at most
    for key in sorted(groups):
        group = groups[key]
        while stack and not key.startswith(stack[-1].key + "\0"):
            stack.pop()
        for above in stack:
            for j, outer in above.firsts.values():
                for i, inner in group.firsts.values():
                    if _clash(outer, inner):
                        # name a row's own source or output when it is the one in the way
                        found.append(_message(above.own(outer.kind, inner.where, (j, outer)),
                                              group.own(inner.kind, outer.where, (i, inner)), inside=True))
        stack.append(group)
    return [text for _, text in sorted(found)]


def _clash(a: Named, b: Named) -> bool:
    return frozenset((a.kind, b.kind)) not in _ALLOWED


def _message(outer: tuple[int, Named], inner: tuple[int, Named], inside: bool) -> tuple[int, str]:
    """(position of the path the message is about, message): about the inner path when it is written,
    else about the written one that would hold it (or repeat it)."""
    (i, o), (j, n) = outer, inner
    if n.kind in _WRITTEN or o.kind not in _WRITTEN:
        return j, f"{n.subject()} {'lies inside' if inside else 'is also'} {o.object(n)}"
    return i, f"{o.subject()} {'would hold' if inside else 'is also'} {n.object(o)}"


def summary(found: list[str]) -> str:
    shown = "; ".join(found[:MAX_LISTED])
    return shown + (f"; and {len(found) - MAX_LISTED} more" if len(found) > MAX_LISTED else "")
