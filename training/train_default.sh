#!/usr/bin/env bash
# The bundled default model (MRtoCTSynthesisLib/assets/default_ddpm.safetensors), from nothing, in one command:
#   bash training/train_default.sh [WORK_DIR]        (default WORK_DIR: ./default_ddpm_work)
# 1. the real CTs (pip download of TotalSegmentator 2.18.0's sdist, sha256-pinned; skipped offline),
# 2. the training data (400 'wide' phantom cases + 2 x 12 MR simulations of the real CTs, seeded),
# 3. training on two CPU threads (~1 h 35 min on an idle 2-core CPU) (training/configs/default_ddpm.yaml),
# 4. the inference-only export (EMA weights) that is bundled.
set -euo pipefail
WORK="${1:-default_ddpm_work}"
PY="${PYTHON:-python}"
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
"$PY" scripts/fetch_real_data.py || echo "note: no real CTs (offline?); training on phantoms only"
"$PY" training/make_default_data.py --out "$WORK/data"
"$PY" -m MRtoCTSynthesisLib.apps.cli train --config training/configs/default_ddpm.yaml --data "$WORK/data" \
    --run-dir "$WORK/run" --set data.cache_dir="$WORK/cache"
"$PY" -m MRtoCTSynthesisLib.apps.cli export --model "$WORK/run/model.safetensors" --out "$WORK/default_ddpm.safetensors"
echo "model: $WORK/default_ddpm.safetensors"
