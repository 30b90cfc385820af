"""The local executor: rows as CLI subprocesses on this machine, at most --jobs at once, started in
order while their memory estimates fit the budget."""
from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable

from .runner import Task, accept_runners, run_row, terminate_all

SIGNAL_POLL = 0.2   # seconds


def run_local(tasks: list[Task], jobs: int, budget: int, retries: int, timeout: float | None,
              finished: Callable[[Task, dict], None], started: Callable[[Task], None] | None = None,
              retrying: Callable[[Task, dict], None] | None = None,
              phase: Callable[[Task, str], None] | None = None) -> None:
    """Run every task; `finished` hears each one's final result, `retrying` each attempt that is tried
    again, `phase` each phase of a row as it starts (from a worker thread). Every task fits the budget on
    its own (the driver fails the others before)."""
    pending, running, used = deque(tasks), {}, 0
    accept_runners()
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="bulk-row")
    try:
        while pending or running:
            # In order: a big row waits for room rather than being overtaken for ever by small ones.
            while pending and len(running) < jobs and used + pending[0].memory <= budget:
                task = pending.popleft()
                task.attempts += 1
                used += task.memory
                if started:  # before the runner exists: a driver stopped in between calls the row interrupted
                    started(task)
                on_phase = (lambda name, t=task: phase(t, name)) if phase else None
                running[pool.submit(run_row, task.spec, timeout, on_phase)] = task
            # With a timeout: a signal that the kernel hands to a worker thread does not wake a main thread
            # blocked without one, and Ctrl-C would wait for a row to finish.
            done, _ = wait(running, timeout=SIGNAL_POLL, return_when=FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                used -= task.memory
                result = future.result()
                if result["retryable"] and task.attempts <= retries:
                    if retrying:
                        retrying(task, result)
                    pending.appendleft(task)
                else:
                    finished(task, result)
    except BaseException:
        terminate_all()  # SIGTERM or Ctrl-C of the driver: runners remove their partial outputs and end
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
