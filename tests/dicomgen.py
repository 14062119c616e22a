"""Small DICOM objects made in code, so tests need no data files.

``make_dataset`` returns a pydicom Dataset; ``to_part10`` its bytes. Every UID is
fresh unless given, under the pydicom test root.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def uid() -> str:
    return str(generate_uid())


def make_dataset(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    sop_class: str = CT_IMAGE_STORAGE,
    patient_name: str = "Doe^John",
    patient_id: str = "PID-1",
    modality: str = "CT",
    study_date: str = "20240102",
    study_time: str = "101500",
    accession: str = "ACC-1",
    instance_number: int = 1,
    series_number: int = 1,
    rows: int = 8,
    columns: int = 8,
    frames: int | None = None,
    charset: str | None = None,
    pixel_seed: int = 0,
    **extra: Any,
) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop or uid()
    ds.StudyInstanceUID = study or uid()
    ds.SeriesInstanceUID = series or uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.Modality = modality
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyDescription = "Test study"
    ds.SeriesDescription = "Test series"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    count = frames or 1
    if frames is not None:
        ds.NumberOfFrames = frames
    rng = np.random.default_rng(pixel_seed)
    pixels = rng.integers(0, 4096, size=(count, rows, columns), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def to_part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """Part 10 bytes (preamble, meta header, dataset) in the given uncompressed syntax."""
    ds = ds.copy()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(
        out,
        enforce_file_format=True,
        implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
        little_endian=True,
    )
    return out.getvalue()


def bare_dataset(ds: Dataset) -> bytes:
    """The dataset alone, Implicit VR Little Endian, with no preamble or meta header."""
    ds = ds.copy()
    if hasattr(ds, "file_meta"):
        del ds.file_meta
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=True, little_endian=True)
    return out.getvalue()


def multipart(
    parts: list[bytes],
    boundary: str = "test-boundary-7d3f",
    content_type: str = "application/dicom",
) -> tuple[bytes, str]:
    """A STOW-RS body and its Content-Type header value."""
    body = (
        b"".join(
            b"--"
            + boundary.encode()
            + b"\r\nContent-Type: "
            + content_type.encode()
            + b"\r\n\r\n"
            + part
            + b"\r\n"
            for part in parts
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    header = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return body, header
