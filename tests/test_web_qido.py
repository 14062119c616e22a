"""QIDO-RS (PS3.18 10.6) over a real server, on SQLite and PostgreSQL.

One corpus is stored per backend (module-scoped) and queried many times, with raw
query strings through httpx (exact encodings, headers and status codes) and with
dicomweb-client. Every query is restricted to part of the corpus, so the groups of
studies below do not disturb each other.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from tests.conftest import Server
from tests.dicomgen import MR_IMAGE_STORAGE, make_dataset, multipart, to_part10, uid

JSON = "application/dicom+json"
XML = 'multipart/related; type="application/dicom+xml"'
NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"


@dataclass
class Corpus:
    server: Server
    studies: dict[str, str] = field(default_factory=dict)  # label -> StudyInstanceUID
    series: dict[str, str] = field(default_factory=dict)
    instances: dict[str, str] = field(default_factory=dict)

    def label(self, kind: str, value: str) -> str:
        table = {"studies": self.studies, "series": self.series, "instances": self.instances}
        return {v: k for k, v in table[kind].items()}.get(value, value)


def stow(server: Server, datasets: list[Dataset]) -> None:
    body, content_type = multipart([to_part10(ds) for ds in datasets])
    response = httpx.post(
        f"{server.url}/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": JSON},
        timeout=120,
    )
    assert response.status_code == 200, response.text[:500]


def build_corpus(server: Server) -> Corpus:
    c = Corpus(server)
    datasets: list[Dataset] = []

    def study(label: str) -> None:
        c.studies[label] = uid()

    def add(study_label: str, series_label: str, sop_label: str, **kwargs: Any) -> Dataset:
        c.series.setdefault(series_label, uid())
        c.instances[sop_label] = uid()
        ds = make_dataset(
            study=c.studies[study_label],
            series=c.series[series_label],
            sop=c.instances[sop_label],
            **kwargs,
        )
        datasets.append(ds)
        return ds

    # A: two series (CT x3, MR x1), series-level attributes, bulk data.
    study("A")
    a = {
        "patient_name": "Doe^John",
        "patient_id": "QA-DOE",
        "accession": "QA-ACC-A",
        "study_date": "20240102",
        "study_time": "101500",
        "StudyDescription": "Chest CT",
    }
    for n in (1, 2, 3):
        ds = add(
            "A",
            "A1",
            f"A1-{n}",
            **a,
            instance_number=n,
            BodyPartExamined="CHEST",
            Manufacturer="ACME",
            ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
        )
        if n == 1:
            ds.add_new(0x00420011, "OB", b"\x01" * 2048)  # EncapsulatedDocument
            icon = Dataset()
            icon.Rows, icon.Columns, icon.BitsAllocated = 32, 32, 16
            icon.add_new(0x7FE00010, "OW", b"\x02" * 2048)
            ds.IconImageSequence = [icon]
    add(
        "A",
        "A2",
        "A2-1",
        **a,
        modality="MR",
        sop_class=MR_IMAGE_STORAGE,
        series_number=2,
        BodyPartExamined="HEAD",
        Manufacturer="ACME",
    )
    # B, C, D: names in Latin-1 and UTF-8 (Specific Character Set, PS3.5 6.1).
    study("B")
    add(
        "B",
        "B1",
        "B1-1",
        patient_name="Müller^Jürgen",
        charset="ISO_IR 100",
        patient_id="QA-MUE",
        accession="QA-ACC-B",
        study_date="20240105",
        study_time="083000",
    )
    study("C")
    add(
        "C",
        "C1",
        "C1-1",
        patient_name="Ωmega^Ñandú",
        charset="ISO_IR 192",
        patient_id="QA-OME",
        accession="QA-ACC-C",
        study_date="20240107",
        study_time="180000",
        modality="MR",
        sop_class=MR_IMAGE_STORAGE,
    )
    study("D")
    add(
        "D",
        "D1",
        "D1-1",
        patient_name="山田^太郎",
        charset="ISO_IR 192",
        patient_id="QA-YAM",
        accession="QA-ACC-D",
        study_date="20240110",
        study_time="120000",
        modality="US",
    )
    # E, F1, F2: identifiers with characters that URLs treat specially.
    study("E")
    add(
        "E",
        "E1",
        "E1-1",
        patient_name="DOE^JANE",
        patient_id="ACC-P001",
        accession="QA-ACC-E",
        study_date="20240112",
        study_time="120000",
    )
    study("F1")
    add(
        "F1",
        "F11",
        "F11-1",
        patient_name="Plus^Sign",
        patient_id="A+B",
        accession="QA-ACC-F1",
        study_date="20240114",
        study_time="130000",
    )
    study("F2")
    add(
        "F2",
        "F21",
        "F21-1",
        patient_name="Space^Sign",
        patient_id="A B",
        accession="QA-ACC-F2",
        study_date="20240116",
        study_time="140000",
    )
    # Combined date-time matching (PS3.4 C.2.2.2.5.4).
    for date, time in [
        ("20060705", "0900"),
        ("20060705", "1100"),
        ("20060706", "0500"),
        ("20060707", "1700"),
        ("20060707", "1900"),
    ]:
        label = f"T{date[-1]}-{time}"
        study(label)
        add(
            label,
            label + "s",
            label + "i",
            patient_name="Time^Span",
            patient_id="QA-DT",
            accession="QA-DT",
            study_date=date,
            study_time=time,
        )
    # Paging.
    for n in range(7):
        study(f"P{n}")
        add(
            f"P{n}",
            f"P{n}s",
            f"P{n}i",
            patient_name=f"Page^P{n}",
            patient_id="QA-PAGE",
            accession=f"QA-PAGE-{n}",
            study_time="101530",
        )
    stow(server, datasets)
    return c


@pytest.fixture(scope="module")
def corpus(shared_server: Server) -> Corpus:
    return build_corpus(shared_server)


# -- helpers -------------------------------------------------------------------------


def enc(value: str) -> str:
    """Percent-encode a query value per RFC 3986 (UTF-8), every reserved character too."""
    return quote(value, safe="")


def get(c: Corpus, path: str, query: str = "", accept: str | None = JSON) -> httpx.Response:
    headers = {"Accept": accept} if accept is not None else {}
    url = f"{c.server.url}{path}" + (f"?{query}" if query else "")
    return httpx.get(url, headers=headers, timeout=30)


def ok(c: Corpus, path: str, query: str = "") -> list[dict[str, Any]]:
    response = get(c, path, query)
    assert response.status_code == 200, (path, query, response.status_code, response.text)
    assert response.headers["content-type"].startswith(JSON)
    result: list[dict[str, Any]] = response.json()
    return result


def value(item: dict[str, Any], tag: str) -> Any:
    values = item[tag].get("Value", [])
    return values[0] if len(values) == 1 else values


def labels(c: Corpus, path: str, query: str) -> set[str]:
    kind = path.rstrip("/").rsplit("/", 1)[-1]
    key = {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}[kind]
    return {c.label(kind, value(item, key)) for item in ok(c, path, query)}


def warnings(response: httpx.Response) -> list[str]:
    return response.headers.get_list("warning")


# -- required return attributes (PS3.18 Tables 10.6.3-3/-4/-5) ------------------------

STUDY_REQUIRED = ["00080020", "00080030", "00080050", "00080061", "00080090", "00100010",
                  "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206",
                  "00201208", "00081190"]  # fmt: skip
SERIES_REQUIRED = ["00080060", "00081190", "0020000D", "0020000E", "00200011", "00201209"]
INSTANCE_REQUIRED = ["00080016", "00080018", "00081190", "00200013", "0020000D", "0020000E",
                     "00280010", "00280011", "00280100"]  # fmt: skip


def test_study_results_carry_the_required_and_computed_attributes(corpus: Corpus) -> None:
    (item,) = ok(corpus, "/studies", "PatientID=QA-DOE")
    assert set(STUDY_REQUIRED) <= set(item)
    assert list(item) == sorted(item)  # DICOM JSON keys in ascending order (F.2)
    a = corpus.studies["A"]
    assert value(item, "0020000D") == a
    assert value(item, "00080061") == ["CT", "MR"]
    assert item["00080061"]["vr"] == "CS"
    assert (value(item, "00201206"), value(item, "00201208")) == (2, 4)
    assert value(item, "00081190") == f"{corpus.server.url}/studies/{a}"
    assert value(item, "00080056") == "ONLINE"
    assert value(item, "00100010") == {"Alphabetic": "Doe^John"}
    assert (value(item, "00080020"), value(item, "00080030")) == ("20240102", "101500")
    assert (value(item, "00100030"), value(item, "00100040")) == ("19700101", "O")
    # No series or instance attributes at study level.
    for tag in ("00080060", "0020000E", "00200011", "00080016", "00200013", "00080070"):
        assert tag not in item
    # The RetrieveURL is the Study resource (PS3.18 10.4.1).
    metadata = httpx.get(value(item, "00081190") + "/metadata", headers={"Accept": JSON})
    assert metadata.status_code == 200 and len(metadata.json()) == 4


def test_series_results_carry_the_required_attributes(corpus: Corpus) -> None:
    a = corpus.studies["A"]
    items = ok(corpus, f"/studies/{a}/series")
    assert len(items) == 2
    by_label = {corpus.label("series", value(i, "0020000E")): i for i in items}
    for label, (modality, number, count) in {"A1": ("CT", 1, 3), "A2": ("MR", 2, 1)}.items():
        item = by_label[label]
        assert set(SERIES_REQUIRED) <= set(item)
        assert value(item, "0020000D") == a  # series results always name their study
        assert (value(item, "00080060"), value(item, "00200011")) == (modality, number)
        assert value(item, "00201209") == count
        assert value(item, "00081190") == (
            f"{corpus.server.url}/studies/{a}/series/{corpus.series[label]}"
        )
        assert "00080016" not in item and "00200013" not in item
        # A Study's Series does not repeat the study attributes (they are the path's).
        assert "00100010" not in item and "00201208" not in item


def test_instance_results_carry_the_required_attributes(corpus: Corpus) -> None:
    a, a1 = corpus.studies["A"], corpus.series["A1"]
    items = ok(corpus, f"/studies/{a}/series/{a1}/instances")
    assert sorted(value(i, "00200013") for i in items) == [1, 2, 3]
    for item in items:
        assert set(INSTANCE_REQUIRED) <= set(item)
        sop = value(item, "00080018")
        assert value(item, "00080016") == "1.2.840.10008.5.1.4.1.1.2"
        assert (value(item, "00280010"), value(item, "00280011")) == (8, 8)
        assert value(item, "00280100") == 16
        assert (value(item, "0020000D"), value(item, "0020000E")) == (a, a1)
        assert value(item, "00081190") == (
            f"{corpus.server.url}/studies/{a}/series/{a1}/instances/{sop}"
        )


def test_all_series_include_the_study_attributes(corpus: Corpus) -> None:
    """PS3.18 10.6.3.3.2: the All Series resource adds Table 10.6.3-3."""
    items = ok(corpus, "/series", "PatientID=QA-DOE")
    assert {corpus.label("series", value(i, "0020000E")) for i in items} == {"A1", "A2"}
    for item in items:
        assert set(STUDY_REQUIRED + SERIES_REQUIRED) <= set(item)
        assert value(item, "00100010") == {"Alphabetic": "Doe^John"}
        assert value(item, "00080061") == ["CT", "MR"]
        assert (value(item, "00201206"), value(item, "00201208")) == (2, 4)
        assert "/series/" in value(item, "00081190")  # its own resource, not the study's


def test_all_instances_include_the_study_and_series_attributes(corpus: Corpus) -> None:
    """PS3.18 10.6.3.3.3: All Instances adds the Study and Series tables; a Study's
    Instances adds the Series table."""
    a = corpus.studies["A"]
    items = ok(corpus, "/instances", f"StudyInstanceUID={a}")
    assert len(items) == 4
    for item in items:
        assert set(STUDY_REQUIRED + SERIES_REQUIRED + INSTANCE_REQUIRED) <= set(item)
        assert value(item, "00201208") == 4
        assert "/instances/" in value(item, "00081190")
    counts = sorted((value(i, "00080060"), value(i, "00201209")) for i in items)
    assert counts == [("CT", 3), ("CT", 3), ("CT", 3), ("MR", 1)]
    scoped = ok(corpus, f"/studies/{a}/instances")
    assert len(scoped) == 4
    assert all("00080060" in i and "00201209" in i and "00100010" not in i for i in scoped)


# -- matching (PS3.4 C.2.2.2, PS3.18 8.3.4.1) -----------------------------------------

ACC = "AccessionNumber=QA-ACC-*"
MATCHING_CASES: list[tuple[str, str, set[str]]] = [
    # single value, keyword or tag; non-PN values are case-sensitive
    ("/studies", "PatientID=QA-DOE", {"A"}),
    ("/studies", "00100020=QA-DOE", {"A"}),
    ("/studies", "PatientID=qa-doe", set()),
    ("/studies", "ReferringPhysicianName=ref%5Edoctor&PatientID=QA-DOE", {"A"}),
    # wildcards
    ("/studies", "PatientID=QA-%3FOE", {"A"}),
    ("/studies", ACC, {"A", "B", "C", "D", "E", "F1", "F2"}),
    ("/studies", "AccessionNumber=qa-acc-*", set()),
    ("/studies", f"StudyDescription=Chest*&{ACC}", {"A"}),
    ("/studies", f"StudyDescription=chest*&{ACC}", set()),
    ("/studies", f"StudyDescription=Chest%20CT&{ACC}", {"A"}),
    # universal: an empty value matches everything
    ("/studies", "PatientName=&PatientID=QA-DOE", {"A"}),
    ("/studies", "StudyDate=&PatientID=QA-DOE", {"A"}),
    # DA ranges
    ("/studies", f"StudyDate=20240101-20240106&{ACC}", {"A", "B"}),
    ("/studies", f"StudyDate=-20240105&{ACC}", {"A", "B"}),
    ("/studies", f"StudyDate=20240110-&{ACC}", {"D", "E", "F1", "F2"}),
    ("/studies", f"StudyDate=20240107&{ACC}", {"C"}),
    # TM, by meaning: "1015" is 10:15:00, not the whole minute
    ("/studies", f"StudyTime=0800-1100&{ACC}", {"A", "B"}),
    ("/studies", f"StudyTime=-0830&{ACC}", {"B"}),
    ("/studies", f"StudyTime=1800-&{ACC}", {"C"}),
    ("/studies", "StudyTime=1015&PatientID=QA-DOE", {"A"}),
    ("/studies", "StudyTime=1015&PatientID=QA-PAGE", set()),
    # combined date-time: Jul 5 10:00 to Jul 7 18:00, not 10-18 on each day
    ("/studies", "StudyDate=20060705-20060707&StudyTime=1000-1800",
     {"T5-1100", "T6-0500", "T7-1700"}),
    ("/studies", "StudyDate=20060705&StudyTime=1000-1800", {"T5-1100"}),
    # UID lists: comma (PS3.18) and backslash (OHIF)
    ("/studies", "StudyInstanceUID={A},{B}", {"A", "B"}),
    ("/studies", "StudyInstanceUID={A}%5C{B}%5C{C}", {"A", "B", "C"}),
    ("/studies", "StudyInstanceUID={A}%2C{B}", {"A", "B"}),
    # ModalitiesInStudy: any series' modality
    ("/studies", f"ModalitiesInStudy=MR&{ACC}", {"A", "C"}),
    ("/studies", f"ModalitiesInStudy=US%5CMR&{ACC}", {"A", "C", "D"}),
    ("/studies", f"ModalitiesInStudy=mr&{ACC}", set()),
    # PN: case- and accent-insensitive; fuzzy is word-prefix
    ("/studies", "PatientName=doe%5Ejohn", {"A"}),
    ("/studies", "PatientName=*doe*&fuzzymatching=false", {"A", "E"}),
    ("/studies", "PatientName=jo&fuzzymatching=true", {"A"}),
    ("/studies", "PatientName=jo", set()),
    ("/studies", "PatientName=doe&fuzzymatching=true", {"A", "E"}),
    ("/studies", "PatientName=ja%20do&fuzzymatching=true", {"E"}),
    # Percent-decoding: %2D is '-', %2B a plus; '+' and %20 are spaces (dicomweb-client
    # sends spaces as '+')
    ("/studies", "PatientID=ACC%2DP001", {"E"}),
    ("/studies", "PatientID=A+B", {"F2"}),
    ("/studies", "PatientID=A%2BB", {"F1"}),
    ("/studies", "PatientID=A%20B", {"F2"}),
    # relational and hierarchical series searches; IS matching
    ("/series", "PatientID=QA-DOE", {"A1", "A2"}),
    ("/series", "PatientID=QA-DOE&Modality=MR", {"A2"}),
    ("/series", "PatientID=QA-DOE&SeriesNumber=2", {"A2"}),
    ("/series", "PatientID=QA-DOE&0020000E={A1}", {"A1"}),
    ("/series", "PatientID=QA-DOE&BodyPartExamined=HEAD", {"A2"}),
    ("/series", "PatientID=QA-DOE&ModalitiesInStudy=CT", {"A1", "A2"}),
    ("/series", f"Modality=US&{ACC}", {"D1"}),
    ("/studies/{A}/series", "Modality=CT", {"A1"}),
    ("/studies/{A}/series", "", {"A1", "A2"}),
    ("/studies/{B}/series", "", {"B1"}),
    # instances: relational, hierarchical, SOP Class, IS
    ("/instances", "StudyInstanceUID={A}", {"A1-1", "A1-2", "A1-3", "A2-1"}),
    ("/instances", f"SOPClassUID={MR_IMAGE_STORAGE}&PatientID=QA-DOE", {"A2-1"}),
    ("/instances", "SOPInstanceUID={A1-1},{B1-1}", {"A1-1", "B1-1"}),
    ("/studies/{A}/instances", "Modality=MR", {"A2-1"}),
    ("/studies/{A}/series/{A1}/instances", "InstanceNumber=2", {"A1-2"}),
    ("/studies/{A}/series/{A1}/instances", "InstanceNumber=%2B02", {"A1-2"}),
    ("/studies/{A}/series/{A2}/instances", "", {"A2-1"}),
]  # fmt: skip


def _fill(c: Corpus, text: str) -> str:
    names = {**c.studies, **c.series, **c.instances}
    return re.sub(r"\{([A-Z0-9-]+)\}", lambda m: names[m.group(1)], text)


@pytest.mark.parametrize(("path", "query", "expected"), MATCHING_CASES)
def test_matching(corpus: Corpus, path: str, query: str, expected: set[str]) -> None:
    assert labels(corpus, _fill(corpus, path), _fill(corpus, query)) == expected


def test_universal_matching_returns_the_attribute(corpus: Corpus) -> None:
    (item,) = ok(corpus, "/studies", "PatientID=QA-DOE&StudyDescription=")
    assert value(item, "00081030") == "Chest CT"


def test_ohif_style_requests(corpus: Corpus) -> None:
    """OHIF v3's study list and its study-UID list query."""
    items = ok(corpus, "/studies", "PatientName=*doe*&fuzzymatching=false&limit=101&offset=0"
               "&includefield=00081030%2C00080060")  # fmt: skip
    by_label = {corpus.label("studies", value(i, "0020000D")): i for i in items}
    assert set(by_label) == {"A", "E"}
    assert value(by_label["A"], "00081030") == "Chest CT"
    assert value(by_label["A"], "00080061") == ["CT", "MR"]
    a, e = corpus.studies["A"], corpus.studies["E"]
    again = ok(corpus, "/studies", f"StudyInstanceUID={a}%5C{e}&includefield=00081030%2C00080060")
    assert {value(i, "0020000D") for i in again} == {a, e}


# -- Specific Character Set and UTF-8 query values ------------------------------------

NAMES = {"B": "Müller^Jürgen", "C": "Ωmega^Ñandú", "D": "山田^太郎"}


@pytest.mark.parametrize("label", sorted(NAMES))
def test_names_in_other_character_sets_come_back_as_unicode(corpus: Corpus, label: str) -> None:
    response = get(corpus, "/studies", f"StudyInstanceUID={corpus.studies[label]}")
    assert response.status_code == 200
    (item,) = response.json()
    assert value(item, "00100010") == {"Alphabetic": NAMES[label]}
    assert NAMES[label].encode("utf-8") in response.content  # UTF-8 on the wire


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Müller^Jürgen", "B"),
        ("MÜLLER^JÜRGEN", "B"),
        ("muller^jurgen", "B"),
        ("M?ller*", "B"),
        ("*ürg*", "B"),
        ("Ωmega^Ñandú", "C"),
        ("ωmega^ñandú", "C"),
        ("OMEGA^NANDU", ""),  # Ω is a letter of its own, not an accented O
        ("Ωmega^Nandu", "C"),
        ("ωmeg*", "C"),
        ("山田^太郎", "D"),
        ("山田*", "D"),
        ("*太郎", "D"),
    ],
)
def test_names_match_by_exact_wildcard_and_accent_insensitive_forms(
    corpus: Corpus, name: str, expected: str
) -> None:
    found = labels(corpus, "/studies", f"PatientName={enc(name)}")
    assert found == ({expected} if expected else set())


def test_fuzzy_matching_folds_accents(corpus: Corpus) -> None:
    assert labels(corpus, "/studies", f"PatientName={enc('jü')}&fuzzymatching=true") == {"B"}
    assert labels(corpus, "/studies", "PatientName=nan&fuzzymatching=true") == {"C"}


# -- includefield (PS3.18 8.3.4.3) ------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "present", "absent"),
    [
        ("", [], ["00180015", "00080070"]),
        ("includefield=BodyPartExamined", ["00180015"], ["00080070"]),
        ("includefield=00080070", ["00080070"], ["00180015"]),
        ("includefield=00180015%2CManufacturer", ["00180015", "00080070"], []),
        ("includefield=BodyPartExamined&includefield=00080070", ["00180015", "00080070"], []),
        ("BodyPartExamined=", ["00180015"], ["00080070"]),
        ("includefield=ImageType", [], ["00080008"]),  # instance level: not for series
    ],
)
def test_includefield_on_series(
    corpus: Corpus, query: str, present: list[str], absent: list[str]
) -> None:
    items = ok(corpus, "/series", "PatientID=QA-DOE" + (f"&{query}" if query else ""))
    assert len(items) == 2
    for item in items:
        assert all(tag in item for tag in present), item.keys()
        assert not any(tag in item for tag in absent), item.keys()
    if "00180015" in present:
        assert {value(i, "00180015") for i in items} == {"CHEST", "HEAD"}
    if "00080070" in present:
        assert {value(i, "00080070") for i in items} == {"ACME"}


SERIES_ONLY = ["00080060", "00180015", "00080070", "0020000E", "00200011"]
INSTANCE_ONLY = ["00080008", "00080016", "00200013", "00280010", "00420011", "7FE00010"]


def test_includefield_all_by_level(corpus: Corpus) -> None:
    (study,) = ok(corpus, "/studies", "PatientID=QA-DOE&includefield=all")
    assert value(study, "00081030") == "Chest CT"
    assert value(study, "00100030") == "19700101"
    assert value(study, "00201208") == 4
    assert not [t for t in SERIES_ONLY + INSTANCE_ONLY if t in study]
    series = ok(corpus, "/series", "PatientID=QA-DOE&includefield=all")
    assert {value(s, "00180015") for s in series} == {"CHEST", "HEAD"}
    assert all(value(s, "00080070") == "ACME" and "00081030" in s for s in series)
    assert not [t for s in series for t in INSTANCE_ONLY if t in s]
    response = get(corpus, "/instances", "PatientID=QA-DOE&includefield=all")
    instances = response.json()
    assert len(instances) == 4
    assert all("00180015" in i and "00100010" in i for i in instances)
    image_types = {value(i, "00080060"): i.get("00080008", {}).get("Value") for i in instances}
    assert image_types == {"CT": ["ORIGINAL", "PRIMARY", "AXIAL"], "MR": None}
    # Bulk data never appears in search results, at any depth (top-level OB, Pixel Data,
    # Pixel Data inside the Icon Image Sequence).
    assert b"BulkDataURI" not in response.content
    assert not [t for i in instances for t in ("7FE00010", "00420011") if t in i]


def test_includefield_of_a_lower_level_is_not_returned(corpus: Corpus) -> None:
    (item,) = ok(corpus, "/studies", "PatientID=QA-DOE&includefield=Modality%2CImageType")
    assert "00080060" not in item and "00080008" not in item


# -- paging (PS3.18 8.3.4.4) ----------------------------------------------------------


def remaining(response: httpx.Response) -> int | None:
    base = re.escape(f"299 {response.request.url.scheme}://")
    for warning in warnings(response):
        match = re.fullmatch(
            base + r"\S+/dicom-web: There are (\d+) additional results that can be requested",
            warning,
        )
        if match:
            return int(match.group(1))
    return None


def test_paging_with_remaining_counts(corpus: Corpus) -> None:
    seen: list[str] = []
    for offset, size, left in [(0, 3, 4), (3, 3, 1), (6, 1, None)]:
        response = get(corpus, "/studies", f"PatientID=QA-PAGE&limit=3&offset={offset}")
        assert response.status_code == 200
        items = response.json()
        assert len(items) == size
        assert remaining(response) == left
        seen.extend(value(i, "0020000D") for i in items)
        # Same request, same ordered answer (PS3.18 8.3.4.4: idempotent).
        again = get(corpus, "/studies", f"PatientID=QA-PAGE&limit=3&offset={offset}")
        assert [value(i, "0020000D") for i in again.json()] == [value(i, "0020000D") for i in items]
    assert sorted(seen) == sorted(corpus.studies[f"P{n}"] for n in range(7))
    assert len(set(seen)) == 7
    # The warning names this server's DICOMweb root.
    response = get(corpus, "/studies", "PatientID=QA-PAGE&limit=2")
    assert f"299 {corpus.server.url}: There are 5 additional" in warnings(response)[0]


def test_limit_zero_returns_no_results_and_the_count(corpus: Corpus) -> None:
    """results = min(matches - offset, maxResults, limit) (PS3.18 8.3.4.4.1): limit=0 is
    an empty page; the Warning still tells how many results can be requested."""
    response = get(corpus, "/studies", "PatientID=QA-PAGE&limit=0")
    assert response.status_code == 200 and response.json() == []
    assert remaining(response) == 7
    response = get(corpus, "/studies", "PatientID=QA-PAGE&limit=0&offset=5")
    assert remaining(response) == 2


def test_offset_past_the_end_and_zero_matches_are_empty_arrays(corpus: Corpus) -> None:
    for query in ("PatientID=QA-PAGE&offset=7", "PatientID=NOBODY-AT-ALL",
                  "PatientID=QA-PAGE&offset=99999999999999999999999999"):  # fmt: skip
        response = get(corpus, "/studies", query)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(JSON)
        assert response.json() == []
        assert remaining(response) is None


def test_limit_above_the_maximum_is_capped_with_a_warning(corpus: Corpus) -> None:
    response = get(corpus, "/studies", "PatientID=QA-PAGE&limit=1001")
    assert response.status_code == 200 and len(response.json()) == 7
    assert any("limit 1001 exceeds the maximum of 1000" in w for w in warnings(response))
    assert all(w.startswith(f"299 {corpus.server.url}: ") for w in warnings(response))


def test_dicomweb_client_paging_and_parameters(corpus: Corpus) -> None:
    client = DICOMwebClient(corpus.server.url)
    everything = client.search_for_studies(
        search_filters={"PatientID": "QA-PAGE"}, limit=3, get_remaining=True
    )
    assert len({value(i, "0020000D") for i in everything}) == 7
    fuzzy = client.search_for_studies(
        search_filters={"PatientName": "jo"}, fuzzymatching=True, fields=["StudyDescription"]
    )
    assert [value(i, "0020000D") for i in fuzzy] == [corpus.studies["A"]]
    assert value(fuzzy[0], "00081030") == "Chest CT"
    series = client.search_for_series(
        corpus.studies["A"], search_filters={"Modality": "MR"}, fields=["BodyPartExamined"]
    )
    assert [value(s, "00180015") for s in series] == ["HEAD"]
    instances = client.search_for_instances(corpus.studies["A"], corpus.series["A1"])
    assert sorted(value(i, "00200013") for i in instances) == [1, 2, 3]
    # dicomweb-client encodes spaces as '+' (quote_plus): they must arrive as spaces.
    spaced = client.search_for_studies(search_filters={"StudyDescription": "Chest CT"})
    assert corpus.studies["A"] in {value(i, "0020000D") for i in spaced}
    assert [
        value(i, "0020000D") for i in client.search_for_studies(search_filters={"PatientID": "A B"})
    ] == [corpus.studies["F2"]]


# -- errors (PS3.18 8.3: 400 for an invalid value of a supported parameter) ----------

BAD_REQUESTS = [
    ("/studies", "NoSuchKeyword=1"),
    ("/studies", "patientid=QA-DOE"),
    ("/studies", "includefield=NoSuchKeyword"),
    ("/studies", "StudyDate=2024-01-01"),
    ("/studies", "StudyDate=20241301"),
    ("/studies", "StudyDate=20240105-20240101"),
    ("/studies", "StudyTime=2500"),
    ("/studies", "StudyTime=1800-0800"),
    ("/studies", "limit=-1"),
    ("/studies", "limit=ten"),
    ("/studies", "offset=-3"),
    ("/studies", "offset=1e3"),
    ("/studies", "StudyInstanceUID=1.2.abc"),
    ("/studies", "StudyInstanceUID=1.2.3,1.2.x"),
    ("/series", "SeriesInstanceUID=1.2.*"),
    ("/studies", "fuzzymatching=maybe"),
    ("/studies", "Modality=CT"),
    ("/studies", "SeriesNumber=1"),
    ("/series", "SOPClassUID=1.2.840.10008.5.1.4.1.1.2"),
    ("/series", "SeriesNumber=one"),
    ("/studies", "PatientID=a&PatientID=b"),
    ("/studies", "PatientID=%00"),
    ("/studies", "PatientName=%FF%FE"),
    ("/studies/1.2.abc/series", ""),
]


@pytest.mark.parametrize(("path", "query"), BAD_REQUESTS)
def test_bad_requests_are_400_with_a_message(corpus: Corpus, path: str, query: str) -> None:
    response = get(corpus, path, query)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == 400 and isinstance(body["message"], str) and body["message"]
    # The server is still fine.
    assert labels(corpus, "/studies", "PatientID=QA-DOE") == {"A"}


def test_known_but_unindexed_attribute_is_ignored_with_a_warning(corpus: Corpus) -> None:
    response = get(corpus, "/series", "PatientID=QA-DOE&Manufacturer=OTHER")
    assert response.status_code == 200
    assert {value(i, "00080070") for i in response.json()} == {"ACME"}  # not filtered, returned
    assert warnings(response) == [
        f"299 {corpus.server.url}: The Manufacturer query parameter is not supported; "
        "it was ignored"
    ]
    response = get(corpus, "/studies", "PatientID=QA-DOE&PatientComments=x")
    assert response.status_code == 200 and len(response.json()) == 1
    assert "PatientComments" in warnings(response)[0]


# -- media types (PS3.18 10.6.1, 8.7) -------------------------------------------------


def xml_parts(response: httpx.Response) -> list[ET.Element]:
    """The NativeDicomModel documents of a multipart/related response, one per part."""
    match = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"])
    assert match is not None
    delimiter = b"\r\n--" + match.group(1).encode()
    body = b"\r\n" + response.content
    assert body.rstrip().endswith(delimiter + b"--")
    roots = []
    for part in body.split(delimiter)[1:-1]:
        head, _, payload = part.partition(b"\r\n\r\n")
        assert b"content-type: application/dicom+xml" in head.lower()
        roots.append(ET.fromstring(payload))
    return roots


def xml_value(root: ET.Element, tag: str) -> str | None:
    for attribute in root.iter(f"{NS}DicomAttribute"):
        if attribute.get("tag") == tag:
            node = attribute.find(f"{NS}Value")
            if node is None:
                node = attribute.find(f"{NS}PersonName/{NS}Alphabetic/{NS}FamilyName")
            return None if node is None else node.text
    return None


def test_xml_results(corpus: Corpus) -> None:
    response = get(corpus, "/studies", "PatientID=QA-MUE", accept=XML)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/related")
    (root,) = xml_parts(response)
    assert root.tag == f"{NS}NativeDicomModel"
    assert xml_value(root, "00100020") == "QA-MUE"
    assert xml_value(root, "00100010") == "Müller"
    assert xml_value(root, "00201208") == "1"
    series = get(corpus, "/series", "PatientID=QA-DOE", accept=XML)
    assert sorted(xml_value(r, "00080060") or "" for r in xml_parts(series)) == ["CT", "MR"]


def test_accept_query_parameter_selects_the_media_type(corpus: Corpus) -> None:
    response = get(corpus, "/studies", f"PatientID=QA-MUE&accept={enc(XML)}", accept=JSON)
    assert response.headers["content-type"].startswith("multipart/related")
    assert xml_value(xml_parts(response)[0], "00100020") == "QA-MUE"


def test_accept_query_parameter_keeps_its_plus(corpus: Corpus) -> None:
    """'+' is a space in attribute values, but not inside a media type."""
    response = get(corpus, "/studies", "PatientID=QA-MUE&accept=application/dicom+json", accept=XML)
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert value(response.json()[0], "00100020") == "QA-MUE"


@pytest.mark.parametrize("accept", ["text/html", "application/dicom", "image/jpeg"])
def test_unsupported_accept_is_406(corpus: Corpus, accept: str) -> None:
    response = get(corpus, "/studies", "PatientID=QA-DOE", accept=accept)
    assert response.status_code == 406


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", JSON])
def test_json_is_the_default(corpus: Corpus, accept: str | None) -> None:
    response = get(corpus, "/studies", "PatientID=QA-DOE", accept=accept)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(JSON)


def test_charset_query_parameter(corpus: Corpus) -> None:
    assert get(corpus, "/studies", "PatientID=QA-DOE&charset=utf-8").status_code == 200
    assert get(corpus, "/studies", "PatientID=QA-DOE&charset=ISO-8859-1").status_code == 406


# -- scale sanity ---------------------------------------------------------------------


def test_three_hundred_studies(corpus: Corpus) -> None:
    """~300 studies: wildcard name searches count right and page right."""
    server = corpus.server
    for start in range(0, 300, 50):
        stow(server, [make_dataset(patient_name=f"Scale^P{n:03d}", patient_id=f"SCALE-{n:03d}",
                                   accession=f"SC-{n:03d}", rows=2, columns=2)
                      for n in range(start, start + 50)])  # fmt: skip
    assert len(ok(corpus, "/studies", "PatientName=scale*&limit=1000")) == 300
    assert len(ok(corpus, "/studies", "PatientName=Scale%5EP1*")) == 100
    response = get(corpus, "/studies", "PatientName=*ALE%5Ep2*&limit=40&offset=20")
    assert len(response.json()) == 40 and remaining(response) == 40
    assert len(ok(corpus, "/series", "PatientName=scale*&Modality=CT&limit=1000")) == 300
    response = get(corpus, "/instances", "PatientName=SCALE*&limit=10")
    assert len(response.json()) == 10 and remaining(response) == 290
