"""The Ray executor: one Ray task per row, sized by the row's memory estimate.

Ray retries a task itself (max_retries) only when its worker or node is lost; a row's own failures come
back as results and follow --retries like the local executor's. Ray waits for ever on a task no node
can hold, so each estimate is checked against the largest node first. Sources and outputs must be on
storage every node sees: each task runs the CLI on whichever node Ray picks.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

from ..core.sizes import human_bytes
from ..core.extras import require
from .runner import Task, run_row

LOST_WORKER_RETRIES = 3
LOCAL_OBJECT_STORE = 100 * 2**20   # rows pass paths and small dicts, never tensors


def import_ray():
    return require("ray", "bulk --executor ray (or use --executor local)")


def _ray_row(spec: dict, timeout: float | None) -> dict:
    import ray
    result = run_row(spec, timeout)
    result["node"] = f"{os.uname().nodename}/{ray.get_runtime_context().get_node_id()[:8]}"
    return result


def largest_node_memory(ray) -> int:
    return int(max((n.get("Resources", {}).get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0))


def run_ray(tasks: list[Task], jobs: int | None, retries: int, timeout: float | None,
            finished: Callable[[Task, dict], None], address: str | None = None,
            started: Callable[[Task], None] | None = None,
            retrying: Callable[[Task, dict], None] | None = None) -> None:
    ray = import_ray()
    own = not ray.is_initialized()
    if own:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(address="local", num_cpus=jobs or os.cpu_count(), object_store_memory=LOCAL_OBJECT_STORE,
                     include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        _run(ray, tasks, jobs, retries, timeout, finished, started, retrying)
    finally:
        if own:
            ray.shutdown()


def _run(ray, tasks, jobs, retries, timeout, finished, started, retrying) -> None:
    largest = largest_node_memory(ray)
    pending = []
    for task in tasks:
        if task.memory > largest:
            finished(task, {"id": task.spec["id"], "status": "failed", "exit_code": None, "seconds": {},
                            "reason": f"needs {human_bytes(task.memory, 2)}; the largest Ray node offers {human_bytes(largest, 2)}",
                            "retryable": False, "node": None, "verify": None, "bytes": None})
        else:
            pending.append(task)
    remote = ray.remote(_ray_row)
    limit = jobs or len(pending) or 1
    running: dict = {}
    while pending or running:
        while pending and len(running) < limit:
            task = pending.pop(0)
            task.attempts += 1
            ref = remote.options(num_cpus=1, memory=max(1, task.memory), max_retries=LOST_WORKER_RETRIES,
                                 retry_exceptions=False).remote(task.spec, timeout)
            running[ref] = task
            if started:
                started(task)
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            task = running.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # the worker or node was lost more often than Ray retries
                result = {"id": task.spec["id"], "status": "failed", "exit_code": None, "seconds": {},
                          "reason": f"Ray task lost: {type(e).__name__}", "retryable": True, "node": None,
                          "verify": None, "bytes": None}
            if result["retryable"] and task.attempts <= retries:
                if retrying:
                    retrying(task, result)
                pending.insert(0, task)
            else:
                finished(task, result)
