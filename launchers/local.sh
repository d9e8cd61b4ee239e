#!/usr/bin/env bash
# The local default: cdscale starts its own single-machine Ray cluster (dashboard on
# 127.0.0.1:8265) and runs there. Any arguments go to `cdscale run`.
#   launchers/local.sh --config configs/addition.yaml student.zero_stage=3
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/cdscale run "$@"
