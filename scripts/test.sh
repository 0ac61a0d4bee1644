#!/usr/bin/env bash
# The README's test command: set up .venv if needed, then run the whole pytest suite (CPU, ~minutes).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k sampler -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest Testing "$@"
