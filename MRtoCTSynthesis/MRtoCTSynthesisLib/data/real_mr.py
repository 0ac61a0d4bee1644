"""Real MRIs for the out-of-distribution check (issue 22): fetched by pip, pinned by version and SHA-256, cached.

No paired CT exists for them: they test that the input check (:mod:`..pipeline.input_check`) flags real scans of
another anatomy and contrast than the bundled models' training data, end to end (``mrtoct synthesize`` on them).

* ``ch2``: the Colin-27 ("ch2") T1-weighted brain template, ``data/ch2.nii.gz`` of the antspyx 0.6.3 source
  distribution (Apache-2.0), fetched with ``pip download --no-deps --no-binary antspyx antspyx==0.6.3``;
* ``totalseg_mr``: ``tests/reference_files/example_mr_sm.nii.gz`` of the TotalSegmentator 2.18.0 source
  distribution (the same pinned file :mod:`.real_ct` uses; a small abdominal MR).

Offline (or with another file than the pinned one) :func:`real_mr_path` raises :class:`InputError` saying so; tests
then skip with that reason.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .real_ct import TOTALSEG_SDIST, cache_dir, extract_member, fetch_pinned_sdist, fetch_totalsegmentator_sdist

ANTSPYX_VERSION = "0.6.3"
ANTSPYX_SDIST = f"antspyx-{ANTSPYX_VERSION}.tar.gz"
ANTSPYX_SHA256 = "48d1f5b6b2e8a90f6f66f14cdbdd4c37e20268f5db84cb9ac99256ecb9c72386"

#: name -> (sdist, member, description)
REAL_MR_SOURCES: dict[str, tuple[str, str, str]] = {
    "ch2": (ANTSPYX_SDIST, f"antspyx-{ANTSPYX_VERSION}/data/ch2.nii.gz", "brain T1 template, antspyx 0.6.3"),
    "totalseg_mr": (TOTALSEG_SDIST, "totalsegmentator-2.18.0/tests/reference_files/example_mr_sm.nii.gz",
                    "abdominal MR, TotalSegmentator 2.18.0"),
}


def fetch_antspyx_sdist(fetch: bool = True, cache: Path | None = None) -> Path:
    """The antspyx sdist in the cache, downloaded by pip when missing (and ``fetch``), sha256-checked."""
    # only antspyx itself as source: its build requirements (for pip's metadata step) come as wheels
    return fetch_pinned_sdist("antspyx", ANTSPYX_VERSION, ANTSPYX_SDIST, ANTSPYX_SHA256, fetch=fetch, cache=cache,
                              what="real-MRI source", fetch_command="scripts/fetch_real_data.py --mr",
                              no_binary="antspyx")


def real_mr_path(name: str, fetch: bool = True, cache: Path | None = None) -> Path:
    """The extracted MRI ``name`` of :data:`REAL_MR_SOURCES` (extracted from its sdist once)."""
    if name not in REAL_MR_SOURCES:
        raise InputError(f"unknown real MRI {name!r}.", f"use one of: {', '.join(REAL_MR_SOURCES)}.")
    cache = Path(cache or cache_dir())
    out = cache / f"mr_{name}.nii.gz"
    if out.exists():
        return out
    sdist_name, member, _ = REAL_MR_SOURCES[name]
    sdist = fetch_antspyx_sdist(fetch, cache) if sdist_name == ANTSPYX_SDIST else \
        fetch_totalsegmentator_sdist(fetch, cache)
    return extract_member(sdist, member, out)
