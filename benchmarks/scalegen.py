"""In-memory generator of many small, distinct instances for scale runs.

One Part 10 template per modality is written once with pydicom using fixed-width
placeholder values; each instance is a copy of its template with the placeholders
overwritten in place (same lengths, so no re-encoding) - microseconds per instance.
Layout: 10 instances per series, 2 series per study, 2 studies per patient.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from .corpus import Record
from .datasets import UID_ROOT, Image, Patient, Series, Study, build_dataset, to_bytes
from .names import FAMILY, GIVEN

PER_SERIES, SERIES_PER_STUDY, STUDIES_PER_PATIENT = 10, 2, 2
MODALITIES = ["MR", "CR", "CT", "DX", "US", "PT", "NM", "MG"]
PREFIX = f"{UID_ROOT}9."
NAME_WIDTH = 24
PLACEHOLDERS = {
    "study": f"{PREFIX}1.{'1' * 12}",
    "series": f"{PREFIX}2.{'2' * 12}",
    "sop": f"{PREFIX}3.{'3' * 12}",
    "pid": "#PATIENTID",
    "name": "@" * NAME_WIDTH,
    "date": "19000101",
    "acc": "#ACCESSION#",
}


@dataclass(frozen=True)
class Fields:
    study: str
    series: str
    sop: str
    pid: str
    name: str
    date: str
    acc: str
    modality: str


def fields(n: int) -> Fields:
    series, study = n // PER_SERIES, n // (PER_SERIES * SERIES_PER_STUDY)
    patient = study // STUDIES_PER_PATIENT
    day = datetime.date(2000, 1, 1) + datetime.timedelta(days=(study * 37) % 9000)
    name = f"{FAMILY[patient % len(FAMILY)]}^{GIVEN[(patient // 7) % len(GIVEN)]}"
    return Fields(
        study=f"{PREFIX}1.{10**11 + study}",
        series=f"{PREFIX}2.{10**11 + series}",
        sop=f"{PREFIX}3.{10**11 + n}",
        pid=f"SP{patient:08d}",
        name=name.ljust(NAME_WIDTH),
        date=day.strftime("%Y%m%d"),
        acc=f"SA{study:09d}",
        modality=MODALITIES[study % len(MODALITIES)],
    )


class Template:
    def __init__(self, modality: str) -> None:
        p = PLACEHOLDERS
        patient = Patient(p["pid"], p["name"], "19700101", "O")
        study = Study(p["study"], patient, p["date"], "120000", p["acc"], "1", "SCALE", "")
        series = Series(p["series"], study, modality, 1, "SCALE SERIES")
        image = Image(64, 64, bits=8, variant=MODALITIES.index(modality))
        self.data = to_bytes(build_dataset(series, p["sop"], 1, image))
        self.offsets: dict[str, list[int]] = {}
        for key, value in p.items():
            raw, found, start = value.encode(), [], 0
            while (i := self.data.find(raw, start)) >= 0:
                found.append(i)
                start = i + len(raw)
            if not found:
                raise RuntimeError(f"placeholder {key} not found in the {modality} template")
            self.offsets[key] = found

    def render(self, f: Fields) -> bytes:
        buf = bytearray(self.data)
        for key, offsets in self.offsets.items():
            raw = getattr(f, key).encode()
            for i in offsets:
                buf[i : i + len(raw)] = raw
        return bytes(buf)


class ScaleGenerator:
    def __init__(self) -> None:
        self.templates = {m: Template(m) for m in MODALITIES}

    def instance(self, n: int) -> bytes:
        f = fields(n)
        return self.templates[f.modality].render(f)

    def record(self, n: int) -> Record:
        f = fields(n)
        return Record(
            "scale",
            "",
            f.study,
            f.series,
            f.sop,
            f.modality,
            f.pid,
            f.name.rstrip(),
            f.date,
            f.acc,
            0,
            64,
            64,
            8,
            1,
        )
