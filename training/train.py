#!/usr/bin/env python
"""Train any MRtoCTSynthesis method: the same command as `mrtoct train` (see `--help`).

    python training/train.py --config training/configs/ddpm.yaml --data DIR --run-dir runs/ddpm
    python training/train.py --config training/configs/ddpm.yaml --data DIR --run-dir runs/ddpm --resume
    torchrun --nproc_per_node 4 training/train.py --config training/configs/ddpm.yaml --data DIR --run-dir runs/ddpm

Works from a clone without installing: the engine is imported from ../MRtoCTSynthesis when needed.
"""

import sys
from pathlib import Path

try:
    import MRtoCTSynthesisLib  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "MRtoCTSynthesis"))

from MRtoCTSynthesisLib.apps.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
