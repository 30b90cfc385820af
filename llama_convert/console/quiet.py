"""The frameworks' own logging (MindSpore, MindFormers, transformers), kept out of the user's terminal
unless --verbose: decided here, and only here, for the CLI and for library callers alike.

Both libraries read their settings when first imported (MindSpore's C++ log level from GLOG_v,
MindFormers' log directory from LOCAL_DEFAULT_PATH), so this runs before either is imported. A setting
the user exported is kept: they asked for it.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import sys
import tempfile

_QUIET_LEVELS = {"GLOG_v": "3", "MS_SUBMODULE_LOG_v": "{MD:3,ME:3}"}  # 3: errors only
_verbose: bool | None = None   # what the command line asked; None: a library caller, who gets quiet


def settle(verbose: bool) -> None:
    """Quiet by default: errors only from MindSpore, MindFormers' log directory in a temporary place
    removed at exit. --verbose: the libraries' own levels, and their log directory kept and named."""
    global _verbose
    _verbose = verbose
    if verbose:
        # MindSpore's own default level, said out loud: verify quiets an unset GLOG_v for library callers,
        # which would otherwise silence the C++ log that --verbose asked for.
        os.environ.setdefault("GLOG_v", "2")
        return
    _quiet_environment()
    # MindFormers names its logger after its log path and sets it to INFO when first used, so a level set
    # here on a logger would be overwritten; a process-wide floor is not. (Our own messages are not logged.)
    logging.disable(logging.INFO)


def _quiet_environment() -> None:
    """Errors only from MindSpore's C++ log, MindFormers' log directory in a temporary place removed at exit."""
    for key, value in _QUIET_LEVELS.items():
        os.environ.setdefault(key, value)
    if "LOCAL_DEFAULT_PATH" not in os.environ:
        logs = tempfile.mkdtemp(prefix="llama-convert-mindformers-")
        os.environ["LOCAL_DEFAULT_PATH"] = logs
        atexit.register(shutil.rmtree, logs, True)


def verbose() -> bool:
    return bool(_verbose)


def import_mindformers():
    """mindformers (and mindspore), imported the way the rest of the tool expects: quiet unless --verbose
    (a library caller gets the quiet environment, but its own logging is left alone), and with MindFormers'
    logger, which binds a handler to sys.stdout when first imported, pointed at stderr: stdout carries
    only our report (and valid JSON with --json)."""
    if _verbose is None:
        _quiet_environment()
    with contextlib.redirect_stdout(sys.stderr):
        import mindformers.models
    if not _verbose:
        logging.getLogger("mindformers").setLevel(logging.WARNING)
    return mindformers


def import_transformers():
    """transformers, errors only and no progress bars ("Loading checkpoint shards") unless --verbose."""
    import transformers
    if not _verbose:
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    return transformers


@contextlib.contextmanager
def frameworks_quiet():
    """While verify or generate runs the frameworks: their warnings too are kept out unless --verbose
    (MindFormers warns at import that optional models of its own cannot load, `hyper_parallel`, and logs
    INFO lines as it builds and loads a model, under a logger it names after its log path). Errors
    still show. A library caller's own logging is as it was afterwards."""
    if _verbose:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(previous)


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
