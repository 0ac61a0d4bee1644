#!/usr/bin/env python
"""Build the training data of the bundled default model (deterministic: seeds and settings are fixed here).

    python training/make_default_data.py --out data/default_train      # ~3 min on an idle CPU

Writes SynthRAD-layout case folders (``mr``, ``ct``, ``mask``, ``labels``, ``meta.json``):

* ``wide_<seed>``: ``--phantoms`` cases of the ``wide`` phantom family (seeds 1000, 1001, ...; see
  ``MRtoCTSynthesisLib/data/phantom/families.py``: every MR contrast of ``mr_physics`` except balanced SSFP,
  the demo's legacy tables and random contrasts, bodies 0.85-1.15x, 1.2-6 mm pixels, 1-6 mm slices, oblique
  and non-axial stacks, cropped fields of view, bias fields and Rician noise);
* ``realct_<source>_<k>``: ``--real-variants`` MR simulations per real CT of TotalSegmentator 2.18.0's test
  files (``MRtoCTSynthesisLib/data/real_ct.py``; fetched by ``scripts/fetch_real_data.py`` into the cache,
  sha256-pinned). Without the cache or network these are skipped with a message and only phantoms are written.

Folders that already exist with a ``meta.json`` are kept, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time

from MRtoCTSynthesisLib.data.phantom.families import generate_family_dataset
from MRtoCTSynthesisLib.errors import InputError

FIRST_SEED = 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--phantoms", type=int, default=400, help="cases of the 'wide' phantom family (default 400)")
    ap.add_argument("--real-variants", type=int, default=12,
                    help="MR simulations per real CT volume (default 12; 0 = phantoms only)")
    ap.add_argument("--no-fetch", action="store_true", help="use only an already fetched real-CT cache")
    args = ap.parse_args(argv)
    t0 = time.time()

    def progress(frac, msg):
        print(f"[{time.time() - t0:6.0f} s] {msg}", flush=True)

    generate_family_dataset(args.out, "wide", args.phantoms, FIRST_SEED, prefix="wide", progress=progress)
    if args.real_variants > 0:
        from MRtoCTSynthesisLib.data.real_ct import generate_real_ct_dataset
        try:
            generate_real_ct_dataset(args.out, args.real_variants, fetch=not args.no_fetch, progress=progress)
        except InputError as e:
            print(f"note: no real-CT cases ({e.problem}); {e.fix}", file=sys.stderr)
    print(f"done in {time.time() - t0:.0f} s: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
