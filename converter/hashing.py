"""sha256 of the input and output files, on worker threads beside the copy (conversion.json records them)."""
from __future__ import annotations

import hashlib
import mmap
import os
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .errors import ConvertError


# Bytes hashed per mapping: large enough that mapping costs nothing, small enough to stay a few
# tensors' worth of address space.
WINDOW = 64 << 20


def sha256_of(path: Path, complete: threading.Event | None = None) -> str:
    """sha256 of a file; with `complete`, of a file still being appended to, read behind the writer
    until `complete` is set and the end is reached.

    The file is hashed through mmap windows rather than read(): hashing then reads the page cache in
    place, where read() would first copy every byte into a buffer. On two cores that copy is ~15% of
    the CPU a default (hashing) conversion spends."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        done = 0
        while True:
            finished = complete is None or complete.is_set()  # before the size: no byte written before is missed
            size = os.fstat(f.fileno()).st_size
            # Behind a writer, hash whole pages only, so that every window starts on a page boundary.
            end = size if finished else size - size % mmap.ALLOCATIONGRANULARITY
            if end > done:
                n = min(end - done, WINDOW)
                if done == 0:
                    _read_ahead(f.fileno(), 0, n)
                _read_ahead(f.fileno(), done + n, WINDOW)  # from disk, the next window loads while this one hashes
                with mmap.mmap(f.fileno(), n, offset=done, access=mmap.ACCESS_READ) as m, memoryview(m) as v:
                    h.update(v)  # hashlib releases the GIL here, so hashes run beside the copying
                done += n
            elif finished:
                return h.hexdigest()
            else:
                complete.wait(0.005)


def _read_ahead(fd: int, offset: int, length: int) -> None:
    # A mapping faults pages in one small read-around at a time; read() would have had the kernel's
    # sequential readahead. Asking for the range up front gives a cold file the same.
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)


class Hashes:
    """sha256 of files, computed on worker threads while the main thread goes on writing. An output
    file is hashed as it grows, so that hashing a 2.4 GB .ckpt does not start only when it is closed."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        # One worker per core (at least two): on a many-core host every file hashes at once, beside the copy.
        workers = max(4, min(16, 2 * (os.cpu_count() or 2)))
        self._pool = ThreadPoolExecutor(max_workers=workers, initializer=_yield_to_the_writer) if enabled else None
        # Followers wait on the writer: queued behind whole-file hashes they would start too late.
        self._followers = ThreadPoolExecutor(max_workers=workers) if enabled else None
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


def _yield_to_the_writer() -> None:
    """Lower this thread's CPU priority. A complete file can be hashed at any time, but the output's
    followers can only trail the writer: when hashing the input takes cores from the writer and its
    followers, the run ends with followers alone hashing the last output bytes on one core. Linux
    gives each thread its own nice value; elsewhere this does nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


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
