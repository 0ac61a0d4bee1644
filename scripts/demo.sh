#!/usr/bin/env bash
# The README's main command: set up .venv if needed, then run `mrtoct demo` on the bundled phantom case
# with the bundled weights. Outputs go to ./mrtoct_demo_output (override: bash scripts/demo.sh --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mrtoct demo "$@"
