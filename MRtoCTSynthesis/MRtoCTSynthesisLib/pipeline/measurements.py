"""Sparse-view CT measurements for DDMM-Synth, as users have them: simulated from a reference CT or read
from sinogram files, put on a checkpoint's model grid (DDMM-Synth Eq. 2, ``y = A x + n``).

:class:`MeasurementSpec` says where the measurements come from (a reference CT volume with ``N_p`` views
and added noise, or a sinogram volume) and is what front ends hand to :func:`.synthesis.synthesize`; it
builds the :class:`~..models.methods.ddmm_synth.Measurements` (sinograms + projector, the tensors N-SMI
works on) once the model's grid and the device are known. The embedding itself (N-SMI, DDMM-Synth Eqs.
5 and 7-13) is :mod:`..models.methods.ddmm_synth`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..io.intensity import check_ct_in_hu, hu_to_model
from ..io.slicing import to_canonical, to_model_grid
from ..io.volume import Volume, require_same_geometry
from ..models.methods.ddmm_synth import (
    DEFAULT_PROJECTIONS,
    MEASUREMENT_SEED_OFFSET,
    Measurements,
    check_noise_sigma,
    check_projections,
)
from ..operators.radon import detector_count, get_operator, simulate_measurements

__all__ = ["MeasurementSpec", "measurements_from_ct", "measurements_from_sinogram"]


@dataclass
class MeasurementSpec:
    """Where DDMM-Synth's measurements come from: exactly one of ``ct`` (a reference CT in HU on the MRI's
    grid, projected with ``projections`` views, default 23, plus Gaussian noise of per-bin std
    ``noise_sigma``, seeded from the synthesis seed; ``None`` = 0) or ``sinogram`` (measured sinograms in the
    ``--sinogram`` layout; ``noise_sigma`` then states the noise already in them, and ``None`` estimates it
    from the data, :meth:`~..operators.radon.RadonOperator.estimate_noise_sigma`). For a sinogram,
    ``angles_deg`` (one per view; default uniform over [0, 180)) and ``detector_spacing_mm`` (distance between
    bins; default one model-grid pixel) describe the scanner's geometry."""

    ct: Optional[Volume] = None
    sinogram: Optional[Volume] = None
    projections: Optional[int] = None
    noise_sigma: Optional[float] = 0.0
    angles_deg: Optional[Sequence[float]] = None
    detector_spacing_mm: Optional[float] = None

    def validate(self) -> "MeasurementSpec":
        if (self.ct is None) == (self.sinogram is None):
            raise InputError("DDMM-Synth needs exactly one source of measurements: a reference CT or a sinogram file.",
                             "pass --ct REFERENCE_CT (on the MRI's grid) or --sinogram FILE, not both.")
        if self.projections is not None:
            check_projections(self.projections)
        if self.noise_sigma is not None:
            check_noise_sigma(self.noise_sigma)
        if self.ct is not None and (self.angles_deg is not None or self.detector_spacing_mm is not None):
            raise InputError("--angles and --detector-spacing describe a measured sinogram's geometry; with --ct the "
                             "views are simulated uniformly over 180 degrees.",
                             "drop --angles/--detector-spacing, or use --sinogram.")
        if self.detector_spacing_mm is not None and not (math.isfinite(self.detector_spacing_mm)
                                                         and self.detector_spacing_mm > 0):
            raise InputError(f"--detector-spacing must be a positive number of mm, got {self.detector_spacing_mm!r}.",
                             "give the distance between neighbouring detector bins in mm, e.g. 1.2.")
        return self

    def build(self, mri: Volume, image_size: int, seed: int = 0, device="cpu") -> Measurements:
        """The measurements on the ``image_size`` model grid of ``mri``'s canonical axial slices."""
        self.validate()
        if self.ct is not None:
            n_p = DEFAULT_PROJECTIONS if self.projections is None else self.projections
            sigma = 0.0 if self.noise_sigma is None else self.noise_sigma
            return measurements_from_ct(mri, self.ct, image_size, n_p, sigma, seed=seed, device=device)
        return measurements_from_sinogram(self.sinogram, mri, image_size, self.noise_sigma, self.projections,
                                          device=device, angles_deg=self.angles_deg,
                                          detector_spacing_mm=self.detector_spacing_mm)


def _canonical_model_slices(array: np.ndarray, geometry, image_size: int) -> torch.Tensor:
    canon, layout = to_canonical(array, geometry)
    return to_model_grid(canon, layout, image_size, context=0, pad_value=-1.0)


def measurements_from_ct(mri, ct, image_size: int, n_projections: int = DEFAULT_PROJECTIONS,
                         noise_sigma: float = 0.0, seed: int = 0, device="cpu") -> Measurements:
    """Simulate sparse-view measurements of ``ct`` (a :class:`..io.volume.Volume` in HU on ``mri``'s grid).

    Each axial slice is mapped to the model range (:func:`..io.intensity.hu_to_model`), put on the model grid
    exactly like the MRI (:func:`..io.slicing.to_canonical` / :func:`..io.slicing.to_model_grid`, padding -1),
    projected with ``N_p`` views and given Gaussian noise of per-bin std ``noise_sigma`` from a CPU
    generator seeded with ``seed + MEASUREMENT_SEED_OFFSET`` (the same noise on every device).
    """
    n_projections = check_projections(n_projections)
    noise_sigma = check_noise_sigma(noise_sigma)
    require_same_geometry(mri, ct, "MRI", "reference CT")
    check_ct_in_hu(ct.array, "reference CT")
    slices = _canonical_model_slices(hu_to_model(np.asarray(ct.array, dtype=np.float32)), ct.geometry, image_size)
    op = get_operator(image_size, n_projections, device=device, dtype=torch.float32)
    y = simulate_measurements(slices.to(op.device), op, 0.0)
    if noise_sigma > 0:
        gen = torch.Generator(device="cpu").manual_seed(int(seed) + MEASUREMENT_SEED_OFFSET)
        y = y + noise_sigma * torch.randn(y.shape, generator=gen, dtype=torch.float32).to(y.device)
    return Measurements(y, op, noise_sigma, "ct", {"seed": int(seed) + MEASUREMENT_SEED_OFFSET})


#: an estimated noise sigma below this fraction of the sinograms' RMS is float32 round-off (a float32 projection of
#: noiseless data estimates about 4e-5): taken as 0
ROUNDOFF_FRACTION = 1e-4


def model_grid_pixel_mm(mri: Volume, image_size: int) -> float:
    """Pixel size in mm of the square model grid DDMM-Synth works on (the larger in-plane extent / image_size)."""
    layout = to_canonical(np.zeros(mri.array.shape, dtype=np.uint8), mri.geometry)[1]
    side_mm = max(layout.canonical_shape[1] * layout.pixel_spacing[0],
                  layout.canonical_shape[2] * layout.pixel_spacing[1])
    return float(side_mm) / int(image_size)


def measurements_from_sinogram(sinogram, mri, image_size: int, noise_sigma: Optional[float] = 0.0,
                               n_projections: Optional[int] = None, device="cpu",
                               angles_deg: Optional[Sequence[float]] = None,
                               detector_spacing_mm: Optional[float] = None) -> Measurements:
    """Measurements from a user's sinogram volume (``--sinogram``).

    Layout: a 3D image whose numpy array (SimpleITK order) is ``(n_slices, N_p, n_det)`` -- in a NIfTI or
    NRRD file, x = detector bin, y = view, z = slice; spacing/origin are ignored. Slice ``k`` is the
    ``k``-th axial slice of the MRI in canonical order (inferior to superior, as
    :func:`..io.slicing.to_canonical` orders it) on the model grid (the checkpoint's ``image_size``, see
    ``mrtoct info``); values are line integrals of the CT in model units (``[-1, 1]``) times pixel lengths
    of that grid, with the conventions of :mod:`..operators.radon` (those of scikit-image's
    ``radon(circle=False)``, transposed to view-major; the centre bin ``n_det // 2`` passes through the grid
    centre). Geometry: ``angles_deg`` (one per view, degrees; default ``180 a / N_p``) and
    ``detector_spacing_mm`` (default: one model-grid pixel, :func:`model_grid_pixel_mm`, and then the file must
    have the default ``ceil(sqrt(2) image_size)`` bins; with a spacing, any number of bins). ``--out-sinogram``
    writes the default layout. ``noise_sigma`` describes the noise already in the file (nothing is added);
    ``None`` estimates it from the part of the data no image can produce
    (:meth:`~..operators.radon.RadonOperator.estimate_noise_sigma`), and an estimate below
    :data:`ROUNDOFF_FRACTION` of the sinograms' RMS (float32 round-off of noiseless data) counts as 0.
    """
    arr = np.asarray(getattr(sinogram, "array", sinogram), dtype=np.float32)
    if noise_sigma is not None:
        noise_sigma = check_noise_sigma(noise_sigma)
    n_slices = to_canonical(np.zeros(mri.array.shape, dtype=np.uint8), mri.geometry)[1].n_slices
    n_det_default = detector_count(image_size, image_size)
    if arr.ndim != 3 or arr.shape[0] != n_slices or arr.shape[2] < 2 or \
            (detector_spacing_mm is None and arr.shape[2] != n_det_default):
        n_det = n_det_default
        raise InputError(
            f"the sinogram file has shape {arr.shape} (slices, views, bins) but this MRI and model need "
            f"({n_slices}, N_p, {n_det}) -- or any number of bins with --detector-spacing.",
            f"write one sinogram per axial slice ({n_slices}, inferior to superior) of the {image_size}x{image_size} "
            f"model grid with {n_det} detector bins one pixel apart, or give --detector-spacing for your detector; "
            "`mrtoct synthesize --ct CT --out-sinogram FILE` shows the layout.")
    if not np.isfinite(arr).all():
        raise InputError("the sinogram file has NaN/Inf values.", "fill or remove them before synthesis.")
    if n_projections is not None and check_projections(n_projections) != arr.shape[1]:
        raise InputError(f"--projections {n_projections} does not match the sinogram file's {arr.shape[1]} views.",
                         "leave --projections out with --sinogram (it is read from the file).")
    n_p = check_projections(int(arr.shape[1]))
    if angles_deg is not None and len(angles_deg) != n_p:
        raise InputError(f"{len(angles_deg)} view angles were given for a sinogram with {n_p} views.",
                         "give one angle in degrees per view (the file's y axis), in the file's order.")
    pixel_mm = model_grid_pixel_mm(mri, image_size)
    spacing = 1.0 if detector_spacing_mm is None else float(detector_spacing_mm) / pixel_mm
    n_det = int(arr.shape[2])
    default_det = n_det == detector_count(image_size, image_size) and spacing == 1.0
    op = get_operator(image_size, n_p, device=device, dtype=torch.float32,
                      n_detectors=None if default_det else n_det, angles_deg=angles_deg, det_spacing=spacing)
    y = torch.from_numpy(np.ascontiguousarray(arr))[:, None].to(op.device)
    details = {"angles_deg": [float(a) for a in op.angles_deg], "detector_spacing_pixels": spacing,
               "model_pixel_mm": pixel_mm, "noise_sigma_source": "given"}
    if noise_sigma is None:
        if op.method != "svd":
            raise InputError("the noise of this sinogram cannot be estimated here (the geometry is too large for the "
                             "exact pseudo-inverse).", "give --noise-sigma (0 for noiseless data).")
        est, dof = op.estimate_noise_sigma(y)
        if not math.isfinite(est):
            raise InputError("these views leave no consistency conditions to estimate the noise from (every ray is "
                             "needed to describe the image).", "give --noise-sigma (0 for noiseless data).")
        rms = float(y.double().pow(2).mean().sqrt())
        noise_sigma = 0.0 if est <= ROUNDOFF_FRACTION * rms else est
        details.update(noise_sigma_source="estimated", noise_sigma_estimate=est, noise_sigma_dof=dof,
                       noise_sigma_relative_error=1.0 / math.sqrt(2 * dof))
    return Measurements(y, op, noise_sigma, "sinogram", details)
