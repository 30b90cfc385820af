"""What a bulk run is asked to do; each option declared once (core/options.py says how)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.options import Options, choice, key_value, option, positive_number, size, text, whole

EXECUTORS = ("local", "ray")


def _path(value: object) -> Path:
    return Path(text(value))


@dataclass
class BulkOptions(Options):
    jobs: int | None = option(None, "Rows at once.", parse=whole(1, 4096), default_text="the CPU count")
    executor: str = option("local", "local: CLI subprocesses here; ray: one Ray task per row "
                           "(pip install '.[ray]' in the llama-convert checkout).", parse=choice(EXECUTORS))
    ray_address: str | None = option(None, "Join a Ray cluster (sources and outputs must be on storage every node "
                                     "sees).", metavar="auto|HOST:PORT", default_text="start a local Ray")
    retries: int = option(1, "Retries of a row killed by a signal, timed out, or hit by an I/O error (never bad "
                          "input or parity).", parse=whole(0, 100))
    timeout: float | None = option(None, "Time limit per phase of a row (a timed-out row is retried).",
                                   parse=positive_number, metavar="SECONDS")
    memory_budget: int | None = option(None, "Memory the running rows may hold together, e.g. 16GiB.", parse=size,
                                       metavar="SIZE", default_text="3/4 of available memory, cgroup-aware")
    report: Path | None = option(None, "The report to write.", parse=_path, metavar="PATH",
                                 default_text="bulk-report.json beside MANIFEST; the journal beside it")
    retry_failed: Path | None = option(None, "Run only the rows an earlier report lists as failed, verify_failed, "
                                       "invalid or unfinished.", parse=_path, metavar="REPORT")
    defaults: dict = option(dict, "A row option for every row (rows and the manifest's defaults override it), e.g. "
                            "--set dtype=bfloat16.", parse=key_value, name="set", multiple=True, metavar="KEY=VALUE")
    force: bool = option(False, "Redo rows that are done.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.defaults, dict):  # --set KEY=VALUE ..., as the command line gives it
            self.defaults = dict(self.defaults)
