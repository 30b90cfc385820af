"""A bulk run from start to end: read and check the manifest, plan every row (headers only), decide what is
done, admit by memory, hand the rest to an executor, and journal every result as it comes."""
from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.sizes import human_bytes
from ..core.errors import ConvertError
from ..formats.files import parse_json_object, read_small
from ..core.signals import Terminated
from .done import not_done_reason
from .journal import UNFINISHED, Journal, build_report, journal_path, table_text, verified_outputs, write_report
from .manifest import Row, read_manifest
from .memory import default_budget
from .options import EXECUTORS, BulkOptions
from .overlap import REPORT, RETRY
from .planner import Planner
from .runner import Task, record_sha256

_RERUN = ("failed", "verify_failed", "invalid", *UNFINISHED)
MAX_REPORT_SHARE = 0.05   # of the run's time spent rewriting the report (thousands of rows make it megabytes)


@dataclass
class PlannedRow:
    row: Row
    action: str            # "convert" (and verify if asked), "verify" (conversion done), "skip", "invalid"
    reason: str
    memory: int = 0
    plan_seconds: float = 0.0


def plan_rows(manifest: Path, rows: list[Row], force: bool, verified: set[tuple[str, str]],
              planner: Planner | None = None) -> list[PlannedRow]:
    """What each row needs, from headers and OUT's conversion.json; a row that is wrong in the manifest or
    whose source cannot be planned is invalid, named by its line (the others go on)."""
    planner = planner or Planner()
    planned = []
    for row in rows:
        if row.problem:
            planned.append(PlannedRow(row, "invalid", row.problem))
            continue
        start = time.perf_counter()
        try:
            summary = planner.summary(row)
            why = "--force" if force else not_done_reason(summary.expected, row.src, row.out)
        except (ConvertError, OSError, ValueError) as e:
            text = e.one_line() if isinstance(e, ConvertError) else f"{getattr(e, 'filename', '') or row.src}: {e}"
            planned.append(PlannedRow(row, "invalid", f"{manifest}: {row.where}: {text}", 0,
                                      time.perf_counter() - start))
            continue
        need = {"convert": summary.convert_memory, "verify": summary.verify_memory if row.verify else 0}
        if why is not None:
            action, reason = "convert", why
        elif row.verify and (str(row.out), record_sha256(row.out)) not in verified:
            action, reason, need["convert"] = "verify", "converted, not yet verified", 0
        else:
            action, reason = "skip", "done (conversion.json matches)" + (" and verified" if row.verify else "")
        planned.append(PlannedRow(row, action, reason, max(need.values()), time.perf_counter() - start))
    return planned


def _spec(p: PlannedRow) -> dict:
    r = p.row
    return {"id": r.id, "src": str(r.src), "out": str(r.out), "config": str(r.config) if r.config else None,
            "direction": r.direction, "options": r.options.as_dict(), "convert": p.action == "convert",
            "verify": r.verify}


def _base(r: Row, memory: int = 0) -> dict:
    return {"id": r.id, "src": str(r.src) if r.src else None, "out": str(r.out) if r.out else None,
            "direction": r.direction, "memory_estimate": memory, **r.notes}


def _carried_rows(path: Path) -> dict[str, dict]:
    what, hint = "earlier bulk report", "give the bulk-report.json of an earlier run"
    report = parse_json_object(read_small(path, what, hint), path, what, hint)
    rows = report.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), str)
                                             and isinstance(r.get("status"), str) for r in rows):
        raise ConvertError(path, "is not a bulk report: it has no list of rows with an id and a status", hint)
    try:  # carried into this run's report, which is written with indent (pure-Python json: deep recursion)
        json.dumps(rows, indent=1)
    except RecursionError:
        raise ConvertError(path, f"{what} is nested too deeply to be what it claims", hint) from None
    return {r["id"]: r for r in rows}


def report_path(manifest: Path, options: BulkOptions) -> Path:
    return Path(options.report).absolute() if options.report else Path(manifest).absolute().parent / "bulk-report.json"


def _run_files(manifest: Path, options: BulkOptions) -> list[tuple[Path, str, str]]:
    """The files the run writes (report, journal) and reads besides the manifest (an earlier report),
    each checked to be something a file can be written to, for the manifest's overlap check."""
    report = report_path(manifest, options)
    named = []
    for path, what in ((report, "--report" if options.report else "the report"), (journal_path(report), "the journal")):
        _check_writable_file(path, what)
        named.append((path, REPORT, what))
    if options.retry_failed:
        named.append((Path(options.retry_failed).absolute(), RETRY, "--retry-failed"))
    return named


def _check_writable_file(path: Path, what: str) -> None:
    hint = "give --report a file name, e.g. bulk-report.json"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ConvertError(path, f"{what}: {e.strerror}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise ConvertError(path, f"{what} is a directory", hint)
        if not stat.S_ISREG(st.st_mode):
            raise ConvertError(path, f"{what} is not a regular file", hint)
        return
    for parent in path.parents:
        if os.path.exists(parent):
            if not os.path.isdir(parent):
                raise ConvertError(path, f"{what} cannot be written: {parent} is a file, not a directory", hint)
            return


def prepare(manifest: Path, options: BulkOptions, planner: Planner | None = None, fetch: bool = True
            ) -> tuple[list[PlannedRow], dict[str, dict]]:
    """`fetch`: rows that say `download` fetch a hub repo the cache lacks (a dry run passes False)."""
    manifest = Path(manifest).absolute()
    rows, carried = _read(manifest, options, fetch)
    verified = verified_outputs(journal_path(report_path(manifest, options)))
    return plan_rows(manifest, rows, options.force, verified, planner), carried


def _read(manifest: Path, options: BulkOptions, fetch: bool = True) -> tuple[list[Row], dict[str, dict]]:
    """The rows this run is to run (all, or those an earlier report did not finish), and the rows that
    report carries over as they were."""
    rows = read_manifest(manifest, options.defaults, _run_files(manifest, options), fetch)
    if not options.retry_failed:
        return rows, {}
    before = _carried_rows(Path(options.retry_failed))
    again = {i for i, r in before.items() if r["status"] in _RERUN}
    carried = {i: r for i, r in before.items() if i not in again}
    return [r for r in rows if r.id in again or r.id not in before], carried


def dry_run(manifest: Path, options: BulkOptions) -> dict:
    planner = Planner()
    planned, _ = prepare(manifest, options, planner, fetch=False)
    budget = options.memory_budget or default_budget()
    rows = []
    for p in planned:
        action, reason = p.action, p.reason
        if action in ("convert", "verify") and p.memory > budget:
            action, reason = "fail", f"needs {human_bytes(p.memory, 2)}; the memory budget is {human_bytes(budget, 2)}"
        rows.append({**_base(p.row, p.memory), "action": action, "reason": reason})
    # The exit status the run would end with as far as can be known without running: 2 when a row is
    # invalid or can never fit.
    failing = any(r["action"] in ("invalid", "fail") for r in rows)
    return {"dry_run": True, "manifest": str(Path(manifest).absolute()), "memory_budget": budget,
            "plans": {"built": planner.built, "shared": planner.shared}, "exit_code": 2 if failing else 0,
            "rows": rows}


class _Report:
    """The report of one run: every row, finished or not, rewritten as rows finish, but never so often
    that writing it (megabytes for thousands of rows) costs more than a small share of the run."""

    def __init__(self, path: Path, meta: dict, rows: list[Row], carried: dict[str, dict]):
        self.path, self.meta = path, meta
        self.rows = {**carried, **{r.id: {**_base(r), "status": "not_started"} for r in rows if r.id not in carried}}
        self._started = time.perf_counter()
        self._spent = 0.0

    def set(self, row_id: str, row: dict) -> None:
        self.rows[row_id] = row

    def mark(self, row_id: str, status: str) -> None:
        if self.rows[row_id]["status"] in UNFINISHED:
            self.rows[row_id] = {**self.rows[row_id], "status": status}

    def report(self, **extra) -> dict:
        return {**build_report(list(self.rows.values()), self.meta), **extra}

    def write(self, now: bool = False, **extra) -> None:
        if not now and self._spent > MAX_REPORT_SHARE * (time.perf_counter() - self._started):
            return
        start = time.perf_counter()
        write_report(self.path, self.report(**extra))
        self._spent += time.perf_counter() - start


def _stopped(e: BaseException) -> tuple[str, int]:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (SIGINT)", 130
    if isinstance(e, Terminated):
        return "terminated (SIGTERM)", 143
    if isinstance(e, (ConvertError, OSError)):
        return f"stopped: {e}", 2
    return f"stopped by an internal error: {type(e).__name__}", 3


def run_bulk(manifest: Path, options: BulkOptions, on_row: Callable[[int, int, dict], None] | None = None,
             on_phase: Callable[[str, str], None] | None = None) -> dict:
    """Run the manifest; returns the report (also written to options.report or beside the manifest).
    `on_row(k, n, row)` hears each finished row; `on_phase(id, phase)` each row as it starts ("running")
    and, with the local executor, each of its phases ("convert", "verify")."""
    if options.executor not in EXECUTORS:
        raise ConvertError(None, f"--executor {options.executor!r}; choose local or ray")
    manifest = Path(manifest).absolute()
    report_file = report_path(manifest, options)
    rows, carried = _read(manifest, options)
    journal = Journal(journal_path(report_file))
    run = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    meta = {"manifest": str(manifest), "executor": options.executor, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "run": run, "report": str(report_file)}
    report = _Report(report_file, meta, rows, carried)
    count = [0]

    def record(batch: list[tuple[PlannedRow, dict, int]]) -> None:
        events = []
        for p, result, attempts in batch:
            seconds = {"plan": round(p.plan_seconds, 3), **(result.get("seconds") or {})}
            events.append({"event": "row", "run": run, **_base(p.row, p.memory), "attempts": attempts, **result,
                           "seconds": seconds})
        journal.append(*events)
        for event in events:
            report.set(event["id"], {k: v for k, v in event.items() if k not in ("event", "run", "time")})
        report.write()
        for event in events:
            count[0] += 1
            if on_row:
                on_row(count[0], len(rows), event)

    try:
        report.write(now=True)  # every row, not started: a run stopped while planning still leaves a report
        journal.append({"event": "start", "run": run, "manifest": str(manifest), "rows": len(rows),
                        "executor": options.executor})
        planned = plan_rows(manifest, rows, options.force, verified_outputs(journal.path))
        by_id = {p.row.id: p for p in planned}
        budget = options.memory_budget or default_budget()
        instant, tasks = [], []
        for p in planned:
            if p.action == "skip":
                instant.append((p, {"status": "skipped", "reason": p.reason, "exit_code": 0}, 0))
            elif p.action == "invalid":
                instant.append((p, {"status": "invalid", "reason": p.reason, "exit_code": 2}, 0))
            elif options.executor == "local" and p.memory > budget:
                instant.append((p, {"status": "failed", "exit_code": None,
                                    "reason": f"needs {human_bytes(p.memory, 2)}; the memory budget is {human_bytes(budget, 2)} "
                                              f"(--memory-budget)"}, 0))
            else:
                tasks.append(Task(_spec(p), p.memory))
        if instant:
            record(instant)

        def finished(task: Task, result: dict) -> None:
            result = {k: v for k, v in result.items() if k != "retryable"}
            if task.spec["convert"] is False and result["status"] == "converted":
                result["status"] = "verified"  # the conversion was done before; verify ran now, and passed
            record([(by_id[task.spec["id"]], result, task.attempts)])

        def started(task: Task) -> None:
            report.mark(task.spec["id"], "running")
            if on_phase:
                on_phase(task.spec["id"], "running")

        def retrying(task: Task, result: dict) -> None:
            journal.append({"event": "retry", "run": run, "id": task.spec["id"], "attempt": task.attempts,
                            "reason": result.get("reason")})

        if options.executor == "local":
            from .local import run_local
            run_local(tasks, options.jobs or os.cpu_count() or 1, budget, options.retries, options.timeout,
                      finished, started, retrying,
                      (lambda task, name: on_phase(task.spec["id"], name)) if on_phase else None)
        elif tasks:
            from .ray_exec import run_ray
            run_ray(tasks, options.jobs, options.retries, options.timeout, finished, options.ray_address,
                    started, retrying)
        journal.append({"event": "end", "run": run})
    except BaseException as e:
        why, code = _stopped(e)
        for row_id, row in report.rows.items():
            if row["status"] == "running":
                report.mark(row_id, "interrupted")
        try:
            journal.append({"event": "stopped", "run": run, "reason": why})
            report.write(now=True, stopped=why, finished=time.strftime("%Y-%m-%dT%H:%M:%S"), exit_code=code)
        except (OSError, ValueError):
            pass  # the original error is the one to tell
        raise
    finally:
        journal.close()
    final = report.report(finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_report(report_file, final)
    return final


__all__ = ["BulkOptions", "dry_run", "run_bulk", "table_text"]
