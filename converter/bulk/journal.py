"""The append-only journal of a bulk run and the report made from it.

Every event is one JSON line, appended and fsynced before the driver goes on, so a driver killed at
any moment loses nothing it had learned; a line torn by the kill is ignored. The report
(bulk-report.json) is rebuilt from the journal after every row and replaced atomically.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from ..errors import ConvertError

STATUSES = ("converted", "skipped", "failed", "verify_failed", "invalid")
_FAILURES_FIRST = {"invalid": 0, "failed": 1, "verify_failed": 2, "converted": 3, "skipped": 4}


def journal_path(report: Path) -> Path:
    return report.with_name(report.name + ".journal")


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:  # two drivers on one report would each skip what the other is still writing
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ConvertError(self.path, "another bulk run is using this journal",
                               "wait for it to finish, or give this run its own --report") from None

    def append(self, event: dict) -> None:
        line = (json.dumps({"time": round(time.time(), 3), **event}) + "\n").encode()
        os.write(self._fd, line)  # one write with O_APPEND: lines of one run never interleave
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def read_events(path: Path) -> list[dict]:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a driver killed mid-write
        if isinstance(event, dict):
            events.append(event)
    return events


def verified(events: list[dict], out: str, record_sha256: str | None) -> bool:
    """Whether this very conversion (by the hash of its conversion.json) has passed verify before."""
    return record_sha256 is not None and any(
        e.get("event") == "row" and e.get("out") == out and e.get("record_sha256") == record_sha256
        and (e.get("verify") or {}).get("passed") is True for e in events)


def report_rows(events: list[dict], run: str) -> dict[str, dict]:
    """Each row's last word in this run: one entry per row, however often it was attempted."""
    rows: dict[str, dict] = {}
    for e in events:
        if e.get("event") == "row" and e.get("run") == run:
            rows[e["id"]] = {k: v for k, v in e.items() if k not in ("event", "run", "time", "retryable")}
    return rows


def exit_code(rows: list[dict]) -> int:
    statuses = {r["status"] for r in rows}
    if statuses & {"failed", "invalid"}:
        return 2
    return 1 if "verify_failed" in statuses else 0


def build_report(events: list[dict], run: str, order: list[str], carried: dict[str, dict] | None = None,
                 meta: dict | None = None) -> dict:
    done = {**(carried or {}), **report_rows(events, run)}
    rows = [done[i] for i in order if i in done]
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in STATUSES}
    return {**(meta or {}), "run": run, "rows_total": len(order), "rows_finished": len(rows), "counts": counts,
            "exit_code": exit_code(rows), "rows": rows}


def write_report(path: Path, report: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def table_text(report: dict) -> str:
    rows = sorted(report["rows"], key=lambda r: _FAILURES_FIRST.get(r["status"], 9))
    head = ("id", "status", "secs", "attempts", "reason")
    cells = [(r["id"], r["status"], f"{sum((r.get('seconds') or {}).values()):.1f}", str(r.get("attempts", 0)),
              r.get("reason") or "") for r in rows]
    widths = [max(len(c[i]) for c in cells + [head]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head[:4], widths)) + "  " + head[4]]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell[:4], widths)) + "  " + cell[4] for cell in cells]
    counts = ", ".join(f"{n} {s}" for s, n in report["counts"].items() if n)
    lines.append(f"{report['rows_finished']}/{report['rows_total']} rows: {counts or 'none'}")
    return "\n".join(lines)
