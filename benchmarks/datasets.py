"""Build synthetic but realistic DICOM datasets with pydicom.

Only headers vary between instances; pixel buffers are shared through a small cache so
that generating thousands of files costs little more than writing them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

UID_ROOT = "1.2.826.0.1.3680043.10.1234."

SOP_CLASSES: dict[str, str] = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
}

BODY_PARTS: dict[str, str] = {
    "CT": "CHEST",
    "MR": "BRAIN",
    "CR": "CHEST",
    "DX": "HAND",
    "MG": "BREAST",
    "US": "ABDOMEN",
    "PT": "WHOLEBODY",
    "NM": "HEART",
    "XA": "HEART",
}


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str
    charset: str | None = None  # SpecificCharacterSet when not plain ASCII


@dataclass(frozen=True)
class Study:
    uid: str
    patient: Patient
    date: str
    time: str
    accession: str
    study_id: str
    description: str
    referring: str


@dataclass(frozen=True)
class Series:
    uid: str
    study: Study
    modality: str
    number: int
    description: str


@dataclass(frozen=True)
class Image:
    """Pixel layout of an instance; identical layouts share one pixel buffer."""

    rows: int
    cols: int
    bits: int = 16  # BitsAllocated: 8 or 16
    signed: bool = False
    frames: int = 1
    variant: int = 0  # several distinct buffers per layout, still shared

    @property
    def nbytes(self) -> int:
        return self.rows * self.cols * (self.bits // 8) * self.frames


@lru_cache(maxsize=64)
def pixel_bytes(image: Image) -> bytes:
    """Deterministic phantom-like content: a disc with a gradient and mild noise."""
    rng = np.random.default_rng(1234 + image.variant)
    yy, xx = np.mgrid[0 : image.rows, 0 : image.cols]
    cy, cx = image.rows / 2, image.cols / 2
    radius = min(image.rows, image.cols) * (0.30 + 0.02 * (image.variant % 8))
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
    top = 255 if image.bits == 8 else 3000
    base = (disc * (top * 0.6) + xx * (top * 0.2) / max(image.cols, 1)).astype(np.float64)
    frame = base + rng.normal(0.0, top * 0.02, size=base.shape)
    dtype: type[np.generic]
    if image.bits == 8:
        dtype = np.uint8
        frame = np.clip(frame, 0, 255)
    elif image.signed:
        dtype = np.int16
        frame = frame - 1024.0
    else:
        dtype = np.uint16
        frame = np.clip(frame, 0, 4095)
    one: bytes = frame.astype(dtype).tobytes()
    if image.frames == 1:
        return one
    # Shift each frame a little so frames differ, but reuse a handful of buffers.
    shifted = [np.roll(frame, k * 3, axis=1).astype(dtype).tobytes() for k in range(8)]
    return b"".join(shifted[k % 8] for k in range(image.frames))


def _patient_module(ds: Dataset, patient: Patient) -> None:
    if patient.charset:
        ds.SpecificCharacterSet = patient.charset
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "BENCH"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex


def _study_module(ds: Dataset, study: Study) -> None:
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = study.date
    ds.StudyTime = study.time
    ds.AccessionNumber = study.accession
    ds.StudyID = study.study_id
    ds.StudyDescription = study.description
    ds.ReferringPhysicianName = study.referring
    ds.InstitutionName = "Benchmark General Hospital"


def _series_module(ds: Dataset, series: Series) -> None:
    ds.SeriesInstanceUID = series.uid
    ds.Modality = series.modality
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.SeriesDate = series.study.date
    ds.SeriesTime = series.study.time
    ds.BodyPartExamined = BODY_PARTS.get(series.modality, "")
    ds.Manufacturer = "dicomweb-server benchmarks"
    ds.StationName = "BENCH01"


def _pixel_module(ds: Dataset, image: Image) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = image.rows
    ds.Columns = image.cols
    ds.BitsAllocated = image.bits
    ds.BitsStored = 8 if image.bits == 8 else (16 if image.signed else 12)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if image.signed else 0
    if image.frames > 1:
        ds.NumberOfFrames = image.frames
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.PixelData = pixel_bytes(image)
    # Explicit VR: OB for 8-bit, OW for 16-bit pixel data.
    ds["PixelData"].VR = "OB" if image.bits == 8 else "OW"


def build_dataset(
    series: Series,
    sop_uid: str,
    number: int,
    image: Image,
    slice_pos: float | None = None,
) -> Dataset:
    """A complete Part 10 dataset (with file meta) for one instance."""
    sop_class = SOP_CLASSES[series.modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    _patient_module(ds, series.study.patient)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = series.study.date
    ds.ContentDate = series.study.date
    ds.ContentTime = series.study.time
    _study_module(ds, series.study)
    _series_module(ds, series)
    ds.InstanceNumber = number
    ds.FrameOfReferenceUID = series.uid + ".0"
    if slice_pos is not None:
        ds.ImagePositionPatient = [-250.0, -250.0, slice_pos]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceLocation = slice_pos
        ds.SliceThickness = 1.25
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.KVP = 120
        ds.RescaleIntercept = -1024 if not image.signed else 0
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
    _pixel_module(ds, image)
    return ds


def write_dataset(ds: Dataset, target: str | io.BytesIO) -> None:
    dcmwrite(target, ds, enforce_file_format=True)


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    write_dataset(ds, buf)
    return buf.getvalue()
