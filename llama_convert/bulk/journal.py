"""The append-only journal of a bulk run and the report made from it.

Every event is one JSON line, appended and fsynced before the driver goes on, so a driver killed at
any moment loses nothing it had learned; a line torn by the kill is ignored. The report
(bulk-report.json) lists every row of the run, finished or not, and is replaced atomically.
"""
from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from collections import Counter
from pathlib import Path

from ..core.errors import ConvertError
from ..formats.files import open_input

# verified: the conversion was done before and only verify ran now, and passed.
FINISHED = ("converted", "verified", "skipped", "failed", "verify_failed", "invalid")
# A row the run has not finished: not started yet, running when the report was written, or stopped
# by an interrupted driver. --retry-failed runs these again.
UNFINISHED = ("not_started", "running", "interrupted")
STATUSES = FINISHED + UNFINISHED
_FAILURES_FIRST = {s: i for i, s in enumerate(("invalid", "failed", "verify_failed", "interrupted", "running",
                                               "not_started", "converted", "verified", "skipped"))}
MAX_EVENT_BYTES = 1 << 20   # a journal line longer than this was not written by us


def journal_path(report: Path) -> Path:
    return report.with_name(report.name + ".journal")


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_NONBLOCK: a FIFO put where the journal goes fails to open instead of waiting for a reader.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(self._fd).st_mode):
                raise ConvertError(self.path, "the bulk journal is not a regular file", "give the run its own --report")
            os.set_blocking(self._fd, True)
            # two drivers on one report would each skip what the other is still writing
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ConvertError(self.path, "another bulk run is using this journal",
                               "wait for it to finish, or give this run its own --report") from None
        except BaseException:
            os.close(self._fd)
            raise

    def append(self, *events: dict) -> None:
        """Append events with one write and one fsync (a batch of skipped rows costs one, not thousands)."""
        now = round(time.time(), 3)
        data = "".join(json.dumps({"time": now, **e}) + "\n" for e in events).encode()
        view = memoryview(data)
        while view:  # O_APPEND: each write lands at the end, whole lines of one run never interleave
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def verified_outputs(path: Path) -> set[tuple[str, str]]:
    """(out, sha256 of its conversion.json) of every conversion the journal says passed verify. Read a
    line at a time and keeping only these pairs: a journal grows with every run, and it is input too."""
    if not os.path.lexists(path):
        return set()
    found = set()
    with open_input(path, "bulk journal") as f:
        while line := f.readline(MAX_EVENT_BYTES):
            if not line.endswith(b"\n") and len(line) == MAX_EVENT_BYTES:
                while (rest := f.readline(MAX_EVENT_BYTES)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of an overlong line
                continue
            try:
                e = json.loads(line)
            except (ValueError, RecursionError):
                continue  # the last line of a driver killed mid-write
            if (isinstance(e, dict) and e.get("event") == "row" and isinstance(e.get("verify"), dict)
                    and e["verify"].get("passed") is True and isinstance(e.get("out"), str)
                    and isinstance(e.get("record_sha256"), str)):
                found.add((e["out"], e["record_sha256"]))
    return found


def exit_code(rows: list[dict]) -> int:
    """0: every row converted or skipped; 1: a verify failed (and nothing worse); 2: a row failed or was
    invalid. Rows not finished do not count: an interrupted run exits 130 / 143 whatever its report says."""
    statuses = {r["status"] for r in rows}
    if statuses & {"failed", "invalid"}:
        return 2
    return 1 if "verify_failed" in statuses else 0


def build_report(rows: list[dict], meta: dict) -> dict:
    counts = Counter(r["status"] for r in rows)
    return {**meta, "rows_total": len(rows), "rows_finished": sum(counts[s] for s in FINISHED),
            "counts": {s: counts[s] for s in STATUSES}, "exit_code": exit_code(rows), "rows": rows}


def write_report(path: Path, report: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def verify_cell(verify: dict | None) -> str:
    """A row's verify result in a few characters: the verdict and the numbers a reader scans for."""
    if not isinstance(verify, dict):
        return "-"
    if not verify.get("passed"):
        return f"FAIL at {verify.get('first_divergent_layer') or 'see reason'}"
    parts = ["PASS"]
    if isinstance(verify.get("logits_ratio"), (int, float)):
        parts.append(f"ratio {verify['logits_ratio']:.2f}")
    if isinstance(verify.get("max_abs_diff"), (int, float)):
        parts.append(f"max_abs {verify['max_abs_diff']:.1e}")
    if isinstance(verify.get("top1_agreement"), (int, float)):
        parts.append(f"top1 {verify['top1_agreement']:.3f}")
    return " ".join(parts)


def table_text(report: dict) -> str:
    rows = sorted(report["rows"], key=lambda r: _FAILURES_FIRST.get(r["status"], 9))
    head = ("id", "status", "secs", "attempts", "verify", "reason")
    cells = [(r["id"], r["status"], f"{sum((r.get('seconds') or {}).values()):.1f}", str(r.get("attempts", 0)),
              verify_cell(r.get("verify")), r.get("reason") or "") for r in rows]
    n = len(head) - 1
    widths = [max(len(c[i]) for c in cells + [head]) for i in range(n)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head[:n], widths)) + "  " + head[n]]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell[:n], widths)) + "  " + cell[n] for cell in cells]
    counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items() if n)
    lines.append(f"{report['rows_finished']}/{report['rows_total']} rows: {counts or 'none'}")
    return "\n".join(lines)
