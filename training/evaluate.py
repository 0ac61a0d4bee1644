#!/usr/bin/env python3
"""Evaluate trained models on test cases: comparison table, per-case figures, uncertainty calibration.

    python training/evaluate.py --models A.safetensors B.safetensors --data DIR [--split split.json]
        [--samplers dpmpp ddim] [--steps N] [--samples K] [--projections 23 ...] [--noise-sigma 0.0 ...]
        [--cases N] [--figures N] [--out DIR] [--device auto] [--seed 0]

The same code as ``mrtoct evaluate --models ... --data ...``
(:func:`MRtoCTSynthesisLib.apps.commands.evaluate.run_batch_evaluation`,
which calls :func:`MRtoCTSynthesisLib.apps.evaluation.run_evaluation`); see ``--help`` for what it writes.
Works from a fresh clone: when the package is not installed, the repository's ``MRtoCTSynthesis`` folder
is put on ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import MRtoCTSynthesisLib  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MRtoCTSynthesis"))

from MRtoCTSynthesisLib.apps.args import Parser  # noqa: E402
from MRtoCTSynthesisLib.apps.cli import run_command  # noqa: E402
from MRtoCTSynthesisLib.apps.commands.evaluate import add_batch_evaluation_arguments, run_batch_evaluation  # noqa: E402


def build_parser():
    p = Parser(prog="training/evaluate.py",
                     description="Synthesise every test case with every model x sampler (and DDMM-Synth --projections "
                                 "x "
                                 "--noise-sigma rows for conditional DDPM checkpoints), score each sCT (MAE/ME in HU, "
                                 "PSNR, SSIM inside the body mask) and write table.md/table.csv (mean ± std across "
                                 "cases, "
                                 "ddof 1; two-sided Wilcoxon signed-rank p-values against the method with the highest "
                                 "mean "
                                 "PSNR; NFE; s/slice), results.json, figures/<case>.png and calibration.json/.png to "
                                 "--out, "
                                 "only after every run finished. Same as `mrtoct evaluate --models ... --data ...`.")
    add_batch_evaluation_arguments(p, required=True)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for key in ("pred", "ref", "mask", "json", "per_slice"):  # the single-sCT flags of `mrtoct evaluate`
        setattr(args, key, None)
    return run_command(run_batch_evaluation, args)


if __name__ == "__main__":
    sys.exit(main())
