"""Property-based (hypothesis) tests of the volume reader/writer and the intensity mappings.

* Volume I/O: any 3D grid (1-12 voxels per axis, anisotropic 0.1-10 mm spacing, any origin, any
  orthonormal direction, flipped or not), any supported voxel type and file format round-trips through
  ``write_volume``/``read_volume`` with its values and geometry, and the geometry read back equals what
  SimpleITK itself reads from a file it wrote (the independent reference). Garbage bytes and truncated
  files give :class:`InputError`, never another exception and never silently different voxels.
* Intensity: the CT mapping on random dtypes and shapes (inverse, clipping, monotone, numpy == torch),
  the MR normalisation on random positive volumes of integer and float types, and ``check_ct_in_hu`` on
  random CTs with air versus the same CTs stored without their DICOM rescale.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.io.intensity import HU_MAX, HU_MIN, MRNormalization, check_ct_in_hu, hu_to_model, model_to_hu
from MRtoCTSynthesisLib.io.volume import READ_SUFFIXES, Volume, make_geometry, read_volume, write_volume

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64]
FORMATS = [".nii.gz", ".nii", ".nrrd", ".mha"]


# ------------------------------------------------------------------------------------------ strategies
@st.composite
def directions(draw):
    """A random orthonormal 3x3 matrix (row-major tuple): a rotation from a unit quaternion, maybe flipped."""
    q = np.array(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4)))
    assume(np.linalg.norm(q) > 0.1)
    w, x, y, z = q / np.linalg.norm(q)
    r = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    if draw(st.booleans()):
        r[:, draw(st.integers(0, 2))] *= -1  # a left-handed grid (one flipped index axis)
    return tuple(float(v) for v in r.ravel())


def _values(rng: np.random.Generator, dtype, shape) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 6)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


volumes = st.fixed_dictionaries({
    "size": st.tuples(*[st.integers(1, 12)] * 3),  # ITK order (nx, ny, nz)
    "spacing": st.tuples(*[st.floats(0.1, 10.0)] * 3),
    "origin": st.tuples(*[st.floats(-500.0, 500.0)] * 3),
    "direction": directions(),
    "dtype": st.sampled_from(DTYPES),
    "suffix": st.sampled_from(FORMATS),
    "seed": st.integers(0, 2 ** 32 - 1),
})


def _geometry_close(got, want, nifti: bool):
    """NIfTI stores origin and direction (qform/sform) in float32; NRRD and MetaImage in decimal text."""
    tol = 2e-4 if nifti else 1e-9
    assert got.size == want.size
    np.testing.assert_allclose(got.spacing, want.spacing, rtol=1e-6 if nifti else 1e-12)
    np.testing.assert_allclose(got.origin, want.origin, atol=tol * max(1.0, max(map(abs, want.origin))))
    np.testing.assert_allclose(got.direction, want.direction, atol=2e-5 if nifti else 1e-9)


# ------------------------------------------------------------------------------------------ volume I/O
@FUZZ
@given(v=volumes)
def test_volume_round_trip_keeps_values_and_geometry(tmp_path_factory, v):
    tmp = tmp_path_factory.mktemp("rt")
    geom = make_geometry(v["size"], v["spacing"], v["origin"], v["direction"])
    arr = _values(np.random.default_rng(v["seed"]), v["dtype"], geom.shape)
    path = write_volume(Volume(arr, geom), tmp / f"vol{v['suffix']}")

    got = read_volume(path)
    assert got.array.dtype == np.float32 and got.array.shape == arr.shape
    np.testing.assert_array_equal(got.array, arr.astype(np.float32))
    _geometry_close(got.geometry, geom, nifti=v["suffix"].startswith(".nii"))

    # independent reference: SimpleITK writing and reading the same image itself
    ref_img = sitk.GetImageFromArray(arr)
    ref_img.SetSpacing(geom.spacing)
    ref_img.SetOrigin(geom.origin)
    ref_img.SetDirection(geom.direction)
    ref_path = tmp / f"ref{v['suffix']}"
    sitk.WriteImage(ref_img, str(ref_path))
    ref = sitk.ReadImage(str(ref_path))
    assert got.geometry.size == tuple(ref.GetSize())
    np.testing.assert_allclose(got.geometry.spacing, ref.GetSpacing(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(got.geometry.origin, ref.GetOrigin(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.geometry.direction, ref.GetDirection(), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got.array, sitk.GetArrayFromImage(ref).astype(np.float32))
    # index -> physical agrees with ITK's own at the far corner
    corner = tuple(s - 1 for s in geom.size)
    np.testing.assert_allclose(got.geometry.index_to_physical() @ np.array([*corner, 1.0]),
                               [*ref.TransformIndexToPhysicalPoint(corner), 1.0], atol=1e-6)


@FUZZ
@given(data=st.binary(min_size=0, max_size=700), suffix=st.sampled_from(READ_SUFFIXES))
def test_garbage_bytes_give_input_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("garbage") / f"junk{suffix}"
    path.write_bytes(data)
    with pytest.raises(InputError) as err:
        read_volume(path, "MRI")
    assert err.value.fix


@FUZZ
@given(v=volumes, cut=st.floats(0.0, 1.0, exclude_max=True), compress=st.booleans())
def test_truncated_file_gives_input_error_or_the_complete_volume(tmp_path_factory, v, cut, compress):
    """A file cut short is refused, except when only bytes that carry no voxel (a gzip trailer, padding)
    were lost; then the volume read back is exactly the original -- never silently different voxels."""
    tmp = tmp_path_factory.mktemp("trunc")
    size = tuple(max(2, s) for s in v["size"])
    img = sitk.GetImageFromArray(_values(np.random.default_rng(v["seed"]), v["dtype"], size[::-1]))
    img.SetSpacing(v["spacing"])
    path = tmp / f"vol{v['suffix']}"
    sitk.WriteImage(img, str(path), compress)
    data = path.read_bytes()
    path.write_bytes(data[:int(cut * len(data))])
    try:
        got = read_volume(path, "MRI")
    except InputError as err:
        assert err.fix
        return
    np.testing.assert_array_equal(got.array, sitk.GetArrayFromImage(img).astype(np.float32))


# ------------------------------------------------------------------------------------------ intensity
@settings(max_examples=50, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=4), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2 ** 32 - 1), as_torch=st.booleans())
def test_ct_mapping_inverse_clip_monotone_any_dtype(shape, dtype, seed, as_torch):
    rng = np.random.default_rng(seed)
    hu = rng.uniform(HU_MIN - 3000, HU_MAX + 3000, size=shape).astype(dtype)
    x = hu_to_model(torch.from_numpy(hu) if as_torch else hu)
    x = x.numpy() if as_torch else np.asarray(x)
    assert x.shape == hu.shape and x.dtype == hu.dtype
    assert np.all(x >= -1) and np.all(x <= 1)
    np.testing.assert_allclose(x, hu_to_model(np.clip(hu.astype(np.float64), HU_MIN, HU_MAX)),
                               atol=1e-6 if dtype == np.float32 else 1e-12)
    back = model_to_hu(x.astype(np.float64))
    tol = 2e-3 if dtype == np.float32 else 1e-8  # float32 model units: 1 ulp of 1.0 is ~2.5e-4 HU
    np.testing.assert_allclose(back, np.clip(hu, HU_MIN, HU_MAX), atol=tol)
    order = np.argsort(hu.ravel(), kind="stable")
    assert np.all(np.diff(x.ravel()[order]) >= 0)
    # model values outside [-1, 1] clip to the ends of the HU range
    np.testing.assert_array_equal(model_to_hu(np.array([-7.0, 7.0])), [HU_MIN, HU_MAX])


@settings(max_examples=50, deadline=None)
@given(shape=st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2 ** 32 - 1), constant=st.booleans())
def test_mr_normalisation_any_dtype(shape, dtype, seed, constant):
    rng = np.random.default_rng(seed)
    vol = np.abs(_values(rng, dtype, shape))
    if dtype == np.int16 or dtype == np.int32:  # abs of the most negative integer wraps around
        vol = np.where(vol < 0, 0, vol).astype(dtype)
    if constant:
        vol = np.full(shape, vol.flat[0], dtype=dtype)
    if float(vol.max()) - float(vol.min()) <= 1e-6 * max(1.0, abs(float(vol.max()))):
        with pytest.raises(InputError, match="constant") as err:
            MRNormalization.fit(vol)
        assert err.value.fix
        return
    norm = MRNormalization.fit(vol)
    assert np.isfinite(norm.lo) and np.isfinite(norm.hi) and norm.hi > norm.lo
    x = norm.apply(vol.astype(np.float32))
    assert x.shape == vol.shape and np.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
    # order preserving: a brighter voxel never maps below a darker one
    order = np.argsort(vol.ravel(), kind="stable")
    assert np.all(np.diff(x.ravel()[order].astype(np.float64)) >= -1e-6)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(20, 400), seed=st.integers(0, 2 ** 32 - 1), air_fraction=st.floats(0.05, 0.9))
def test_check_ct_in_hu_air_vs_missing_rescale(n, seed, air_fraction):
    """A CT with air (about -1000 HU) and bone passes; the same CT stored as HU + 1024 (raw 0..4095 with the
    DICOM rescale not applied) is refused with the rescale as the fix."""
    rng = np.random.default_rng(seed)
    n_air = max(1, int(air_fraction * n))
    hu = np.concatenate([rng.uniform(-1024, -950, n_air), rng.uniform(-100, 100, n - n_air),
                         rng.uniform(1100, 3071, 3)]).round()
    check_ct_in_hu(hu)
    check_ct_in_hu(hu.astype(np.int16))
    with pytest.raises(InputError, match="Hounsfield") as err:
        check_ct_in_hu((hu + 1024).astype(np.uint16))
    assert "RescaleIntercept" in err.value.fix


@FUZZ
@given(v=volumes, flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)),
                                 min_size=1, max_size=4))
def test_corrupted_bytes_give_input_error_or_a_volume(tmp_path_factory, v, flips):
    """Flipped bytes anywhere (header or voxels) give an InputError or a 3D float32 volume, nothing else."""
    tmp = tmp_path_factory.mktemp("flip")
    size = tuple(max(2, s) for s in v["size"])
    img = sitk.GetImageFromArray(_values(np.random.default_rng(v["seed"]), v["dtype"], size[::-1]))
    path = tmp / f"vol{v['suffix']}"
    sitk.WriteImage(img, str(path))
    data = bytearray(path.read_bytes())
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    path.write_bytes(bytes(data))
    try:
        got = read_volume(path, "MRI")
    except InputError as err:
        assert err.fix
        return
    assert got.array.dtype == np.float32 and got.array.ndim == 3 and np.isfinite(got.array).all()
