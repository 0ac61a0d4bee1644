#!/usr/bin/env python
"""Fetch the real CT volumes used for training into the cache (pinned version, SHA-256 checked).

    python scripts/fetch_real_data.py          # -> ~/.cache/mrtoct/real_ct/ (or $MRTOCT_CACHE/real_ct/)

Runs ``pip download --no-deps --no-binary :all: TotalSegmentator==2.18.0`` (the source distribution, 38 MB,
Apache-2.0), checks its SHA-256 against the value pinned in ``MRtoCTSynthesisLib/data/real_ct.py`` and extracts
the CT volumes listed there (an abdomen-pelvis CT and a chest CT of its ``tests/reference_files/``). Offline,
it says so and exits with status 2; the training data builder then uses phantoms only.

    python scripts/fetch_real_data.py --mr     # also the real MRIs of the input check (data/real_mr.py)

``--mr`` also fetches the antspyx 0.6.3 source distribution (7.2 MB, Apache-2.0; SHA-256 pinned in
``MRtoCTSynthesisLib/data/real_mr.py``) and extracts its ch2 brain template and TotalSegmentator's example MR.
"""

from __future__ import annotations

import sys

from MRtoCTSynthesisLib.data.real_ct import REAL_CT_SOURCES, cache_dir, real_ct_path
from MRtoCTSynthesisLib.errors import InputError


def main() -> int:
    try:
        for name, (member, _, what) in REAL_CT_SOURCES.items():
            path = real_ct_path(name, fetch=True)
            print(f"{name}: {path} ({what}; {member})")
        if "--mr" in sys.argv[1:]:
            from MRtoCTSynthesisLib.data.real_mr import REAL_MR_SOURCES, real_mr_path

            for name, (_, member, what) in REAL_MR_SOURCES.items():
                print(f"{name}: {real_mr_path(name, fetch=True)} ({what}; {member})")
    except InputError as e:
        print(f"error: {e.problem}\nFix: {e.fix}", file=sys.stderr)
        return 2
    print(f"cache: {cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
