"""Sparse-view CT measurements for DDMM-Synth, as users have them: simulated from a reference CT or read
from sinogram files, put on a checkpoint's model grid (DDMM-Synth Eq. 2, ``y = A x + n``).

:class:`MeasurementSpec` says where the measurements come from (a reference CT volume with ``N_p`` views
and added noise, or a sinogram volume) and is what front ends hand to :func:`.synthesis.synthesize`; it
builds the :class:`~..models.methods.ddmm_synth.Measurements` (sinograms + projector, the tensors N-SMI
works on) once the model's grid and the device are known. The embedding itself (N-SMI, DDMM-Synth Eqs.
5 and 7-13) is :mod:`..models.methods.ddmm_synth`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
    ``noise_sigma``, seeded from the synthesis seed) or ``sinogram`` (measured sinograms in the
    ``--sinogram`` layout; ``noise_sigma`` then states the noise already in them)."""

    ct: Optional[Volume] = None
    sinogram: Optional[Volume] = None
    projections: Optional[int] = None
    noise_sigma: float = 0.0

    def validate(self) -> "MeasurementSpec":
        if (self.ct is None) == (self.sinogram is None):
            raise InputError("DDMM-Synth needs exactly one source of measurements: a reference CT or a sinogram file.",
                             "pass --ct REFERENCE_CT (on the MRI's grid) or --sinogram FILE, not both.")
        if self.projections is not None:
            check_projections(self.projections)
        check_noise_sigma(self.noise_sigma)
        return self

    def build(self, mri: Volume, image_size: int, seed: int = 0, device="cpu") -> Measurements:
        """The measurements on the ``image_size`` model grid of ``mri``'s canonical axial slices."""
        self.validate()
        if self.ct is not None:
            n_p = DEFAULT_PROJECTIONS if self.projections is None else self.projections
            return measurements_from_ct(mri, self.ct, image_size, n_p, self.noise_sigma, seed=seed, device=device)
        return measurements_from_sinogram(self.sinogram, mri, image_size, self.noise_sigma, self.projections,
                                          device=device)


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


def measurements_from_sinogram(sinogram, mri, image_size: int, noise_sigma: float = 0.0,
                               n_projections: Optional[int] = None, device="cpu") -> Measurements:
    """Measurements from a user's sinogram volume (``--sinogram``).

    Layout: a 3D image whose numpy array (SimpleITK order) is ``(n_slices, N_p, n_det)`` -- in a NIfTI or
    NRRD file, x = detector bin, y = view, z = slice; spacing/origin are ignored. Slice ``k`` is the
    ``k``-th axial slice of the MRI in canonical order (inferior to superior, as
    :func:`..io.slicing.to_canonical` orders it) on the model grid (the checkpoint's ``image_size``, see
    ``mrtoct info``); views are ``180 a / N_p`` degrees and ``n_det = ceil(sqrt(2) image_size)`` bins,
    with the conventions of :mod:`..operators.radon` (those of scikit-image's ``radon(circle=False)``,
    transposed to view-major); values are line integrals of the CT in model units (``[-1, 1]``) times
    pixel lengths. ``--out-sinogram`` writes exactly this layout. ``noise_sigma`` describes the noise
    already in the file (nothing is added).
    """
    arr = np.asarray(getattr(sinogram, "array", sinogram), dtype=np.float32)
    noise_sigma = check_noise_sigma(noise_sigma)
    n_det = detector_count(image_size, image_size)
    n_slices = to_canonical(np.zeros(mri.array.shape, dtype=np.uint8), mri.geometry)[1].n_slices
    if arr.ndim != 3 or arr.shape[0] != n_slices or arr.shape[2] != n_det:
        raise InputError(
            f"the sinogram file has shape {arr.shape} (slices, views, bins) but this MRI and model need "
            f"({n_slices}, N_p, {n_det}).",
            f"write one sinogram per axial slice ({n_slices}, inferior to superior) of the {image_size}x{image_size} "
            f"model grid with {n_det} detector bins; `mrtoct synthesize --ct CT --out-sinogram FILE` shows the layout.")
    if not np.isfinite(arr).all():
        raise InputError("the sinogram file has NaN/Inf values.", "fill or remove them before synthesis.")
    if n_projections is not None and check_projections(n_projections) != arr.shape[1]:
        raise InputError(f"--projections {n_projections} does not match the sinogram file's {arr.shape[1]} views.",
                         "leave --projections out with --sinogram (it is read from the file).")
    op = get_operator(image_size, check_projections(int(arr.shape[1])), device=device, dtype=torch.float32)
    y = torch.from_numpy(np.ascontiguousarray(arr))[:, None].to(op.device)
    return Measurements(y, op, noise_sigma, "sinogram")
