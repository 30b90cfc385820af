"""The sha256 floor of a default conversion: every input and output byte hashed at OpenSSL speed on two cores.

    python bench/sha256_floor.py DIR

Starts two processes side by side, each hashing every *.safetensors file in DIR: a conversion writes
as many bytes as it reads, so that is the sha256 work of hashing its input and its output. Each process
maps the files and hands the whole mapping to hashlib (OpenSSL), with no read() copy, so it runs at
`openssl speed sha256`'s rate: the tightest floor a hashing conversion can be held to.
"""
from __future__ import annotations

import hashlib
import mmap
import subprocess
import sys
from pathlib import Path


def hash_all(folder: Path) -> None:
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            hashlib.sha256(m).hexdigest()


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        hash_all(Path(sys.argv[2]))
        return
    procs = [subprocess.Popen([sys.executable, __file__, "--one", sys.argv[1]]) for _ in range(2)]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    main()
