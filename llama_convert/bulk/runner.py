"""One row, each phase a child process (bulk/row.py): the same exit codes and messages as the command by
hand, killable, and all memory returned to the OS when it ends. The same function runs in a local thread
or in a Ray task.

A row is a plain dict (it crosses to Ray workers): id, src, out, config, direction, options (as_dict of
the direction's options), convert (bool), verify (bool). The result says status, reason, exit code, seconds per phase, and
whether a failure is worth retrying (a signal, a timeout, an I/O error; never bad input or parity).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# The child asks to get SIGTERM when the thread that started it dies, so that a killed driver takes its
# runners with it (SIGTERM: they remove their partial output on the way out). Done in a tiny exec
# wrapper rather than preexec_fn, which is unsafe in a threaded parent.
_PDEATHSIG = ("import ctypes, os, sys\n"
              "try:\n    ctypes.CDLL(None, use_errno=True).prctl(1, 15)\nexcept Exception:\n    pass\n"
              "if os.getppid() != int(sys.argv[1]):\n    sys.exit(143)\n"
              "os.execv(sys.argv[2], sys.argv[2:])\n")
# strerror texts of failures that another attempt may not meet (the CLI reports OSError as `FILE: strerror`).
_TRANSIENT = ("Input/output error", "Stale file handle", "Resource temporarily unavailable", "Connection reset",
              "Connection timed out", "Remote I/O error", "Transport endpoint is not connected")
TERM_GRACE = 10.0
_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()
_stopping = threading.Event()   # set by terminate_all


@dataclass
class Task:
    """A row as the executors see it: what to run, what it needs, how often it was tried."""
    spec: dict
    memory: int
    attempts: int = 0
    extra: dict = field(default_factory=dict)


def terminate_all() -> None:
    """SIGTERM every runner this process started that is still running, and any being started now (the
    driver is stopping)."""
    with _live_lock:
        _stopping.set()
        for proc in list(_live):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)


def accept_runners() -> None:
    """A new run of this process may start runners again."""
    _stopping.clear()


def _phase(phase: str, row: dict) -> list[str]:
    """The child's command line: this interpreter, the row module, the phase, and the row as JSON."""
    return [sys.executable, "-m", "llama_convert.bulk.row", phase, json.dumps(row)]


def _run(args: list[str], timeout: float | None) -> tuple[int | None, str, str, float]:
    """(exit code or None on timeout, stdout, stderr, seconds). A negative code is the killing signal."""
    start = time.perf_counter()
    cmd = [sys.executable, "-c", _PDEATHSIG, str(os.getpid()), *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        with _live_lock:
            _live.add(proc)
            if _stopping.is_set():  # the driver stopped while this runner was being started
                proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # lets it remove its partial output
            try:
                proc.wait(timeout=TERM_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = None
        except BaseException:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            raise
        finally:
            with _live_lock:
                _live.discard(proc)
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(errors="replace"), err.read().decode(errors="replace"), time.perf_counter() - start


def _reason(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return last.removeprefix("llama-convert: error: ").strip() or "no message"


def _retryable(code: int | None, stderr: str) -> bool:
    if code is None or code < 0 or code in (130, 137, 143):
        return True
    return code == 2 and any(t in stderr for t in _TRANSIENT)


def _failure(code: int | None, stderr: str, phase: str, timeout: float | None) -> tuple[str, str]:
    if code is None:
        return "failed", f"{phase} timed out after {timeout:g} s"
    if code < 0:
        return "failed", f"{phase} killed by {signal.Signals(-code).name}"
    if code in (137, 143, 130):
        return "failed", f"{phase} ended by a signal (exit {code})"
    reason = _reason(stderr)
    if "corrupt download" in reason:
        return "failed", "corrupt download: " + reason.replace(": corrupt download:", ":", 1)
    return "failed", reason


def record_sha256(out: str | Path) -> str | None:
    try:
        return hashlib.sha256((Path(out) / "conversion.json").read_bytes()).hexdigest()
    except OSError:
        return None


def run_row(row: dict, timeout: float | None = None, on_phase=None) -> dict:
    """Run a row's phases; never raises for the row's own failures (they are its result). `on_phase(name)`
    hears each phase ("convert", "verify") as it starts."""
    on_phase = on_phase or (lambda phase: None)
    seconds: dict[str, float] = {}
    result = {"id": row["id"], "status": "converted", "reason": "", "exit_code": 0, "retryable": False,
              "seconds": seconds, "bytes": None, "node": os.uname().nodename, "verify": None, "record_sha256": None}
    if row.get("convert", True):
        on_phase("convert")
        code, _, err, secs = _run(_phase("convert", row), timeout)
        seconds["convert"] = round(secs, 3)
        if code != 0:
            status, reason = _failure(code, err, "convert", timeout)
            return {**result, "status": status, "reason": reason, "exit_code": code,
                    "retryable": _retryable(code, err)}
    else:
        result["reason"] = "done; verified now"
    try:
        record = json.loads((Path(row["out"]) / "conversion.json").read_text())
        result["bytes"] = sum(int(f.get("size") or 0) for f in record.get("outputs") or [])
    except (OSError, ValueError):
        pass
    result["record_sha256"] = record_sha256(row["out"])
    if not row.get("verify"):
        return result
    on_phase("verify")
    code, out, err, secs = _run(_phase("verify", row), timeout)
    seconds["verify"] = round(secs, 3)
    if code in (0, 1):
        try:
            report = json.loads(out)
            keys = ("passed", "logits_ratio", "max_abs_diff", "cosine_min", "kl_max", "top1_agreement",
                    "first_divergent_layer", "failures")
            result["verify"] = {k: report.get(k) for k in keys}
        except ValueError:
            result["verify"] = {"passed": code == 0}
    if code == 1:
        failures = (result["verify"] or {}).get("failures") or []
        return {**result, "status": "verify_failed", "exit_code": 1,
                "reason": "parity failed: " + ("; ".join(failures) or "see verify")}
    if code != 0:
        status, reason = _failure(code, err, "verify", timeout)
        return {**result, "status": status, "reason": reason, "exit_code": code, "retryable": _retryable(code, err)}
    return result
