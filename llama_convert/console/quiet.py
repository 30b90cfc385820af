"""MindSpore's and MindFormers' own logging, kept out of the user's terminal unless --verbose.

Both libraries read their settings when first imported (MindSpore's C++ log level from GLOG_v,
MindFormers' log directory from LOCAL_DEFAULT_PATH), so this runs before either is imported. A setting
the user exported is kept: they asked for it.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

_QUIET_LEVELS = {"GLOG_v": "3", "MS_SUBMODULE_LOG_v": "{MD:3,ME:3}"}  # 3: errors only


def settle(verbose: bool) -> None:
    """Quiet by default: errors only from MindSpore, MindFormers' log directory in a temporary place
    removed at exit. --verbose: the libraries' own levels, and their log directory kept and named."""
    if verbose:
        # MindSpore's own default level, said out loud: verify quiets an unset GLOG_v for library callers,
        # which would otherwise silence the C++ log that --verbose asked for.
        os.environ.setdefault("GLOG_v", "2")
        return
    for key, value in _QUIET_LEVELS.items():
        os.environ.setdefault(key, value)
    if "LOCAL_DEFAULT_PATH" not in os.environ:
        logs = tempfile.mkdtemp(prefix="llama-convert-mindformers-")
        os.environ["LOCAL_DEFAULT_PATH"] = logs
        atexit.register(shutil.rmtree, logs, True)
    # MindFormers names its logger after its log path and sets it to INFO when first used, so a level set
    # here on a logger would be overwritten; a process-wide floor is not. (Our own messages are not logged.)
    logging.disable(logging.INFO)


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries the conversion and verify depend on, read from package
    metadata (importing mindspore only to ask would cost seconds)."""
    from importlib import metadata
    found: dict[str, str | None] = {}
    for name in ("mindspore", "mindformers", "transformers", "torch"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
