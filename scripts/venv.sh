# Sourced by run.sh and test.sh: create .venv at the repo root once, reuse it afterwards.
# torch is installed first with an exact pin: an unpinned torch pulls several GB of CUDA wheels.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.llama-convert-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "setting up $VENV (first run: a few minutes)" >&2
    python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q "torch==2.13.0" >&2
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" >&2
    echo "$WANT" > "$STAMP"
fi
# MindFormers writes its logs under LOCAL_DEFAULT_PATH (default ./output): keep them out of the way.
export LOCAL_DEFAULT_PATH="${LOCAL_DEFAULT_PATH:-$ROOT/.venv/mindformers-logs}"
