"""Studies a viewer can display: real geometry, distinct pixels per slice or frame.

``ct_series`` is a stack of axial slices, each showing a bright disc whose radius
grows with the slice index, so scrolling visibly changes the image. ``multiframe`` is
one instance of several frames, ``jpeg2000`` a compressed CT slice.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless

from tests.dicomgen import make_dataset, to_part10, uid

MULTIFRAME_SC = "1.2.840.10008.5.1.4.1.1.7.2"  # Multi-frame Grayscale Word SC Image Storage


def _disc(size: int, radius: float, value: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    centre = (size - 1) / 2
    image = np.full((size, size), 40, dtype=np.uint16)
    image[(x - centre) ** 2 + (y - centre) ** 2 <= radius**2] = value
    # A corner marker, so orientation and the slice's identity are visible.
    image[4:12, 4:12] = 2000
    return image


def _geometry(ds: Dataset, z: float, size: int, frame_of_reference: str) -> None:
    ds.ImagePositionPatient = [-size / 2, -size / 2, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.SliceThickness = 2
    ds.FrameOfReferenceUID = frame_of_reference
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.WindowCenter = 1000
    ds.WindowWidth = 2000


def ct_series(
    slices: int, *, patient_name: str, patient_id: str, accession: str, size: int = 128
) -> list[bytes]:
    study, series, frame_of_reference = uid(), uid(), uid()
    out: list[bytes] = []
    for index in range(slices):
        ds = make_dataset(
            study=study,
            series=series,
            patient_name=patient_name,
            patient_id=patient_id,
            accession=accession,
            modality="CT",
            instance_number=index + 1,
            rows=size,
            columns=size,
            SeriesDescription="Axial disc phantom",
            StudyDescription="CT phantom",
        )
        _geometry(ds, z=2.0 * index, size=size, frame_of_reference=frame_of_reference)
        radius = 6 + (size / 2 - 10) * index / max(slices - 1, 1)
        ds.PixelData = _disc(size, radius, 1800).tobytes()
        out.append(to_part10(ds))
    return out


def multiframe(frames: int, *, patient_name: str, patient_id: str, accession: str) -> bytes:
    size = 96
    ds = make_dataset(
        sop_class=MULTIFRAME_SC,
        patient_name=patient_name,
        patient_id=patient_id,
        accession=accession,
        modality="OT",
        rows=size,
        columns=size,
        frames=frames,
        SeriesDescription="Multiframe phantom",
        StudyDescription="Multiframe phantom",
    )
    ds.BitsStored = 16
    ds.HighBit = 15
    pixels = np.stack([_disc(size, 8 + 30 * i / max(frames - 1, 1), 3000) for i in range(frames)])
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.WindowCenter = 1500
    ds.WindowWidth = 3000
    return to_part10(ds)


def jpeg2000(*, patient_name: str, patient_id: str, accession: str) -> bytes:
    size = 128
    ds = make_dataset(
        patient_name=patient_name,
        patient_id=patient_id,
        accession=accession,
        modality="CT",
        rows=size,
        columns=size,
        SeriesDescription="JPEG 2000 phantom",
        StudyDescription="JPEG 2000 phantom",
    )
    _geometry(ds, z=0, size=size, frame_of_reference=uid())
    ds.PixelData = _disc(size, 40, 1800).tobytes()
    ds.compress(JPEG2000Lossless)
    return to_part10(ds, JPEG2000Lossless)
