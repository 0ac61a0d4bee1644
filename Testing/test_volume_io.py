"""Volume I/O keeps geometry exactly and refuses bad inputs with a message that names the fix."""

import os

import numpy as np
import pytest
import SimpleITK as sitk

from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.io.volume import Geometry, Volume, read_volume, require_same_geometry, write_volume


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_geometry_and_values(tmp_path, oblique_image, suffix):
    src = tmp_path / f"in{suffix}"
    sitk.WriteImage(oblique_image, str(src))
    vol = read_volume(src)
    assert vol.array.shape == (7, 10, 13)
    # independent reference: SimpleITK's own reading of the same file
    ref = sitk.ReadImage(str(src))
    np.testing.assert_allclose(vol.geometry.spacing, ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(vol.geometry.origin, ref.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(vol.geometry.direction, ref.GetDirection(), atol=1e-6)
    out = write_volume(vol, tmp_path / f"out{suffix}")
    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(back.GetSpacing(), oblique_image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), oblique_image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), oblique_image.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(oblique_image))


def test_index_to_physical_matches_simpleitk(oblique_image):
    g = Geometry.from_sitk(oblique_image)
    m = g.index_to_physical()
    for idx in [(0, 0, 0), (12, 9, 6), (3, 7, 2)]:
        expect = oblique_image.TransformIndexToPhysicalPoint(idx)
        np.testing.assert_allclose(m @ np.array([*idx, 1.0]), [*expect, 1.0], atol=1e-9)


def test_dicom_series_round_trip(tmp_path):
    arr = (np.arange(4 * 6 * 5).reshape(4, 6, 5) * 10 - 500).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 2.5))
    img.SetOrigin((10.0, -20.0, 5.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(arr.shape[0]):
        sl = img[:, :, k]
        sl.SetMetaData("0020|000e", uid)  # series instance UID
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    vol = read_volume(tmp_path, "CT")
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    np.testing.assert_allclose(vol.geometry.spacing, (0.8, 0.8, 2.5), atol=1e-4)
    np.testing.assert_allclose(vol.geometry.origin, (10.0, -20.0, 5.0), atol=1e-4)


def _write(tmp_path, name, img):
    p = tmp_path / name
    sitk.WriteImage(img, str(p))
    return p


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: sitk.Image(8, 8, sitk.sitkFloat32), "2D"),
        (lambda: sitk.Image([4, 4, 4, 3], sitk.sitkFloat32), "4D"),
        (lambda: sitk.Image([4, 4, 4], sitk.sitkVectorUInt8, 3), "components"),
    ],
)
def test_bad_dimensions_and_rgb_are_refused(tmp_path, make, needle):
    p = _write(tmp_path, "bad.nrrd", make())
    with pytest.raises(InputError, match=needle) as err:
        read_volume(p, "MRI")
    assert err.value.fix


def test_nan_voxels_refused(tmp_path):
    arr = np.zeros((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    # ITK's NIfTI reader turns NaN into 0 by itself; NRRD keeps them, so test with NRRD
    p = _write(tmp_path, "nan.nrrd", sitk.GetImageFromArray(arr))
    with pytest.raises(InputError, match="1 NaN/Inf"):
        read_volume(p)


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(InputError, match="could not be read"):
        read_volume(junk)


def test_atomic_write_keeps_good_file_on_failure(tmp_path, oblique_image, monkeypatch):
    vol = Volume.from_sitk(oblique_image)
    target = tmp_path / "sct.nii.gz"
    write_volume(vol, target)
    before = target.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(InputError, match="could not write .*disk full.* previous file is unchanged"):
        write_volume(vol.with_array(vol.array * 2), target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["sct.nii.gz"]  # no temp file left behind


def test_write_refuses_unknown_suffix(tmp_path, oblique_image):
    with pytest.raises(InputError, match="suffix"):
        write_volume(Volume.from_sitk(oblique_image), tmp_path / "x.png")


def test_geometry_mismatch_names_both_grids(oblique_image):
    a = Volume.from_sitk(oblique_image)
    moved = sitk.Image(oblique_image)
    moved.SetOrigin((0.0, 0.0, 0.0))
    b = Volume.from_sitk(moved)
    with pytest.raises(InputError, match="different grids") as err:
        require_same_geometry(a, b, "MRI", "CT")
    assert "register" in err.value.fix


def test_written_files_get_normal_permissions(tmp_path, oblique_image):
    """Atomic writes go through mkstemp (mode 0600); the final file must honour the umask like open() would."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    out = write_volume(Volume.from_sitk(oblique_image), tmp_path / "sct.nii.gz")
    reference = tmp_path / "plain.txt"
    reference.write_text("x")  # created by open(): 0666 & ~umask
    assert (out.stat().st_mode & 0o777) == (reference.stat().st_mode & 0o777) == (0o666 & ~umask)
