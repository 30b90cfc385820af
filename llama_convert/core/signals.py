"""SIGTERM as an exception, as SIGINT is KeyboardInterrupt: cleanup (a partial output removed) runs on the way out."""
from __future__ import annotations


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt is for SIGINT, so that cleanup runs before the process ends."""

    exit_code = 143


def raise_terminated(signum: int, frame) -> None:
    raise Terminated()
