"""One phase of one bulk row, in a child process: `python -m llama_convert.bulk.row PHASE SPEC`.

The runner hands the row over as data (SPEC: the row's JSON, its options as `as_dict` gave them), not as
a command line to be parsed again; the phase calls the library as the command would and ends as the
command would (console/exits.py): the same exit statuses, the same one line on stderr, and for verify
the report as JSON on stdout.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..console.exits import run_command
from ..core.options import HF2MSOptions, MS2HFOptions


def convert(spec: dict) -> int:
    from ..api import convert_hf2ms, convert_ms2hf
    src, out = Path(spec["src"]), Path(spec["out"])
    if spec["direction"] == "hf2ms":
        convert_hf2ms(src, out, HF2MSOptions.from_dict(spec["options"]), force=True)
    else:
        config = Path(spec["config"]) if spec.get("config") else None
        convert_ms2hf(src, out, MS2HFOptions.from_dict(spec["options"]), config, force=True)
    return 0


def verify(spec: dict) -> int:
    from ..api import verify_conversion
    from ..verify import VerifyOptions, sanitize
    hf, ms = (spec["src"], spec["out"]) if spec["direction"] == "hf2ms" else (spec["out"], spec["src"])
    # Streamed: bounded by one stage whatever the model's size, so the admission estimate holds even
    # when other rows run beside it (verify's own choice would look only at the memory free at its start).
    adapter = spec["options"].get("adapter")   # hf2ms --adapter: transformers + PEFT are the truth (whole models)
    report = verify_conversion(hf, ms, VerifyOptions(adapter=adapter) if adapter else VerifyOptions(stream=True))
    print(json.dumps(sanitize(report.as_dict())))
    return 0 if report.passed else 1


PHASES = {"convert": convert, "verify": verify}


def main(argv: list[str]) -> int:
    phase, spec = argv[0], json.loads(argv[1])
    return run_command(lambda: PHASES[phase](spec), f"llama-convert bulk ({phase} of row {spec['id']})",
                       lambda line: print(line, file=sys.stderr))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
