#!/usr/bin/env bash
# The main job: set up .venv (first run only) and convert a bundled fixture to MindFormers.
#   ./run.sh                         # fixtures/gqa-tied-bf16-sharded -> out/demo
#   ./run.sh SRC_DIR OUT_DIR [hf2ms options...]
# Paths given are the caller's: relative to the directory run.sh is run from, like any command's.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"
source "$ROOT/scripts/venv.sh"
SRC="${1:-$ROOT/fixtures/gqa-tied-bf16-sharded}"
OUT="${2:-$ROOT/out/demo}"
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$(dirname "$OUT")"
exec "$ROOT/.venv/bin/llama-convert" hf2ms "$SRC" "$OUT" --force "$@"
