"""sha256 of the input and output files, on worker threads beside the copy (conversion.json records them)."""
from __future__ import annotations

import hashlib
import os
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..core.errors import ConvertError


def sha256_of(path: Path, complete: threading.Event | None = None) -> str:
    """sha256 of a file; with `complete`, of a file still being appended to, read behind the writer
    until `complete` is set and the end is reached."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        while True:
            finished = complete is None or complete.is_set()  # before the read: no byte written before is missed
            if n := f.readinto(buf):
                h.update(view[:n])  # hashlib releases the GIL here, so hashes run beside the copying
            elif finished:
                return h.hexdigest()
            else:
                complete.wait(0.005)


class Hashes:
    """sha256 of files, computed on worker threads while the main thread goes on writing. An output
    file is hashed as it grows, so that hashing a 2.4 GB .ckpt does not start only when it is closed."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        # One worker per core (at least two): on a many-core host every file hashes at once, beside the copy.
        workers = max(2, min(16, os.cpu_count() or 2))
        self._pool = ThreadPoolExecutor(max_workers=workers) if enabled else None
        # Followers wait on the writer: queued behind whole-file hashes they would start too late. One
        # each for files written side by side (--parallel's ranks of a stage), or a queued one would
        # start only when the others end, rereading its file from disk.
        self._followers = ThreadPoolExecutor(max_workers=32) if enabled else None  # 8 MiB buffer each
        self._jobs: dict[Path, Future] = {}
        self._growing: dict[Path, threading.Event] = {}

    def follow(self, path: Path) -> None:
        """Start hashing a file that is being written by appends only; submit() says when it is complete."""
        if self.enabled and path not in self._jobs:
            self._growing[path] = threading.Event()
            self._jobs[path] = self._followers.submit(sha256_of, path, self._growing[path])

    def submit(self, path: Path) -> None:
        """The file is complete: hash it, or let its follower finish."""
        if path in self._growing:
            self._growing[path].set()
        elif self.enabled and path not in self._jobs:
            self._jobs[path] = self._pool.submit(sha256_of, path)

    def record(self, path: Path, name: str | None = None) -> dict:
        self.submit(path)
        digest = self._jobs[path].result() if self.enabled else None
        return {"name": name or path.name, "size": path.stat().st_size, "sha256": digest}

    def check_hub_blobs(self, paths: list[Path]) -> None:
        """A source file in a HF hub cache snapshot is a link to a blob named by its sha256 (LFS files);
        the hub does not check downloads, so a digest that differs from the name is a corrupt download.
        Without hashes (--no-hash) nothing is checked."""
        if not self.enabled:
            return
        for path in paths:
            expected = hub_blob_sha256(path)
            if expected is not None and (got := self.record(path)["sha256"]) != expected:
                raise ConvertError(path, f"corrupt download: its sha256 is {got[:12]}..., but the hub cache "
                                   f"names the blob {expected[:12]}...", "delete the blob and download the model again")

    def close(self) -> None:
        for complete in self._growing.values():
            complete.set()  # a failed run must not leave followers polling
        for pool in (self._pool, self._followers):
            if pool:
                pool.shutdown(wait=False, cancel_futures=True)


_SHA256 = re.compile(r"[0-9a-f]{64}")


def hub_blob_sha256(path: Path) -> str | None:
    """The sha256 a HF hub cache promises for `path`: `.../models--ORG--NAME/snapshots/COMMIT/FILE` is a
    symlink into `.../models--ORG--NAME/blobs/`, and LFS blobs are named by their sha256 (small git
    files by a 40-digit git hash, which promises nothing about sha256). None when `path` is not one."""
    path = Path(path)
    if not path.is_symlink():
        return None
    parts = path.absolute().parts
    if "snapshots" not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index("snapshots")
    if at < 1 or not parts[at - 1].startswith(("models--", "datasets--", "spaces--")):
        return None
    blob = path.resolve()
    repo = Path(*parts[:at]).resolve()
    if blob.parent != repo / "blobs" or not _SHA256.fullmatch(blob.name):
        return None
    return blob.name
