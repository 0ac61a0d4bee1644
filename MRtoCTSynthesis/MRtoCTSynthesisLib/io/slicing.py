"""Axial slices out of a volume, onto the model grid, and back onto the input grid.

The engine works on 2D axial slices. A clinical volume may be stored in any index order (sagittal
acquisitions, flipped axes, oblique direction cosines), so slicing goes through three steps, each
exactly invertible:

1. **Canonical orientation** (:func:`canonical_layout`): permute and flip the array's axes (no
   interpolation) so that array axis 0 runs inferior->superior, axis 1 anterior->posterior and axis 2
   right->left (the LPS index order; the axis whose direction cosine is closest to each physical axis
   is chosen). For an oblique volume this is the nearest axis-aligned order; voxels are never resampled.
2. **Model grid** (:func:`to_model_grid`): each canonical slice is padded to a square physical field of
   view (so anisotropic pixels do not distort anatomy) and resized to the model's ``image_size``
   (bilinear, antialiased when shrinking). With ``context > 0``, the ``context`` neighbouring slices on
   each side become extra channels ("2.5D"; edges repeat the end slice).
3. **Reassembly** (:func:`from_model_grid`): the inverse resize and crop, then the inverse permutation
   and flips, giving an array on the input volume's exact grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SliceLayout:
    """How a volume's array maps to canonical (S, P, L) order, and the padding used for the model grid."""

    order: tuple[int, int, int]        # np.transpose order taking the input array to canonical order
    flips: tuple[bool, bool, bool]     # canonical axes flipped after transposing
    canonical_shape: tuple[int, int, int]
    pixel_spacing: tuple[float, float]  # canonical in-plane spacing (rows, cols) in mm
    pad: tuple[int, int, int, int]     # rows before/after, cols before/after (in input pixels)

    @property
    def n_slices(self) -> int:
        return self.canonical_shape[0]


def canonical_layout(geometry) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], tuple[float, float, float]]:
    """Permutation and flips that bring an array on ``geometry`` into (S, P, L) order.

    Returns ``(order, flips, spacing)`` where ``spacing`` is the canonical (z, y, x) spacing.
    The assignment of index axes to physical axes maximises the summed |direction cosine|, which is
    unique and stable for the near-axis-aligned volumes clinical scanners write.
    """
    d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)  # column c = index axis c in LPS
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[phys, p[phys]]) for phys in range(3)))
    # best[phys] = index axis (0=i/x, 1=j/y, 2=k/z) that runs along physical axis phys (0=L, 1=P, 2=S)
    order = tuple(2 - best[phys] for phys in (2, 1, 0))  # numpy axis of index axis c is 2 - c
    flips = tuple(bool(d[phys, best[phys]] < 0) for phys in (2, 1, 0))
    spacing = tuple(float(geometry.spacing[best[phys]]) for phys in (2, 1, 0))
    return order, flips, spacing


def to_canonical(array: np.ndarray, geometry) -> tuple[np.ndarray, SliceLayout]:
    """Permute/flip ``array`` (on ``geometry``) into canonical (S, P, L) order and describe how."""
    order, flips, spacing = canonical_layout(geometry)
    canon = np.transpose(array, order)
    for axis, f in enumerate(flips):
        if f:
            canon = np.flip(canon, axis=axis)
    canon = np.ascontiguousarray(canon)
    rows, cols = canon.shape[1], canon.shape[2]
    sy, sx = spacing[1], spacing[2]
    side = max(rows * sy, cols * sx)  # square physical field of view
    pr = max(0, int(round(side / sy)) - rows)
    pc = max(0, int(round(side / sx)) - cols)
    pad = (pr // 2, pr - pr // 2, pc // 2, pc - pc // 2)
    layout = SliceLayout(order, flips, tuple(canon.shape), (sy, sx), pad)
    return canon, layout


def from_canonical(canon: np.ndarray, layout: SliceLayout) -> np.ndarray:
    """Exact inverse of :func:`to_canonical` (undo flips, then the permutation)."""
    arr = canon
    for axis, f in enumerate(layout.flips):
        if f:
            arr = np.flip(arr, axis=axis)
    inverse = tuple(int(i) for i in np.argsort(layout.order))
    return np.ascontiguousarray(np.transpose(arr, inverse))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def to_model_grid(canon: np.ndarray, layout: SliceLayout, image_size: int | tuple[int, int],
                  context: int = 0, pad_value: float = -1.0, indices=None) -> torch.Tensor:
    """Slices of a canonical volume (already in model intensity units) as a ``[N, 2c+1, H, W]`` tensor.

    ``indices`` selects slices (default: all); channel ``context`` is the slice itself, channels before
    and after it are the inferior and superior neighbours. Padding uses ``pad_value`` (the model's
    background, -1).
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    n = canon.shape[0]
    idx = np.arange(n) if indices is None else np.asarray(indices)
    offsets = np.arange(-context, context + 1)
    gather = np.clip(idx[:, None] + offsets[None, :], 0, n - 1)  # [N, 2c+1]
    stack = torch.from_numpy(np.ascontiguousarray(canon[gather], dtype=np.float32))  # [N, C, rows, cols]
    r0, r1, c0, c1 = layout.pad
    if any(layout.pad):
        stack = F.pad(stack, (c0, c1, r0, r1), value=pad_value)
    return _resize(stack, size)


def from_model_grid(slices: torch.Tensor | np.ndarray, layout: SliceLayout) -> np.ndarray:
    """Model-grid slices ``[N, 1, H, W]`` (or ``[N, H, W]``) back to a canonical-order array ``[N, rows, cols]``."""
    x = torch.as_tensor(slices, dtype=torch.float32)
    if x.ndim == 3:
        x = x[:, None]
    rows, cols = layout.canonical_shape[1], layout.canonical_shape[2]
    r0, r1, c0, c1 = layout.pad
    x = _resize(x, (rows + r0 + r1, cols + c0 + c1))
    x = x[:, 0, r0:r0 + rows, c0:c0 + cols]
    return x.cpu().numpy()


def volume_to_slices(array: np.ndarray, geometry, image_size, context: int = 0,
                     pad_value: float = -1.0) -> tuple[torch.Tensor, SliceLayout]:
    """Convenience: canonical orientation + model grid for a whole volume."""
    canon, layout = to_canonical(array, geometry)
    return to_model_grid(canon, layout, image_size, context, pad_value), layout


def slices_to_volume(slices, layout: SliceLayout) -> np.ndarray:
    """Convenience: model-grid slices of a whole volume back onto its original array order and grid."""
    return from_canonical(from_model_grid(slices, layout), layout)
