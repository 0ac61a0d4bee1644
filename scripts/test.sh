#!/usr/bin/env bash
# The README's test command: set up .venv if needed, lint (ruff, config in pyproject.toml), then run the whole
# pytest suite (CPU, ~minutes). Extra arguments go to pytest, e.g. `bash scripts/test.sh -k sampler -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] ruff check ."
.venv/bin/python -m ruff check --no-cache .
exec .venv/bin/python -m pytest Testing "$@"
