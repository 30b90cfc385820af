#!/usr/bin/env bash
# The main job: set up .venv (first run only) and convert a bundled fixture to MindFormers.
#   ./run.sh                         # fixtures/gqa-tied-bf16-sharded -> out/demo
#   ./run.sh SRC_DIR OUT_DIR [hf2ms options...]
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
SRC="${1:-fixtures/gqa-tied-bf16-sharded}"
OUT="${2:-out/demo}"
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$(dirname "$OUT")"
exec .venv/bin/llama-convert hf2ms "$SRC" "$OUT" --force "$@"
