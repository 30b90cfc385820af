"""Paths as users' file systems hold them: resolved without ever looping.

A symlink that leads back to itself (`out -> out`, or a loop in a parent) makes pathlib's resolve()
raise RuntimeError("Symlink loop ...") on Python 3.11 and OSError(ELOOP) on later versions; either
is bad input, named here once as such.
"""
from __future__ import annotations

import errno
from pathlib import Path

from .errors import ConvertError


def loop_error(path: Path) -> ConvertError:
    return ConvertError(path, "is a symbolic link loop: following it leads back to itself and never to a file",
                        "point the link at a real directory, or give the real path")


def resolved(path: Path) -> Path:
    """path.resolve(), with a symlink loop anywhere along it refused by name."""
    try:
        return Path(path).resolve()
    except RuntimeError as e:  # Python < 3.13's report of a loop
        if "loop" not in str(e).lower():
            raise
        raise loop_error(path) from None
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise loop_error(path) from None
