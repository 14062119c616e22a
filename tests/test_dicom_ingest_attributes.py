"""Index values are read from the stored DICOM JSON: they must equal what pydicom says."""

from __future__ import annotations

import io

import pydicom.config
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from dicomweb_server.dicom.ingest import analyse
from tests.dicomgen import make_dataset, to_part10


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        (None, "Doe^John"),
        ("ISO_IR 100", "Müller^Jürgen"),
        ("ISO_IR 192", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("ISO_IR 192", "=山田^太郎"),
        ("ISO 2022 IR 87", "Yamada^Tarou=山田^太郎"),
    ],
)
def test_person_names_keep_their_component_groups(charset: str | None, name: str) -> None:
    ds = make_dataset(charset=charset, patient_name=name)
    if charset == "ISO 2022 IR 87":
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    rec = analyse(io.BytesIO(to_part10(ds)))
    assert rec.patient["name"] == str(ds.PatientName) == name


def test_numbers_and_multiple_values() -> None:
    ds = make_dataset(series_number=7, instance_number=12, rows=16, columns=8)
    ds.StudyDescription = "  padded  "
    ds.BodyPartExamined = "CHEST"
    rec = analyse(io.BytesIO(to_part10(ds)))
    assert rec.series["series_number"] == 7
    assert rec.instance["instance_number"] == 12
    assert (rec.instance["rows"], rec.instance["columns"]) == (16, 8)
    assert rec.study["description"] == "padded"
    assert rec.series["body_part"] == "CHEST"
    assert rec.instance["number_of_frames"] is None


def test_unparseable_numbers_are_left_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    # As the server reads (configure_pydicom): invalid values are kept, not refused.
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)
    ds = make_dataset()
    # Raw, as a modality would write it: pydicom refuses to set such a value.
    ds[0x00200013] = RawDataElement(Tag(0x00200013), "IS", 4, b"abc ", 0, False, True)
    rec = analyse(io.BytesIO(to_part10(ds)))
    assert rec.instance["instance_number"] is None
