"""DICOM CT series of a synthetic CT, for treatment-planning systems (MR-only radiotherapy) and PACS.

:func:`write_dicom_series` writes a :class:`~.volume.Volume` in HU as one series of the **CT Image Storage** IOD
(SOP class 1.2.840.10008.5.1.4.1.1.2), one file per slice, with pydicom:

* **Geometry** (LPS, as the volume's): slice ``k`` of the volume (numpy ``array[k]``, ITK index axis 2) is one
  image; ``ImageOrientationPatient`` = the direction cosines of the i axis (along a row) and of the j axis
  (down a column), ``ImagePositionPatient`` = the LPS position of voxel ``(0, 0, k)``, ``PixelSpacing`` =
  ``(spacing_j, spacing_i)`` (row spacing first), ``SliceThickness`` = ``SpacingBetweenSlices`` = ``spacing_k``.
  A left-handed volume (``k`` against the slice normal) is written as it is: readers (SimpleITK/GDCM, Slicer)
  stack the slices along the normal, so they see the same voxels with ``k`` reversed.
* **Intensities**: signed 16-bit stored values with ``RescaleSlope``/``RescaleIntercept`` (``RescaleType`` HU):
  the sCT as whole HU (slope 1, intercept -1024, as CT scanners store it; rounding moves a value by at most
  0.5 HU), a std map in 0.1 HU steps (slope 0.1) when its maximum allows.
* **Identity**: new SOP instance and series UIDs always. Patient, study and frame of reference come from the
  input MRI's DICOM when there is one (:func:`read_dicom_reference`), so the sCT lands in the MRI's study and
  shares its frame of reference (a planning system then aligns them without registration); each sCT slice
  points at its MRI slice in ``SourceImageSequence``. Without an MRI DICOM, :func:`new_reference` makes a new
  patient ID, study and frame of reference, and :attr:`DicomReference.note` says so.
* **Synthetic, stated**: ``ImageType`` ``DERIVED\\SECONDARY\\AXIAL``, ``SyntheticData`` ``YES`` (0008,001C),
  "synthetic" in ``SeriesDescription``, and ``DerivationDescription`` / ``ImageComments`` saying how it was
  made and that it was not acquired on a CT scanner.

:func:`export_dicom` writes the sCT (and optionally its Monte-Carlo std map as a second series of the same
study) into a new folder atomically: everything goes to a temporary sibling folder that is renamed into place
only when complete.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from .. import __version__
from ..errors import InputError
from .volume import Volume

__all__ = ["DicomReference", "DicomSeries", "read_dicom_reference", "new_reference", "write_dicom_series",
           "export_dicom", "check_dicom_output", "synthetic_ct_tags", "CT_WINDOW"]

#: default series descriptions ("synthetic" must stay in them)
SCT_DESCRIPTION = "Synthetic CT from MR (MRtoCTSynthesis)"
STD_DESCRIPTION = "Synthetic CT uncertainty: MC std in HU (not a CT)"
#: (center, width) in HU of the default display window of the sCT series (soft tissue)
CT_WINDOW = (40.0, 400.0)
#: tags copied from the MRI's first file: the patient and the study the sCT belongs to
PATIENT_TAGS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                "PatientWeight", "PatientSize")
STUDY_TAGS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
              "ReferringPhysicianName", "StudyDescription")
_INT16 = (-32768, 32767)
_PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])


@dataclass
class DicomReference:
    """Who and where an exported series belongs to: patient and study tags, the frame of reference and, when it
    came from an MRI DICOM series, that series' SOP instances in volume slice order."""

    patient: dict
    study: dict
    frame_of_reference_uid: str
    position_reference_indicator: str = ""
    patient_position: str = ""
    source_series_uid: str | None = None
    source_instances: list[tuple[str, str]] = field(default_factory=list)  # (SOP class UID, SOP instance UID)
    from_mri: bool = False
    note: str = ""


@dataclass
class DicomSeries:
    """What :func:`write_dicom_series` wrote."""

    folder: Path
    files: list[Path]
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    rescale_slope: float
    rescale_intercept: float


def read_dicom_reference(source, series_uid: str | None = None) -> DicomReference:
    """The patient, study and frame of reference of the input MRI's DICOM series, and its SOP instances in volume
    slice order. ``source``: the series folder (sorted as SimpleITK stacks it) or a list of its files (e.g. from
    Slicer's DICOM database; sorted here along the slice normal, as SimpleITK/GDCM do). Raises
    :class:`InputError` when there is no series, several series without ``series_uid``, or unreadable files."""
    import SimpleITK as sitk  # the same sorting as io.volume's DICOM reader

    if isinstance(source, (list, tuple)):
        files, folder = [str(f) for f in source], Path(str(source[0])).parent if source else Path(".")
        if not files:
            raise InputError("no DICOM files were given for the MRI.", "pass the MRI series' files or its folder.")
    else:
        folder = Path(source)
        series = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])
        if not series:
            raise InputError(f"{folder} holds no DICOM series.", "point at the MRI's DICOM series folder.")
        if series_uid is None:
            if len(series) > 1:
                raise InputError(f"{folder} holds {len(series)} DICOM series.",
                                 "move the MRI series into its own folder.")
            series_uid = series[0]
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))
    try:
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except Exception as exc:  # noqa: BLE001 - pydicom raises several types for damaged files
        raise InputError(f"the DICOM files in {folder} could not be read ({type(exc).__name__}: {exc}).",
                         "export the MRI series from the scanner or PACS again.") from None
    if isinstance(source, (list, tuple)):
        headers = sorted(headers, key=_position_along_normal)
    first = headers[0]
    patient = {k: first.get(k) for k in PATIENT_TAGS if first.get(k) not in (None, "")}
    study = {k: first.get(k) for k in STUDY_TAGS if first.get(k) not in (None, "")}
    if "StudyInstanceUID" not in study:
        study["StudyInstanceUID"] = generate_uid()
    for_uid = first.get("FrameOfReferenceUID")
    note = (f"patient, study and frame of reference taken from the MRI's DICOM series {first.get('SeriesInstanceUID')}"
            f" in {folder}")
    if not for_uid:
        for_uid = generate_uid()
        note += " (it has no frame of reference UID: a new one was made, so register the sCT to the MRI by hand)"
    instances = [(str(h.get("SOPClassUID", "")), str(h.get("SOPInstanceUID", ""))) for h in headers]
    return DicomReference(patient=patient, study=study, frame_of_reference_uid=str(for_uid),
                          position_reference_indicator=str(first.get("PositionReferenceIndicator", "") or ""),
                          patient_position=str(first.get("PatientPosition", "") or ""),
                          source_series_uid=str(first.get("SeriesInstanceUID", "")) or None,
                          source_instances=[i for i in instances if all(i)], from_mri=True, note=note)


def _position_along_normal(ds) -> float:
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        return float(np.dot(np.cross(iop[:3], iop[3:]), [float(v) for v in ds.ImagePositionPatient]))
    except (AttributeError, TypeError, ValueError):
        return float(ds.get("InstanceNumber", 0) or 0)


def new_reference(patient_id: str | None = None, patient_name: str = "") -> DicomReference:
    """A new patient ID (``MRTOCT-`` + 10 hex digits unless given), study and frame of reference, for an sCT whose
    MRI did not come as DICOM; :attr:`DicomReference.note` says that it is not linked to any MRI series."""
    study_uid = generate_uid()
    pid = patient_id or "MRTOCT-" + format(int(study_uid.rsplit(".", 1)[-1]) % 16 ** 10, "010X")
    return DicomReference(
        patient={"PatientName": patient_name, "PatientID": pid}, study={"StudyInstanceUID": study_uid},
        frame_of_reference_uid=generate_uid(), from_mri=False,
        note=f"the MRI was not DICOM: new patient ID {pid}, a new study and a new frame of reference were made; the "
             "sCT shares no frame of reference with any MRI series (a planning system will not align them by itself)")


def _geometry(volume: Volume):
    """(row cosines, column cosines, slice direction, spacing, origin) checked for an orthonormal direction."""
    g = volume.geometry
    d = g.direction_matrix
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise InputError("the volume's direction cosines are not orthonormal (sheared grid); a DICOM CT series "
                         "cannot describe it.", "resample the volume onto an orthogonal grid first.")
    return d[:, 0], d[:, 1], d[:, 2], np.asarray(g.spacing, dtype=np.float64), np.asarray(g.origin, np.float64)


def _rescale(values: np.ndarray, kind: str) -> tuple[float, float]:
    """(slope, intercept) of the stored int16 values: whole HU for a CT, 0.1 HU for a std map where it fits."""
    hi = float(np.max(values)) if values.size else 0.0
    lo = float(np.min(values)) if values.size else 0.0
    if kind == "std":
        slope, intercept = (0.1, 0.0) if hi < 0.1 * _INT16[1] else (1.0, 0.0)
    else:
        slope, intercept = 1.0, -1024.0
    if (lo - intercept) / slope < _INT16[0] - 0.5 or (hi - intercept) / slope > _INT16[1] + 0.5:
        raise InputError(f"values from {lo:g} to {hi:g} HU do not fit a 16-bit DICOM CT.",
                         "check the volume: an sCT lies within [-1024, 3071] HU.")
    return slope, intercept


def _ds_number(v: float) -> str:
    """A DS (decimal string, at most 16 characters) that reads back as close to ``v`` as 16 characters allow."""
    text = repr(float(v))
    if len(text) <= 16:
        return text
    for digits in range(15, 0, -1):
        text = f"{v:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{v:.0f}"


def synthetic_ct_tags(derivation: str = "", kind: str = "sct", description: str | None = None) -> dict:
    """The tags that say a series is synthetic, as :func:`write_dicom_series` writes them: ``Modality``,
    ``SeriesDescription``, ``ImageType``, ``SyntheticData`` (0008,001C), ``DerivationDescription``,
    ``ImageComments``. Exporters outside this module (the Slicer module through Slicer's DICOM export) set the
    same values from here."""
    what = "synthetic CT" if kind == "sct" else "Monte-Carlo std (HU) of a synthetic CT"
    comment = (f"SYNTHETIC: {what} computed from MRI by MRtoCTSynthesis {__version__}"
               + (f" ({derivation})" if derivation else "") + "; not acquired on a CT scanner. "
               "Check it against the MRI before clinical use.")
    if description is None:
        description = SCT_DESCRIPTION if kind == "sct" else STD_DESCRIPTION
    return {"Modality": "CT", "SeriesDescription": description[:64], "ImageType": ("DERIVED", "SECONDARY", "AXIAL"),
            "SyntheticData": "YES", "DerivationDescription": comment[:1024], "ImageComments": comment[:10240]}


def write_dicom_series(volume: Volume, folder: str | os.PathLike, reference: DicomReference, *,
                       description: str, series_number: int = 1, kind: str = "sct", derivation: str = "",
                       prefix: str = "CT") -> DicomSeries:
    """Write ``volume`` (HU) into the existing ``folder`` as one CT Image Storage series (see the module docs).

    ``kind``: ``"sct"`` (whole HU, soft-tissue window) or ``"std"`` (a Monte-Carlo std map, 0.1 HU steps).
    ``derivation``: how it was made (method, sampler, samples), for ``DerivationDescription`` and
    ``ImageComments``. Files are named ``<prefix>_<series number>_<slice>.dcm``.
    """
    if kind not in ("sct", "std"):
        raise ValueError(f"kind must be 'sct' or 'std', got {kind!r}")
    folder = Path(folder)
    row, col, normal_k, spacing, origin = _geometry(volume)
    arr = np.asarray(volume.array, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise InputError("the volume has NaN/Inf voxels; a DICOM CT cannot store them.", "fill them first.")
    slope, intercept = _rescale(arr, kind)
    stored = np.rint((arr - intercept) / slope).clip(*_INT16).astype("<i2")
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    series_uid = generate_uid()
    study = reference.study
    tags = synthetic_ct_tags(derivation, kind, description)
    comment = tags["ImageComments"]
    if kind == "sct":
        center, width = CT_WINDOW
    else:
        top = float(arr.max()) if arr.size else 1.0
        center, width = top / 2.0, max(top, 1.0)
    sources = reference.source_instances if len(reference.source_instances) == arr.shape[0] else []
    files = []
    for k in range(arr.shape[0]):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = list(tags["ImageType"])
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        ds.StudyDate = study.get("StudyDate") or date
        ds.StudyTime = study.get("StudyTime") or time
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.ContentDate, ds.ContentTime = date, time
        ds.AccessionNumber = reference.study.get("AccessionNumber", "")
        ds.Modality = "CT"
        ds.Manufacturer = "MRtoCTSynthesis"
        ds.ManufacturerModelName = "mrtoct (synthetic CT engine)"
        ds.SoftwareVersions = __version__
        ds.ReferringPhysicianName = reference.study.get("ReferringPhysicianName", "")
        if reference.study.get("StudyDescription"):
            ds.StudyDescription = reference.study["StudyDescription"]
        ds.SeriesDescription = tags["SeriesDescription"]
        ds.DerivationDescription = tags["DerivationDescription"]
        if sources:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sources[k]
            ds.SourceImageSequence = Sequence([item])
        for tag in PATIENT_TAGS:
            if tag in reference.patient:
                setattr(ds, tag, reference.patient[tag])
        for tag in ("PatientName", "PatientBirthDate", "PatientSex"):  # type 2: present, possibly empty
            if tag not in ds:
                setattr(ds, tag, "")
        ds.add_new(0x0008001C, "CS", "YES")  # Synthetic Data (by tag: pydicom 2.x does not know its keyword)
        ds.KVP = ""
        ds.StudyInstanceUID = reference.study["StudyInstanceUID"]
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = reference.study.get("StudyID", "")
        ds.SeriesNumber = int(series_number)
        ds.AcquisitionNumber = ""
        ds.InstanceNumber = k + 1
        ds.PatientPosition = reference.patient_position
        ds.ImagePositionPatient = [_ds_number(v) for v in origin + k * spacing[2] * normal_k]
        ds.ImageOrientationPatient = [_ds_number(v) for v in (*row, *col)]
        ds.FrameOfReferenceUID = reference.frame_of_reference_uid
        ds.PositionReferenceIndicator = reference.position_reference_indicator
        ds.SliceLocation = _ds_number(float(np.dot(origin + k * spacing[2] * normal_k, np.cross(row, col))))
        ds.SliceThickness = _ds_number(spacing[2])
        ds.SpacingBetweenSlices = _ds_number(spacing[2])
        ds.PixelSpacing = [_ds_number(spacing[1]), _ds_number(spacing[0])]
        ds.ImageComments = comment
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        ds.WindowCenter, ds.WindowWidth = _ds_number(center), _ds_number(width)
        ds.RescaleIntercept = _ds_number(intercept)
        ds.RescaleSlope = _ds_number(slope)
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / f"{prefix}_{int(series_number):03d}_{k + 1:04d}.dcm"
        if _PYDICOM_MAJOR < 3:  # Slicer ships pydicom 2.x: it needs the encoding on the dataset
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(path, write_like_original=False)
        else:
            ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return DicomSeries(folder=folder, files=files, series_uid=series_uid, study_uid=reference.study["StudyInstanceUID"],
                       frame_of_reference_uid=reference.frame_of_reference_uid, rescale_slope=slope,
                       rescale_intercept=intercept)


def check_dicom_output(folder: str | os.PathLike, what: str = "--dicom-out") -> Path:
    """The DICOM output folder must be new or empty, and its parent must exist (checked before any compute)."""
    p = Path(folder)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise InputError(f"{what} {p} already exists and is not an empty folder.",
                         "give a new folder name (a series is never written over another, or mixed into it).")
    if not p.absolute().parent.exists():
        raise InputError(f"the folder {p.absolute().parent} of {what} does not exist.",
                         "create it first or choose another path.")
    return p


def export_dicom(sct: Volume, folder: str | os.PathLike, reference: DicomReference, *, std: Volume | None = None,
                 derivation: str = "",
                 description: str = SCT_DESCRIPTION) -> list[DicomSeries]:
    """Write the sCT (series 1) and optionally its std map (series 2, same study and frame of reference) into
    the new folder ``folder``, atomically: into a temporary sibling folder first, renamed into place when done."""
    target = check_dicom_output(folder)
    parent = target.absolute().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        written = [write_dicom_series(sct, tmp, reference, description=description, series_number=1, kind="sct",
                                      derivation=derivation, prefix="SCT")]
        if std is not None:
            written.append(write_dicom_series(std, tmp, reference, series_number=2, kind="std", prefix="STD",
                                              derivation=derivation,
                                              description=STD_DESCRIPTION))
        for series in written:
            for f in series.files:
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for series in written:
        series.folder = target
        series.files = [target / f.name for f in series.files]
    return written
