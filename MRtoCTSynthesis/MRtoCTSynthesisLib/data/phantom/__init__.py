"""Procedural paired MR/CT phantoms: perfectly co-registered synthetic pelvis and head volumes.

No public data set ships an MRI and a CT of the same subject under a licence that lets a demo carry
them, so the engine's demo, tests and smoke training run on phantoms made here. :func:`generate_case`
builds, for one integer ``seed``, a tissue label map and from it a CT in Hounsfield units and two MR
weightings (T1, T2) on one voxel grid, so the MR/CT pair is aligned exactly.

Anatomy is defined in physical millimetres, never in voxels: every structure is a continuous shape
(ellipsoids, tapered tubes, superellipses, elliptical shells, each with an approximate signed distance
so bones get a cortical shell of a given thickness in mm) evaluated at the physical centre of each
voxel. The same seed therefore gives the same anatomy on any grid: another spacing, field of view,
origin or an oblique direction matrix only changes where the anatomy is sampled. Per-case variation
(body width and depth, fat thickness, bone sizes and positions, bladder filling, bowel gas, sex
organs, a small rotation and shift, a smooth non-rigid deformation) comes from a random generator
seeded with ``seed`` alone, drawn before anything depends on the grid. Only the noise is drawn per
voxel (from a second generator, also seeded by ``seed``).

Image formation, in this order:

* CT: a Hounsfield value per tissue (air -1000, fat about -100, muscle about 50, urine about 8, soft
  organs about 38, trabecular bone 250-400, cortical bone 1050-1450, bowel gas about -900; each varied
  a little per case), a smooth trabecular-density texture, a Gaussian partial-volume blur of half a
  voxel, then Gaussian noise of standard deviation ``ct_noise_sigma`` (10-20 HU) that is itself
  smoothed slightly (0.6 voxel) and rescaled back to that standard deviation.
* MR: a signal per tissue for each weighting (T1: fat bright, fluid dark; T2: fluid very bright, fat
  bright-ish, muscle dark; cortical bone, air and gas dark in both; fatty marrow intermediate), a mild
  tissue texture, the same partial-volume blur, a smooth multiplicative bias field (about +-20 %,
  continuous in physical space), then Rician noise: the magnitude ``|S + n_re + i n_im|`` of the
  signal plus complex Gaussian noise with standard deviation ``meta['mr_noise_sigma'][w]`` per
  channel. In air far from the body the magnitude is therefore Rayleigh distributed, mean
  ``sigma * sqrt(pi / 2)``.

Bone is dark on MR and bright on CT, fat is bright on T1 and dark on CT, fluid is bright on T2 and
near water on CT: the mapping from MR to CT is non-linear and depends on anatomy, which is the point.

Regions: ``"pelvis"`` fits the default grid (128 x 128 x 48 voxels of 3 mm: 384 x 384 x 144 mm, from
below the lesser trochanters to the lower lumbar spine). The head is taller than that field of view;
``size=(96, 112, 96), spacing=(2.5, 2.5, 2.5)`` covers it from the neck to the vertex.

Coordinates are ITK/LPS (x towards the patient's left, y towards posterior, z towards superior); the
patient lies supine, so gas in a bowel loop rises to the anterior (-y) side with a flat gas/fluid
level. Arrays are ``(z, y, x)`` like everywhere in the engine.
"""

from .generate import generate_case, generate_dataset, phantom_geometry, write_case
from .tissues import (
                      AIR,
                      CORTICAL,
                      DEFAULT_SIZE,
                      DEFAULT_SPACING,
                      FAT,
                      FLUID,
                      GAS,
                      GREY_MATTER,
                      LABEL_NAMES,
                      MR_WEIGHTINGS,
                      MUSCLE,
                      ORGAN,
                      REGIONS,
                      TRABECULAR,
                      WHITE_MATTER,
                      PhantomCase,
)

__all__ = ["generate_case", "generate_dataset", "phantom_geometry", "write_case", "PhantomCase", "LABEL_NAMES",
           "REGIONS", "MR_WEIGHTINGS", "DEFAULT_SIZE", "DEFAULT_SPACING", "AIR", "FAT", "MUSCLE", "FLUID", "ORGAN",
           "TRABECULAR", "CORTICAL", "GAS", "GREY_MATTER", "WHITE_MATTER"]
