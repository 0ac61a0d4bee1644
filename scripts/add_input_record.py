#!/usr/bin/env python
"""Add the training record (input check) and the uncertainty recalibration to the bundled checkpoints (issue 22).

    OMP_NUM_THREADS=1 python scripts/add_input_record.py [--models demo_ddpm demo_syndiff default_ddpm] [--dry-run]

The weights are unchanged: each checkpoint is read, its metadata gains ``input_record`` (and, for the demo DDPM,
``uncertainty_calibration``), and it is written again through the engine's verified atomic writer, whose SHA-256 now
covers the metadata too (``sha256_covers: tensors+metadata``). ``Resources/models.json`` gets the new file's
sha256 and size. The cases are regenerated from their seeds into ``--cache`` (deterministic generators):

* ``demo_ddpm`` / ``demo_syndiff``: trained on ``mrtoct phantom --cases 12 --seed 100 --size 64 64 36 --spacing 6 6 4``
  (training/configs/demo_ddpm.yaml), so the record is those 12 cases; the demo DDPM's std is recalibrated on 4
  held-out cases of the same generator, seeds 300-303 (never used for training, and not the demo case, seed 42,
  nor the held-out families the calibration is judged on, benchmarks/input_check_eval.py);
* ``default_ddpm`` (2 mm): trained on the ``wide`` family (seeds 1000-1399) and the real-CT cases; the record uses
  12 of its ``wide`` training cases (seeds 1000-1011) with the MC std level (K = 4), and its std is recalibrated on 4
  ``wide`` cases never used for training (seeds 5000-5003; the held-out families it is judged on are never used).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MRtoCTSynthesis"))

from MRtoCTSynthesisLib.assets import ASSETS_DIR  # noqa: E402
from MRtoCTSynthesisLib.data.phantom import generate_dataset  # noqa: E402
from MRtoCTSynthesisLib.data.phantom.families import generate_family_dataset  # noqa: E402
from MRtoCTSynthesisLib.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from MRtoCTSynthesisLib.models.checkpoint.format import EMA_PREFIX  # noqa: E402
from MRtoCTSynthesisLib.models.methods import load_model  # noqa: E402
from MRtoCTSynthesisLib.training.records import build_input_record, fit_calibration  # noqa: E402

CATALOG = ROOT / "MRtoCTSynthesis" / "Resources" / "models.json"
DEMO_GRID = {"size": (64, 64, 36), "spacing": (6.0, 6.0, 4.0)}


def demo_training_cases(cache: Path) -> list[Path]:
    return generate_dataset(cache / "demo_train", 12, first_seed=100, **DEMO_GRID)


def demo_calibration_cases(cache: Path) -> list[Path]:
    return generate_dataset(cache / "demo_calibration", 4, first_seed=300, **DEMO_GRID)


def wide_training_cases(cache: Path) -> list[Path]:
    return generate_family_dataset(cache / "wide_train", "wide", 12, 1000)


def wide_calibration_cases(cache: Path) -> list[Path]:
    return generate_family_dataset(cache / "wide_calibration", "wide", 4, 5000)


PLANS = {  # name -> (record cases, record MC samples, calibration cases or None)
    "demo_ddpm": (demo_training_cases, 4, demo_calibration_cases),
    "demo_syndiff": (demo_training_cases, 1, None),
    "default_ddpm": (wide_training_cases, 4, wide_calibration_cases),
}


def rewrite(path: Path, extra: dict) -> Path:
    """Write ``path`` again with ``extra`` added to its metadata; the tensors are the same objects, unchanged."""
    ck = load_checkpoint(path)
    nets = {g: sd for g, sd in ck.tensors.items() if not g.startswith(f"{EMA_PREFIX}.") and g != "train_state"}
    ema = {g[len(EMA_PREFIX) + 1:]: sd for g, sd in ck.tensors.items() if g.startswith(f"{EMA_PREFIX}.")}
    meta = {k: v for k, v in ck.metadata.items() if k not in ("sha256", "sha256_covers")}
    meta.update(extra)
    before = {f"{g}.{k}": hashlib.sha256(t.numpy().tobytes()).hexdigest() for g, sd in ck.tensors.items()
              for k, t in sd.items()}
    save_checkpoint(path, nets, meta, ema=ema or None)
    after = load_checkpoint(path)  # verifies the new checksum
    same = {f"{g}.{k}": hashlib.sha256(t.numpy().tobytes()).hexdigest() for g, sd in after.tensors.items()
            for k, t in sd.items()}
    if same != before:
        raise SystemExit(f"{path}: the tensors changed on rewrite; not expected")
    return path


def update_catalog(path: Path) -> None:
    doc = json.loads(CATALOG.read_text())
    for entry in doc["models"]:
        if entry.get("path", "").endswith(path.name):
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            entry["size"] = path.stat().st_size
    CATALOG.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(PLANS), choices=list(PLANS))
    ap.add_argument("--cache", default=str(Path(os.environ.get("MRTOCT_CACHE", Path.home() / ".cache" / "mrtoct"))
                                           / "records"))
    ap.add_argument("--dry-run", action="store_true", help="compute and print, do not rewrite the checkpoints")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    for name in args.models:
        path = ASSETS_DIR / f"{name}.safetensors"
        record_cases, k, calib_cases = PLANS[name]
        model = load_model(path)
        extra = {"input_record": build_input_record(model, record_cases(cache), samples=k)}
        if calib_cases is not None:
            extra["uncertainty_calibration"] = fit_calibration(model, calib_cases(cache))
        print(json.dumps({name: {k2: (v if k2 != "input_record" else {kk: vv for kk, vv in v.items()
                                                                    if kk != "histogram"})
                                 for k2, v in extra.items()}}, indent=1))
        if not args.dry_run:
            rewrite(path, extra)
            update_catalog(path)
            print(f"rewrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
