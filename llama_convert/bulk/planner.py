"""Each row's plan, cut down to what a bulk run needs of it; rows whose sources are the same files share one.

A bulk run needs little of a plan: the memory estimates and what the done-check compares. A whole plan
holds every tensor of the model, so each is reduced to a Summary and dropped: 10,000 rows keep 10,000
small summaries, not 10,000 models' headers. Planning a row reads its headers and translates its config
(about 3 ms for a tiny model); rows whose source directories hold the very same files (by device,
inode, size, mtime and ctime: a model named twice, hard-linked copies) with the same options are
planned once. Failures are not shared: each row's message names its own files.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..sources.hf import open_hf_dir
from ..sources.detect import open_mindspore
from ..plan.plan import build_ms2hf_plan, build_plan
from .done import Expected
from .manifest import Row
from .memory import estimate

MAX_LISTING = 1000   # a source directory with more entries than this is planned on its own


@dataclass(frozen=True)
class Summary:
    expected: Expected
    convert_memory: int
    verify_memory: int
    deeper: tuple[tuple[str, tuple], ...] = ()  # inputs below the source directory's top level, and their identity


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class Planner:
    """Plans rows, sharing the work between rows whose sources are the same files. `built` and `shared`
    count plans made and plans reused."""

    def __init__(self) -> None:
        self._known: dict[tuple, Summary] = {}
        self.built = 0
        self.shared = 0

    def summary(self, row: Row) -> Summary:
        """Raises what planning the row raises (ConvertError, OSError, ValueError)."""
        key = self._key(row)
        known = self._known.get(key) if key is not None else None
        if known is not None and self._same_deeper(row.src, known):
            self.shared += 1
            return known
        plan = _plan(row)
        self.built += 1
        expected = Expected.of(plan)
        deeper = tuple((name, _identity(os.stat(row.src / name))) for name, _ in expected.sources
                       if not Path(name).is_absolute() and len(Path(name).parts) > 1)
        made = Summary(expected, estimate(plan, "convert"), estimate(plan, "verify"), deeper)
        if key is not None:
            self._known[key] = made
        return made

    @staticmethod
    def _key(row: Row) -> tuple | None:
        """What the plan depends on: the direction, the options, the config named, and every file at the
        top of the source directory (what it is, not where). None: plan this row on its own."""
        try:
            if not stat.S_ISDIR(os.stat(row.src).st_mode):
                return None
            listing = []
            with os.scandir(row.src) as entries:
                for entry in entries:
                    if len(listing) == MAX_LISTING:
                        return None
                    st = entry.stat()  # through symlinks: a hub snapshot's files are links to blobs
                    if stat.S_ISREG(st.st_mode):
                        listing.append((entry.name, _identity(st)))
            config = (str(row.config), _identity(os.stat(row.config))) if row.config else None
        except OSError:
            return None
        return row.direction, row.options, config, tuple(sorted(listing))

    @staticmethod
    def _same_deeper(src: Path, known: Summary) -> bool:
        try:
            return all(_identity(os.stat(src / name)) == identity for name, identity in known.deeper)
        except OSError:
            return False


def _plan(row: Row):
    if row.direction == "hf2ms":
        return build_plan(open_hf_dir(row.src), row.options)
    return build_ms2hf_plan(open_mindspore(row.src, row.config, row.options.step, row.options.strategy), row.options)
