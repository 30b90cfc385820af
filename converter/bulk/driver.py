"""A bulk run from start to end: read the manifest, plan every row (headers only), decide what is done,
admit by memory, hand the rest to an executor, and journal every result as it comes."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ConvertError
from ..hf_source import open_hf_dir
from ..ms_source import open_ms_dir
from ..plan import build_ms2hf_plan, build_plan
from .done import not_done_reason
from .journal import Journal, build_report, journal_path, read_events, table_text, verified, write_report
from .manifest import Row, read_manifest
from .memory import default_budget, estimate, gib
from .runner import Task, convert_args, record_sha256, verify_args

EXECUTORS = ("local", "ray")
_RERUN = ("failed", "verify_failed", "invalid")


@dataclass
class BulkOptions:
    jobs: int | None = None               # None: the CPU count (local); Ray: as many as the cluster holds
    executor: str = "local"
    ray_address: str | None = None        # None: start a local Ray instance
    retries: int = 1                      # for signals, timeouts and I/O errors only
    memory_budget: int | None = None      # bytes; None: a safe share of available memory
    report: Path | None = None            # None: bulk-report.json beside the manifest
    force: bool = False                   # redo rows that are done
    timeout: float | None = None          # seconds per phase of a row
    retry_failed: Path | None = None      # an earlier report: run only its failed rows
    defaults: dict = field(default_factory=dict)  # row options from the command line (lowest precedence)


@dataclass
class PlannedRow:
    row: Row
    action: str            # "convert" (and verify if asked), "verify" (conversion done), "skip", "invalid"
    reason: str
    memory: int = 0
    plan_seconds: float = 0.0


def _plan(row: Row):
    if row.direction == "hf2ms":
        return build_plan(open_hf_dir(row.src), row.options)
    return build_ms2hf_plan(open_ms_dir(row.src, row.config), row.options)


def plan_rows(rows: list[Row], force: bool, events: list[dict]) -> list[PlannedRow]:
    """What each row needs, from headers and OUT's conversion.json; a row whose source cannot be planned
    is invalid (the others go on)."""
    planned = []
    for row in rows:
        start = time.perf_counter()
        try:
            plan = _plan(row)
        except (ConvertError, OSError, ValueError) as e:
            text = e.one_line() if isinstance(e, ConvertError) else f"{getattr(e, 'filename', '') or row.src}: {e}"
            planned.append(PlannedRow(row, "invalid", text, 0, time.perf_counter() - start))
            continue
        need = {"convert": estimate(plan, "convert"), "verify": estimate(plan, "verify") if row.verify else 0}
        why = "--force" if force else not_done_reason(plan, row.out)
        if why is not None:
            action, reason = "convert", why
        elif row.verify and not verified(events, str(row.out), record_sha256(row.out)):
            action, reason, need["convert"] = "verify", "converted, not yet verified", 0
        else:
            action, reason = "skip", "done (conversion.json matches)" + (" and verified" if row.verify else "")
        planned.append(PlannedRow(row, action, reason, max(need.values()), time.perf_counter() - start))
    return planned


def _spec(p: PlannedRow) -> dict:
    r = p.row
    src, out, config = str(r.src), str(r.out), str(r.config) if r.config else None
    return {"id": r.id, "src": src, "out": out, "direction": r.direction, "convert": p.action == "convert",
            "verify": r.verify, "convert_args": convert_args(r.direction, src, out, r.options.as_dict(), config),
            "verify_args": verify_args(r.direction, src, out)}


def _base(p: PlannedRow) -> dict:
    r = p.row
    return {"id": r.id, "src": str(r.src), "out": str(r.out), "direction": r.direction,
            "memory_estimate": p.memory, **r.notes}


def _carried_rows(path: Path) -> dict[str, dict]:
    try:
        report = json.loads(Path(path).read_text())
        return {r["id"]: r for r in report["rows"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConvertError(path, f"cannot read an earlier bulk report: {getattr(e, 'strerror', None) or e}",
                           "give the bulk-report.json of an earlier run") from None


def prepare(manifest: Path, options: BulkOptions) -> tuple[list[PlannedRow], dict[str, dict], list[dict]]:
    manifest = Path(manifest).absolute()
    rows = read_manifest(manifest, options.defaults)
    carried: dict[str, dict] = {}
    if options.retry_failed:
        before = _carried_rows(options.retry_failed)
        again = {i for i, r in before.items() if r.get("status") in _RERUN}
        carried = {i: r for i, r in before.items() if i not in again}
        rows = [r for r in rows if r.id in again or r.id not in before]
    events = read_events(journal_path(report_path(manifest, options)))
    return plan_rows(rows, options.force, events), carried, events


def report_path(manifest: Path, options: BulkOptions) -> Path:
    return Path(options.report).absolute() if options.report else Path(manifest).absolute().parent / "bulk-report.json"


def dry_run(manifest: Path, options: BulkOptions) -> dict:
    planned, _, _ = prepare(manifest, options)
    budget = options.memory_budget or default_budget()
    rows = []
    for p in planned:
        action, reason = p.action, p.reason
        if action in ("convert", "verify") and p.memory > budget:
            action, reason = "fail", f"needs {gib(p.memory)}; the memory budget is {gib(budget)}"
        rows.append({**_base(p), "action": action, "reason": reason})
    return {"dry_run": True, "manifest": str(Path(manifest).absolute()), "memory_budget": budget, "rows": rows}


def run_bulk(manifest: Path, options: BulkOptions, on_row: Callable[[int, int, dict], None] | None = None,
             on_start: Callable[[str], None] | None = None) -> dict:
    """Run the manifest; returns the report (also written to options.report or beside the manifest)."""
    if options.executor not in EXECUTORS:
        raise ConvertError(None, f"--executor {options.executor!r}; choose local or ray")
    manifest = Path(manifest).absolute()
    report_file = report_path(manifest, options)
    planned, carried, _ = prepare(manifest, options)
    journal = Journal(journal_path(report_file))
    run = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    order = [*carried, *[p.row.id for p in planned if p.row.id not in carried]]
    meta = {"manifest": str(manifest), "executor": options.executor, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    by_id = {p.row.id: p for p in planned}
    count, mine = [0], []

    def record(p: PlannedRow, result: dict, attempts: int) -> None:
        seconds = {"plan": round(p.plan_seconds, 3), **(result.get("seconds") or {})}
        event = {"event": "row", "run": run, **_base(p), "attempts": attempts, **result, "seconds": seconds}
        journal.append(event)
        mine.append(event)
        report = build_report(mine, run, order, carried, meta)
        write_report(report_file, report)
        count[0] += 1
        if on_row:
            on_row(count[0], len(planned), event)

    try:
        journal.append({"event": "start", "run": run, "manifest": str(manifest), "rows": len(planned),
                        "executor": options.executor})
        budget = options.memory_budget or default_budget()
        tasks = []
        for p in planned:
            if p.action == "skip":
                record(p, {"status": "skipped", "reason": p.reason, "exit_code": 0}, 0)
            elif p.action == "invalid":
                record(p, {"status": "invalid", "reason": p.reason, "exit_code": 2}, 0)
            elif options.executor == "local" and p.memory > budget:
                record(p, {"status": "failed", "exit_code": None,
                           "reason": f"needs {gib(p.memory)}; the memory budget is {gib(budget)} "
                                     f"(--memory-budget)"}, 0)
            else:
                p.row.out.parent.mkdir(parents=True, exist_ok=True)  # OUT_ROOT/ORG--NAME: the root may be new
                tasks.append(Task(_spec(p), p.memory))

        def finished(task: Task, result: dict) -> None:
            result = {k: v for k, v in result.items() if k != "retryable"}
            if task.spec["convert"] is False and result["status"] == "converted":
                result["status"] = "skipped"  # the conversion was done before; only verify ran now
            record(by_id[task.spec["id"]], result, task.attempts)

        def retrying(task: Task, result: dict) -> None:
            journal.append({"event": "retry", "run": run, "id": task.spec["id"], "attempt": task.attempts,
                            "reason": result.get("reason")})

        started = (lambda t: on_start(t.spec["id"])) if on_start else None
        if options.executor == "local":
            from .local import run_local
            run_local(tasks, options.jobs or os.cpu_count() or 1, budget, options.retries, options.timeout,
                      finished, started, retrying)
        elif tasks:
            from .ray_exec import run_ray
            run_ray(tasks, options.jobs, options.retries, options.timeout, finished, options.ray_address,
                    started, retrying)
        journal.append({"event": "end", "run": run})
    finally:
        journal.close()
    report = build_report(mine, run, order, carried,
                          {**meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    report["report"] = str(report_file)
    write_report(report_file, report)
    return report


__all__ = ["BulkOptions", "dry_run", "run_bulk", "table_text"]
