"""Axial slicing to the model grid and reassembly onto the input grid, checked against physical coordinates."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MRtoCTSynthesisLib.io.slicing import (
    from_canonical,
    slices_to_volume,
    to_canonical,
    to_model_grid,
    volume_to_slices,
)
from MRtoCTSynthesisLib.io.volume import Geometry, make_geometry


def _physical_coords(geometry):
    """LPS coordinates of every voxel, as arrays shaped like the volume (independent of slicing.py)."""
    img = sitk.Image(list(geometry.size), sitk.sitkFloat32)
    geometry.apply_to(img)
    k, j, i = np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij")
    idx = np.stack([i.ravel(), j.ravel(), k.ravel()], 1)
    pts = np.array([img.TransformContinuousIndexToPhysicalPoint(p.astype(float).tolist()) for p in idx])
    return [pts[:, a].reshape(geometry.shape) for a in range(3)]


@pytest.mark.parametrize("direction", [
    (1, 0, 0, 0, 1, 0, 0, 0, 1),
    (-1, 0, 0, 0, -1, 0, 0, 0, 1),            # RAS-stored (NIfTI style)
    (0, 0, 1, 1, 0, 0, 0, 1, 0),              # sagittal acquisition: k runs along L
    (0, 1, 0, 0, 0, -1, -1, 0, 0),            # permuted and flipped
])
def test_canonical_order_runs_superior_posterior_left(direction):
    g = make_geometry((5, 4, 3), (0.9, 1.1, 2.0), (3.0, -7.0, 11.0), direction)
    x, y, z = _physical_coords(g)
    cz, _ = to_canonical(z, g)
    cy, _ = to_canonical(y, g)
    cx, layout = to_canonical(x, g)
    assert np.all(np.diff(cz, axis=0) > 0) and np.allclose(np.diff(cz, axis=1),
                                                           0) and np.allclose(np.diff(cz, axis=2), 0)
    assert np.all(np.diff(cy, axis=1) > 0)
    assert np.all(np.diff(cx, axis=2) > 0)
    np.testing.assert_array_equal(from_canonical(cx, layout), x)


def test_oblique_volume_round_trip_exact_when_grid_matches(oblique_image):
    g = Geometry.from_sitk(oblique_image)
    arr = sitk.GetArrayFromImage(oblique_image)
    canon, layout = to_canonical(arr, g)
    # pick the model size equal to the padded slice so resizing is the identity
    h = canon.shape[1] + layout.pad[0] + layout.pad[1]
    w = canon.shape[2] + layout.pad[2] + layout.pad[3]
    sy, sx = layout.pixel_spacing
    assert abs(h * sy - w * sx) <= max(sy, sx)  # square field of view in millimetres, not in pixels
    slices = to_model_grid(canon, layout, (h, w))
    np.testing.assert_allclose(slices_to_volume(slices, layout), arr, atol=1e-6)


def test_square_fov_padding_preserves_aspect():
    # rows 1 mm, cols 2 mm: 40 rows x 20 cols is a 40 mm x 40 mm field of view -> no padding needed
    g = make_geometry((20, 40, 3), (2.0, 1.0, 3.0))
    _, layout = to_canonical(np.zeros(g.shape, np.float32), g)
    assert layout.pad == (0, 0, 0, 0)
    g2 = make_geometry((20, 20, 3), (1.0, 1.0, 3.0))
    canon = np.random.default_rng(0).normal(size=g2.shape).astype(np.float32)
    canon2, layout2 = to_canonical(canon, g2)
    assert layout2.pad == (0, 0, 0, 0)


def test_context_channels_and_edges():
    g = make_geometry((8, 8, 5))
    arr = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None], g.shape).copy()
    slices, _ = volume_to_slices(arr, g, 8, context=2)
    assert slices.shape == (5, 5, 8, 8)
    # channel c of slice k holds slice clip(k + c - 2)
    for k in range(5):
        for c in range(5):
            assert torch.all(slices[k, c] == float(np.clip(k + c - 2, 0, 4)))


def test_resize_round_trip_smooth_image_is_close():
    g = make_geometry((50, 50, 4), (1.2, 1.2, 3.0))
    yy, xx = np.meshgrid(np.linspace(-1, 1, 50), np.linspace(-1, 1, 50), indexing="ij")
    arr = np.broadcast_to(np.sin(2 * xx) * np.cos(3 * yy), (4, 50, 50)).astype(np.float32)
    slices, layout = volume_to_slices(arr, g, 64)
    assert slices.shape == (4, 1, 64, 64)
    back = slices_to_volume(slices, layout)
    assert back.shape == arr.shape
    assert np.abs(back - arr)[:, 2:-2, 2:-2].max() < 0.02
