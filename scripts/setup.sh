#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install the engine into it.
# torch is pinned to 2.13.0 first so that pip never resolves a multi-GB CUDA build on a CPU machine;
# pyproject.toml accepts any torch in [2.1, 2.14), so an existing CUDA torch of that range is kept.
# Re-runs are cheap: nothing is reinstalled unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MRTOCT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.mrtoct-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "[setup] installing torch==2.13.0"
    "$VENV/bin/pip" install -q "torch==2.13.0"
  fi
  echo "[setup] installing MRtoCTSynthesis engine (+ test tools)"
  "$VENV/bin/pip" install -q -e ".[test]" 2> >(grep -v "^WARNING: Location" >&2)
  echo "$want" > "$stamp"
fi
