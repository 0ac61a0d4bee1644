#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install the engine into it.
# torch is pinned to 2.13.0 first so that pip never resolves a multi-GB CUDA build on a CPU machine;
# pyproject.toml accepts any torch in [2.1, 2.14), so an existing CUDA torch of that range is kept.
# Re-runs are cheap: nothing is reinstalled unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MRTOCT_VENV:-.venv}
# torch 2.13.0 (pinned below) has wheels for CPython 3.10-3.14 only: refuse anything else before creating anything
check_python() {  # $1 = interpreter, $2 = what it is
  local ver
  if ! ver=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); then
    echo "[setup] error: $2 ($1) is not a working Python." >&2
    echo "  Fix: install Python 3.10-3.14 and run PYTHON=python3.11 bash scripts/setup.sh" >&2
    exit 1
  fi
  case "$ver" in
    3.10|3.11|3.12|3.13|3.14) ;;
    *) echo "[setup] error: $2 ($1) is Python $ver, but torch 2.13.0 has wheels only for Python 3.10-3.14." >&2
       echo "  Fix: run with a supported Python, e.g. PYTHON=python3.11 bash scripts/setup.sh" \
            "(remove $VENV first if it was made with Python $ver)." >&2
       exit 1 ;;
  esac
}
if [ -x "$VENV/bin/python" ]; then
  check_python "$VENV/bin/python" "the existing virtual environment's Python"
else
  check_python "$PY" "PYTHON"
fi
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
