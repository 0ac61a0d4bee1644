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

Physical scale (models whose checkpoint records the training in-plane pixel size, ``pixel_spacing_mm``):
step 2 is replaced by :func:`to_physical_grid`. Each canonical slice is resampled in plane onto a *canvas*
of square pixels of exactly that size (:class:`PhysicalGrid`, planned by :func:`plan_physical_grid`): the
canvas covers a box in millimetres (the whole slice, or the body's bounding box plus a margin found by
:func:`foreground_box_mm`, which crops away empty field of view), centred on it and rounded up to a whole
multiple of the network's down-sampling factor. So the network sees anatomy at the scale it was trained
at whatever the input's field of view and spacing. The resampling is separable and linear: a triangle
kernel whose half-width is the larger of the two pixel sizes (plain linear interpolation when enlarging,
an area-weighted average, i.e. antialiasing, when shrinking), written as one small matrix per axis
(:func:`resampling_matrix`); canvas pixels outside the slice get the background value.
:func:`from_physical_grid` maps the canvas back the same way; input pixels outside the canvas get a
background value (air for the sCT, 0 for the std).
"""

from __future__ import annotations

import itertools
import math
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


# ------------------------------------------------------------------------------------------------ physical scale
@dataclass(frozen=True)
class PhysicalGrid:
    """The model's canvas on the canonical slices: square pixels of ``pixel_mm``, ``shape`` (H, W), and the
    position of its first pixel's outer corner (``origin_mm``, rows then columns) in millimetres from the
    first pixel's outer corner of the canonical slice."""

    pixel_mm: float
    shape: tuple[int, int]
    origin_mm: tuple[float, float]

    @property
    def extent_mm(self) -> tuple[float, float]:
        return self.shape[0] * self.pixel_mm, self.shape[1] * self.pixel_mm


def resampling_matrix(n_in: int, s_in: float, n_out: int, s_out: float, origin_out: float = 0.0):
    """Linear resampling between two 1-D grids of pixel sizes ``s_in`` and ``s_out`` (mm).

    Input pixel ``i`` has its centre at ``(i + 0.5) s_in``, output pixel ``k`` at ``origin_out + (k + 0.5)
    s_out``. Weights are a triangle kernel of half-width ``h = max(s_in, s_out)`` in millimetres, normalised
    per output pixel: linear interpolation when ``s_out <= s_in``, an antialiasing average over the output
    pixel's footprint when ``s_out > s_in`` (the identity when the grids coincide). Returns ``(R, inside)``:
    ``R`` float32 ``[n_out, n_in]`` and ``inside`` bool ``[n_out]``, True where the output pixel's centre
    lies within the input's extent ``[0, n_in s_in]`` (rows of ``R`` outside it are zero).
    """
    y_in = (torch.arange(n_in, dtype=torch.float64) + 0.5) * float(s_in)
    y_out = float(origin_out) + (torch.arange(n_out, dtype=torch.float64) + 0.5) * float(s_out)
    h = max(float(s_in), float(s_out))
    w = (1.0 - (y_out[:, None] - y_in[None, :]).abs() / h).clamp_min(0.0)
    inside = (y_out >= 0.0) & (y_out <= n_in * float(s_in))
    total = w.sum(dim=1, keepdim=True)
    w = torch.where(total > 0, w / total.clamp_min(1e-300), torch.zeros_like(w))
    w[~inside] = 0.0
    return w.to(torch.float32), inside


def foreground_box_mm(canon: np.ndarray, spacing: tuple[float, float], margin_mm: float = 16.0,
                      level: float = -0.75, smooth_mm: float = 4.0) -> tuple[float, float, float, float] | None:
    """Bounding box ``(y0, y1, x0, x1)`` in mm of the body in a normalised canonical MR volume, plus a margin.

    ``canon`` is in model units (background near -1). Each slice is smoothed (Gaussian, ``smooth_mm``) so that
    background noise does not count, the maximum over slices is taken (a structure present in one slice only
    still counts) and thresholded at ``level``; the box of what remains grows by ``margin_mm`` on each side
    and is clipped to the slice. Returns None (no crop) when nothing exceeds ``level``.
    """
    from scipy import ndimage  # here: the rest of this module needs only numpy and torch

    sy, sx = (float(s) for s in spacing)
    peak = None
    for z in range(canon.shape[0]):
        sl = ndimage.gaussian_filter(np.asarray(canon[z], dtype=np.float32), (smooth_mm / sy, smooth_mm / sx),
                                     mode="nearest")
        peak = sl if peak is None else np.maximum(peak, sl)
    if peak is None:
        return None
    fg = peak > level
    if not fg.any():
        return None
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    ny, nx = canon.shape[1], canon.shape[2]
    y0 = max(0.0, rows[0] * sy - margin_mm)
    y1 = min(ny * sy, (rows[-1] + 1) * sy + margin_mm)
    x0 = max(0.0, cols[0] * sx - margin_mm)
    x1 = min(nx * sx, (cols[-1] + 1) * sx + margin_mm)
    return float(y0), float(y1), float(x0), float(x1)


def plan_physical_grid(layout: SliceLayout, pixel_mm: float, multiple: int = 1,
                       box_mm: tuple[float, float, float, float] | None = None) -> PhysicalGrid:
    """The canvas of ``pixel_mm`` pixels covering ``box_mm`` (default: the whole canonical slice).

    Its size is rounded up to a multiple of ``multiple`` (the network's down-sampling factor) and it is
    centred on the box, so the box is covered and the extra pixels lie evenly on both sides.
    """
    pixel_mm = float(pixel_mm)
    if not (math.isfinite(pixel_mm) and pixel_mm > 0):
        raise ValueError(f"pixel size must be a positive number of mm, got {pixel_mm!r}")
    rows, cols = layout.canonical_shape[1], layout.canonical_shape[2]
    sy, sx = layout.pixel_spacing
    y0, y1, x0, x1 = box_mm if box_mm is not None else (0.0, rows * sy, 0.0, cols * sx)
    m = max(1, int(multiple))
    h = max(m, int(math.ceil((y1 - y0) / pixel_mm / m - 1e-9)) * m)
    w = max(m, int(math.ceil((x1 - x0) / pixel_mm / m - 1e-9)) * m)
    origin = (0.5 * (y0 + y1) - 0.5 * h * pixel_mm, 0.5 * (x0 + x1) - 0.5 * w * pixel_mm)
    return PhysicalGrid(pixel_mm, (h, w), (float(origin[0]), float(origin[1])))


def _matrices_to_canvas(layout: SliceLayout, grid: PhysicalGrid):
    rows, cols = layout.canonical_shape[1], layout.canonical_shape[2]
    sy, sx = layout.pixel_spacing
    ry, iy = resampling_matrix(rows, sy, grid.shape[0], grid.pixel_mm, grid.origin_mm[0])
    rx, ix = resampling_matrix(cols, sx, grid.shape[1], grid.pixel_mm, grid.origin_mm[1])
    return ry, rx, iy[:, None] & ix[None, :]


def to_physical_grid(canon: np.ndarray, layout: SliceLayout, grid: PhysicalGrid, context: int = 0,
                     pad_value: float = -1.0, indices=None) -> torch.Tensor:
    """Like :func:`to_model_grid`, onto a :class:`PhysicalGrid` canvas: ``[N, 2c+1, H, W]`` float32."""
    n = canon.shape[0]
    idx = np.arange(n) if indices is None else np.asarray(indices)
    offsets = np.arange(-context, context + 1)
    gather = np.clip(idx[:, None] + offsets[None, :], 0, n - 1)
    stack = torch.from_numpy(np.ascontiguousarray(canon[gather], dtype=np.float32))  # [N, C, rows, cols]
    ry, rx, inside = _matrices_to_canvas(layout, grid)
    out = torch.matmul(torch.matmul(ry, stack), rx.T)
    return torch.where(inside, out, torch.full_like(out, float(pad_value)))


def from_physical_grid(slices: torch.Tensor | np.ndarray, layout: SliceLayout, grid: PhysicalGrid,
                       background: float = -1.0) -> np.ndarray:
    """Canvas slices ``[N, 1, H, W]`` (or ``[N, H, W]``) back to canonical ``[N, rows, cols]``; pixels of the slice
    outside the canvas get ``background``."""
    x = torch.as_tensor(slices, dtype=torch.float32)
    if x.ndim == 4:
        x = x[:, 0]
    rows, cols = layout.canonical_shape[1], layout.canonical_shape[2]
    sy, sx = layout.pixel_spacing
    ry, iy = resampling_matrix(grid.shape[0], grid.pixel_mm, rows, sy, -grid.origin_mm[0])
    rx, ix = resampling_matrix(grid.shape[1], grid.pixel_mm, cols, sx, -grid.origin_mm[1])
    out = torch.matmul(torch.matmul(ry, x.cpu()), rx.T)
    inside = iy[:, None] & ix[None, :]
    out = torch.where(inside, out, torch.full_like(out, float(background)))
    return out.numpy()
