"""DICOM CT export of the sCT (io/dicom.py, `mrtoct synthesize --dicom-out`), read back with independent readers:
SimpleITK/GDCM (what Slicer and most toolkits use to stack a series) and pydicom (every tag), compared with the
NIfTI output of the same run."""

import datetime

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import rotation_direction

from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.assets import DEMO_CASE, DEMO_MODEL
from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.io.dicom import export_dicom, new_reference
from MRtoCTSynthesisLib.io.volume import Volume, make_geometry, read_volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: type 1 and type 2 attributes of the CT Image IOD's mandatory modules (PS3.3 A.3): patient, general study,
#: general series, frame of reference, general equipment, general image, image plane, image pixel, CT image, SOP common
CT_IOD_TAGS = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "Modality", "SeriesInstanceUID",
               "SeriesNumber", "FrameOfReferenceUID", "PositionReferenceIndicator", "Manufacturer", "InstanceNumber",
               "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness", "SamplesPerPixel",
               "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
               "PixelRepresentation", "PixelData", "ImageType", "RescaleIntercept", "RescaleSlope", "KVP",
               "AcquisitionNumber", "SOPClassUID", "SOPInstanceUID", "PatientPosition"]


def read_series(folder):
    """{SeriesDescription: (SimpleITK image, [pydicom datasets in the reader's slice order])} of a DICOM folder."""
    out = {}
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image = reader.Execute()
        headers = [pydicom.dcmread(f) for f in files]
        out[str(headers[0].SeriesDescription)] = (image, headers)
    return out


def check_against_volume(image, headers, volume, hu_tol):
    """Geometry and values of a read-back series equal the volume's (same voxel grid, values within hu_tol)."""
    g = volume.geometry
    assert image.GetSize() == g.size
    assert np.allclose(image.GetSpacing(), g.spacing, atol=1e-6)
    assert np.allclose(image.GetOrigin(), g.origin, atol=1e-4)
    assert np.allclose(image.GetDirection(), g.direction, atol=1e-6)
    assert np.abs(sitk.GetArrayFromImage(image).astype(np.float64) - volume.array).max() <= hu_tol
    m = g.index_to_physical()
    for k, ds in enumerate(headers):  # pydicom: each file's own plane and values, against the volume's slice k
        assert ds.SOPClassUID == CT_IMAGE_STORAGE and ds.Modality == "CT"
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], (m @ [0, 0, k, 1])[:3], atol=1e-4)
        assert np.allclose([float(v) for v in ds.ImageOrientationPatient],
                           [*g.direction_matrix[:, 0], *g.direction_matrix[:, 1]], atol=1e-6)
        assert np.allclose([float(v) for v in ds.PixelSpacing], [g.spacing[1], g.spacing[0]])
        assert float(ds.SliceThickness) == pytest.approx(g.spacing[2])
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(hu - volume.array[k]).max() <= hu_tol
        missing = [t for t in CT_IOD_TAGS if t not in ds]
        assert not missing, missing


@pytest.mark.skipif(not DEMO_MODEL.exists(), reason="bundled demo model not present in this checkout")
def test_demo_sct_as_dicom_imports_with_the_nifti_geometry_and_hu(tmp_path, capsys, one_torch_thread):
    nifti, std_nifti, folder = tmp_path / "sct.nii.gz", tmp_path / "std.nii.gz", tmp_path / "dicom"
    assert main(["synthesize", "--mri", str(DEMO_CASE / "mr.nii.gz"), "--model", str(DEMO_MODEL), "--out-ct",
                 str(nifti), "--out-std", str(std_nifti), "--steps", "2", "--samples", "2", "--dicom-out", str(folder),
                 "--dicom-std", "--dicom-patient-name", "Test^Phantom"]) == 0
    printed = capsys.readouterr().out
    assert "DICOM CT series" in printed and "new patient ID" in printed  # the new identity is stated
    sct, std = read_volume(nifti), read_volume(std_nifti)
    assert sct.geometry == read_volume(DEMO_CASE / "mr.nii.gz").geometry
    series = read_series(folder)
    assert len(series) == 2
    (ct_desc, (ct_img, ct_h)), = [(d, s) for d, s in series.items() if "uncertainty" not in d]
    (_, (std_img, std_h)), = [(d, s) for d, s in series.items() if "uncertainty" in d]
    assert "synthetic" in ct_desc.lower()
    check_against_volume(ct_img, ct_h, sct, hu_tol=0.5)  # whole HU: rounding moves a value by <= 0.5
    check_against_volume(std_img, std_h, std, hu_tol=0.05 + 1e-6)  # 0.1 HU steps
    first = ct_h[0]
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"] and first.SyntheticData == "YES"
    assert "SYNTHETIC" in first.ImageComments and "not acquired on a CT scanner" in first.DerivationDescription
    assert (float(first.RescaleSlope), float(first.RescaleIntercept), first.RescaleType) == (1.0, -1024.0, "HU")
    assert str(first.PatientName) == "Test^Phantom" and first.PatientID.startswith("MRTOCT-")
    every = ct_h + std_h
    assert len({ds.SOPInstanceUID for ds in every}) == len(every)
    for key in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID"):
        assert len({ds.get(key) for ds in every}) == 1, key
    assert ct_h[0].SeriesInstanceUID != std_h[0].SeriesInstanceUID
    assert [int(ds.InstanceNumber) for ds in ct_h] == list(range(1, 37))


def write_mr_dicom(volume, folder, tags):
    """An MR series written by SimpleITK/GDCM (independent of the engine's writer), one file per slice."""
    folder.mkdir()
    image = sitk.Cast(volume.to_sitk(), sitk.sitkInt16)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    now = datetime.datetime.now()
    common = {"0008|0060": "MR", "0008|0021": now.strftime("%Y%m%d"), "0008|0031": now.strftime("%H%M%S"),
              "0020|0037": "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])), **tags}
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        for tag, value in common.items():
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"mr_{k:03d}.dcm"))
        writer.Execute(sl)


@pytest.mark.skipif(not DEMO_MODEL.exists(), reason="bundled demo model not present in this checkout")
def test_dicom_mri_gives_the_sct_its_patient_study_and_frame_of_reference(demo_four_slices, tmp_path, capsys):
    mr = read_volume(demo_four_slices / "mr.nii.gz")
    g = mr.geometry
    oblique = Volume(mr.array, make_geometry(g.size, g.spacing, (12.5, -40.0, 7.25), rotation_direction(10, -5, 25)))
    uid = pydicom.uid.generate_uid
    tags = {"0010|0010": "Doe^Jane", "0010|0020": "P-0042", "0020|000d": uid(), "0020|000e": uid(),
            "0020|0052": uid(), "0008|103e": "T1 for MR-only planning", "0018|5100": "HFS"}
    mri_dir = tmp_path / "mri"
    write_mr_dicom(oblique, mri_dir, tags)
    mri_read = read_volume(mri_dir)
    assert mri_read.geometry.matches(oblique.geometry, tol_mm=1e-3)
    out = tmp_path / "sct_dicom"
    # --out-ct DIR/ is the same as --dicom-out DIR
    assert main(["synthesize", "--mri", str(mri_dir), "--model", str(DEMO_MODEL), "--out-ct", str(out) + "/",
                 "--steps", "1", "--info-json", str(tmp_path / "info.json")]) == 0
    assert "taken from the MRI's DICOM series" in capsys.readouterr().out
    (_, (image, headers)), = read_series(out).items()
    mri_headers = [pydicom.dcmread(f) for f in
                   sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(mri_dir), tags["0020|000e"])]
    for ds in headers:
        assert str(ds.PatientName) == "Doe^Jane" and ds.PatientID == "P-0042" and ds.PatientPosition == "HFS"
        assert ds.StudyInstanceUID == tags["0020|000d"] and ds.FrameOfReferenceUID == mri_headers[0].FrameOfReferenceUID
        assert ds.SeriesInstanceUID != tags["0020|000e"]
    # each sCT slice points at the MRI slice at the same position
    by_uid = {m.SOPInstanceUID: m for m in mri_headers}
    for ds in headers:
        src = by_uid[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert np.allclose([float(v) for v in src.ImagePositionPatient],
                           [float(v) for v in ds.ImagePositionPatient], atol=1e-3)
    assert image.GetSize() == mri_read.geometry.size
    assert np.allclose(image.GetOrigin(), mri_read.geometry.origin, atol=1e-3)
    assert np.allclose(image.GetDirection(), mri_read.geometry.direction, atol=1e-5)
    assert np.allclose(image.GetSpacing(), mri_read.geometry.spacing, atol=1e-4)


def test_left_handed_oblique_volume_keeps_every_voxel_in_place(tmp_path):
    """A grid whose k axis runs against the slice normal is written as it is; a reader stacks the slices along the
    normal, so it sees the same voxels with k reversed: every voxel's value sits at the same LPS point."""
    rng = np.random.default_rng(3)
    d = np.asarray(rotation_direction(20, -10, 35)).reshape(3, 3)
    d[:, 2] *= -1  # left-handed
    vol = Volume(rng.uniform(-1000, 2000, size=(5, 6, 7)).astype(np.float32),
                 make_geometry((7, 6, 5), (0.7, 1.3, 2.9), (-12.5, 30.25, 101.0), tuple(d.ravel())))
    export_dicom(vol, tmp_path / "lh", new_reference())
    (_, (image, _)), = read_series(tmp_path / "lh").items()
    back = Volume.from_sitk(image)
    m_in, m_back = vol.geometry.index_to_physical(), np.linalg.inv(back.geometry.index_to_physical())
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij")
    idx = np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    cont = (m_back @ (m_in @ idx))[:3]
    assert np.abs(cont - np.rint(cont)).max() < 1e-3  # voxel centres coincide
    i2, j2, k2 = np.rint(cont).astype(int)
    assert np.abs(back.array[k2, j2, i2] - vol.array[kk.ravel(), jj.ravel(), ii.ravel()]).max() <= 0.5
    assert np.allclose(back.geometry.direction_matrix[:, 2], -d[:, 2], atol=1e-6)


def test_dicom_output_is_checked_before_any_work_and_never_mixed(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "old.dcm").write_bytes(b"keep me")
    base = ["synthesize", "--mri", str(DEMO_CASE / "mr.nii.gz"), "--model", str(DEMO_MODEL)]
    assert main([*base, "--dicom-out", str(busy)]) == 2
    assert "not an empty folder" in capsys.readouterr().err and (busy / "old.dcm").read_bytes() == b"keep me"
    assert main([*base, "--out-ct", str(tmp_path / "a.nii.gz"), "--dicom-std"]) == 2
    assert "only apply to DICOM output" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # like argparse's own "required" errors: usage, error, Fix, status 2
        main(base)
    assert exit_.value.code == 2
    assert "arguments are required: --out-ct (or --dicom-out)" in capsys.readouterr().err
    with pytest.raises(InputError, match="do not fit a 16-bit"):
        export_dicom(Volume(np.full((2, 3, 3), 40000, np.float32), make_geometry((3, 3, 2))), tmp_path / "big",
                     new_reference())
    assert not (tmp_path / "big").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".big")]


def test_reference_from_a_file_list_sorts_like_the_folder_reader(demo_four_slices, tmp_path):
    """The Slicer module knows the MRI's files (its DICOM database), not always a folder of one series."""
    import random

    mr = read_volume(demo_four_slices / "mr.nii.gz")
    uid = pydicom.uid.generate_uid
    tags = {"0010|0020": "P-7", "0020|000d": uid(), "0020|000e": uid(), "0020|0052": uid()}
    write_mr_dicom(mr, tmp_path / "mri", tags)
    from MRtoCTSynthesisLib.io.dicom import read_dicom_reference, synthetic_ct_tags

    by_folder = read_dicom_reference(tmp_path / "mri")
    files = sorted((tmp_path / "mri").iterdir())
    random.Random(0).shuffle(files)
    by_files = read_dicom_reference(files)
    assert by_files.source_instances == by_folder.source_instances and len(by_folder.source_instances) == 4
    assert by_files.patient["PatientID"] == "P-7" and by_files.study["StudyInstanceUID"] == tags["0020|000d"]
    # the tags an exporter outside io/dicom.py (Slicer's DICOM export) is given are the ones written here
    export_dicom(mr, tmp_path / "sct", by_files, derivation="test")
    (_, (_, headers)), = read_series(tmp_path / "sct").items()
    expected = synthetic_ct_tags("test")
    for key in ("Modality", "SeriesDescription", "DerivationDescription", "ImageComments"):
        assert headers[0].get(key) == expected[key], key
    assert tuple(headers[0].ImageType) == expected["ImageType"] and headers[0][0x0008001C].value == "YES"
