"""SqlIndex.search and count on SQLite and PostgreSQL: the SQL side of QIDO matching.

What only the database can show: case-sensitive wildcards on both engines, the
empty-value rule of PS3.4 C.2.2.1.2, ModalitiesInStudy inside series searches, computed
counts, and a constant number of statements per page (no N+1).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from dicomweb_server.dicom.attributes import Level
from dicomweb_server.dicom.ingest import analyse
from dicomweb_server.dicom.matching import (
    SERIES_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    Condition,
    Kind,
    QueryRequest,
    parse_query,
)
from dicomweb_server.storage.sql.index import SqlIndex
from tests.conftest import BACKENDS, make_database_url
from tests.dicomgen import MR_IMAGE_STORAGE, make_dataset, to_part10, uid

N_STUDIES = 24


class Corpus:
    def __init__(self, index: SqlIndex) -> None:
        self.index = index
        self.s1 = uid()
        self.s1_ct = uid()
        self.s1_mr = uid()
        self.s2 = uid()
        self.s2_series = uid()
        self.bulk: list[str] = []

    def add(self, **kwargs: Any) -> None:
        drop = kwargs.pop("drop", ())
        ds = make_dataset(**kwargs)
        for keyword in drop:
            delattr(ds, keyword)
        record = analyse(io.BytesIO(to_part10(ds)))
        self.index.add_instance(record, f"k/{record.sop_instance_uid}", 1, "h")


@pytest.fixture(scope="module", params=BACKENDS)
def corpus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Corpus]:
    tmp: Path = tmp_path_factory.mktemp("search")
    index = SqlIndex(make_database_url(request.param, tmp, request))
    index.migrate()
    c = Corpus(index)
    common = {"patient_name": "Doe^John", "patient_id": "S-1", "study": c.s1}
    c.add(**common, series=c.s1_ct, instance_number=1, StudyDescription="Chest CT")
    c.add(**common, series=c.s1_ct, instance_number=2, StudyDescription="Chest CT")
    c.add(
        **common,
        series=c.s1_mr,
        modality="MR",
        sop_class=MR_IMAGE_STORAGE,
        series_number=2,
        StudyDescription="Chest CT",
    )
    # A study whose Required Keys are empty or absent (PS3.4 C.2.2.1.2).
    c.add(
        study=c.s2,
        series=c.s2_series,
        patient_name="",
        patient_id="S-2",
        study_date="",
        study_time="",
        accession="",
        modality="OT",
        drop=("SeriesNumber", "InstanceNumber"),
    )
    for n in range(N_STUDIES):
        study = uid()
        for s in range(2):
            c.add(
                study=study,
                patient_id=f"N-{n:03d}",
                patient_name=f"Many^P{n:03d}",
                series_number=s + 1,
                modality=("CT", "MR")[s],
            )
    yield c
    index.close()


def search(
    index: SqlIndex,
    level: Level,
    query: str,
    scope: list[Condition] | None = None,
    match_empty: bool = False,
) -> list[dict[str, Any]]:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&") if p]
    parsed = parse_query(level, pairs, scope=scope or [], max_limit=1000)  # type: ignore[arg-type]
    parsed.match_empty = match_empty
    return index.search(parsed).rows


def studies(index: SqlIndex, query: str) -> set[str]:
    return {str(r["study_uid"]) for r in search(index, Level.STUDY, query)}


# -- case sensitivity (PS3.4 C.2.2.2.1, C.2.2.2.4) ------------------------------------


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("StudyDescription=Chest CT", True),
        ("StudyDescription=chest ct", False),
        ("StudyDescription=Chest*", True),
        ("StudyDescription=chest*", False),  # SQLite's LIKE would say yes
        ("StudyDescription=*CT", True),
        ("StudyDescription=*ct", False),
        ("StudyDescription=Ch?st C?", True),
        ("StudyDescription=CH?ST*", False),
        ("PatientID=S-?", True),
        ("PatientID=s-?", False),
        # PN is the exception: case- and accent-insensitive (C.2.2.2.1.1).
        ("PatientName=DOE^JOHN", True),
        ("PatientName=dOé^jöhn", True),
        ("PatientName=d?e*", True),
    ],
)
def test_matching_case(corpus: Corpus, query: str, found: bool) -> None:
    restricted = f"{query}&StudyInstanceUID={corpus.s1}"
    assert (corpus.s1 in studies(corpus.index, restricted)) is found


@pytest.mark.parametrize(
    ("pattern", "found"),
    [("Chest?CT", True), ("Chest_C*", False), ("Ches%*", False), ("[C]hest*", False),
     ("Chest\\*", False), ("*\\", False), ("C*st C?", True)],
)  # fmt: skip
def test_wildcard_escapes_sql_pattern_characters(corpus: Corpus, pattern: str, found: bool) -> None:
    """'%', '_', '[' and '\\' are literal characters in DICOM wildcards."""
    query = f"StudyDescription={pattern}&StudyInstanceUID={corpus.s1}"
    assert studies(corpus.index, query) == ({corpus.s1} if found else set())


# -- empty stored values match (PS3.4 C.2.2.1.2, C.2.2.1.3) ---------------------------


@pytest.mark.parametrize(
    "query",
    [
        "PatientName=Nobody^Here",
        "PatientName=Nob*",
        "StudyDate=19990101",
        "StudyDate=19990101-19991231",
        "StudyTime=0300",
        "StudyDate=19990101-19991231&StudyTime=0100-0200",
        "AccessionNumber=NOPE",
    ],
)
def test_empty_required_key_matches_any_value(corpus: Corpus, query: str) -> None:
    """With qido_match_empty on, PS3.4 C.2.2.1.2 applies."""
    pairs = [tuple(p.split("=", 1)) for p in query.split("&") if p]
    parsed = parse_query(Level.STUDY, pairs, max_limit=1000)  # type: ignore[arg-type]
    parsed.match_empty = True
    assert {r["study_uid"] for r in corpus.index.search(parsed).rows} == {corpus.s2}


@pytest.mark.parametrize(
    "query", ["PatientName=Nob*", "StudyDate=19990101-19991231", "AccessionNumber=NOPE"]
)
def test_empty_values_do_not_match_by_default(corpus: Corpus, query: str) -> None:
    """The default: a lookup by Accession Number finds no study that has none."""
    assert studies(corpus.index, query) == set()


def test_empty_series_and_instance_keys_match(corpus: Corpus) -> None:
    series = search(corpus.index, Level.SERIES, "SeriesNumber=77", match_empty=True)
    assert [r["series_uid"] for r in series] == [corpus.s2_series]
    instances = search(corpus.index, Level.INSTANCE, "InstanceNumber=77", match_empty=True)
    assert [r["series_uid"] for r in instances] == [corpus.s2_series]
    assert search(corpus.index, Level.SERIES, "SeriesNumber=77") == []


def test_unique_keys_do_not_match_by_emptiness(corpus: Corpus) -> None:
    assert studies(corpus.index, f"StudyInstanceUID={uid()}") == set()


# -- ModalitiesInStudy and counts ------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [("ModalitiesInStudy=MR", True), ("ModalitiesInStudy=OT\\MR", True),
     ("ModalitiesInStudy=US", False), ("ModalitiesInStudy=M?", True),
     ("ModalitiesInStudy=mr", False)],
)  # fmt: skip
def test_modalities_in_study(corpus: Corpus, query: str, expected: bool) -> None:
    assert (corpus.s1 in studies(corpus.index, query + "&PatientID=S-1")) is expected


def test_modalities_in_study_in_a_series_search_keeps_every_series_of_the_study(
    corpus: Corpus,
) -> None:
    """Series of studies that contain a CT: the MR series of such a study is one."""
    rows = search(corpus.index, Level.SERIES, "ModalitiesInStudy=CT&PatientID=S-1")
    assert {r["series_uid"] for r in rows} == {corpus.s1_ct, corpus.s1_mr}
    rows = search(corpus.index, Level.INSTANCE, "ModalitiesInStudy=CT&PatientID=S-1")
    assert len(rows) == 3


def test_computed_counts(corpus: Corpus) -> None:
    (study,) = search(corpus.index, Level.STUDY, "PatientID=S-1")
    assert study["modalities"] == ["CT", "MR"]
    assert (study["study_num_series"], study["study_num_instances"]) == (2, 3)
    study_scope = [Condition(STUDY_INSTANCE_UID, Kind.SINGLE, (corpus.s1,))]
    series = search(corpus.index, Level.SERIES, "", scope=study_scope)
    counts = {r["series_uid"]: r["series_num_instances"] for r in series}
    assert counts == {corpus.s1_ct: 2, corpus.s1_mr: 1}
    assert "modalities" not in series[0]  # a study's series: no study attributes needed
    all_series = search(corpus.index, Level.SERIES, "PatientID=S-1")
    assert all(r["study_num_instances"] == 3 for r in all_series)
    series_scope = [*study_scope, Condition(SERIES_INSTANCE_UID, Kind.SINGLE, (corpus.s1_ct,))]
    instances = search(corpus.index, Level.INSTANCE, "", scope=series_scope)
    assert len(instances) == 2 and "series_num_instances" not in instances[0]


def test_count_ignores_paging(corpus: Corpus) -> None:
    query = parse_query(Level.STUDY, [("PatientID", "N-*"), ("limit", "5"), ("offset", "3")])
    result = corpus.index.search(query)
    assert len(result.rows) == 5 and result.more
    assert corpus.index.count(query) == N_STUDIES
    assert corpus.index.count(parse_query(Level.SERIES, [("PatientID", "N-*")])) == 2 * N_STUDIES


def test_pages_are_disjoint_and_stable(corpus: Corpus) -> None:
    seen: list[str] = []
    for offset in range(0, N_STUDIES, 7):
        page = search(corpus.index, Level.STUDY, f"PatientID=N-*&limit=7&offset={offset}")
        assert page == search(corpus.index, Level.STUDY, f"PatientID=N-*&limit=7&offset={offset}")
        seen.extend(str(r["study_uid"]) for r in page)
    assert len(seen) == len(set(seen)) == N_STUDIES


# -- no N+1: statements per page do not grow with the page size -----------------------


def _capture(index: SqlIndex, run: Any) -> tuple[Any, list[str]]:
    """``run()``'s result and the SQL statements it sent."""
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(index.read_engine, "before_cursor_execute", seen)
    try:
        result = run()
    finally:
        event.remove(index.read_engine, "before_cursor_execute", seen)
    return result, statements


def _statements(index: SqlIndex, query: QueryRequest) -> tuple[int, int]:
    rows, statements = _capture(index, lambda: index.search(query).rows)
    return len(rows), len([s for s in statements if s.lstrip().upper().startswith("SELECT")])


@pytest.mark.parametrize("level", [Level.STUDY, Level.SERIES, Level.INSTANCE])
def test_statements_do_not_grow_with_the_page_size(corpus: Corpus, level: Level) -> None:
    """All Series / All Instances pages also carry the study's computed attributes, so
    this covers every grouped query the index makes."""

    def query(limit: int) -> QueryRequest:
        return parse_query(level, [("PatientName", "many*"), ("limit", str(limit))])

    n_small, statements_small = _statements(corpus.index, query(2))
    n_large, statements_large = _statements(corpus.index, query(20))
    assert (n_small, n_large) == (2, 20)
    assert statements_small == statements_large <= 4


def test_each_study_matches_on_its_own_patient_name(corpus: Corpus) -> None:
    first, second = uid(), uid()
    corpus.add(study=first, patient_id="SAME-ID", patient_name="Smith^Anne")
    corpus.add(study=second, patient_id="SAME-ID", patient_name="Jones^Anne")
    assert studies(corpus.index, "PatientName=Jones^Anne") == {second}
    assert studies(corpus.index, "PatientName=Smith^Anne") == {first}


def _count_sql(index: SqlIndex, query: QueryRequest) -> tuple[int, str]:
    total, statements = _capture(index, lambda: index.count(query))
    return int(total), " ".join(statements).lower()


def test_counting_joins_patients_only_for_patient_keys(corpus: Corpus) -> None:
    """The paging Warning counts every match: without a patient key, counting studies
    reads the study table alone (at 200,000 studies on PostgreSQL, 122 -> 38 ms)."""
    everything = parse_query(Level.STUDY, [("limit", "1")])
    total, sql = _count_sql(corpus.index, everything)
    assert total == len(search(corpus.index, Level.STUDY, "limit=1000"))
    assert "join patient" not in sql
    by_modality = parse_query(Level.STUDY, [("ModalitiesInStudy", "CT"), ("limit", "1")])
    assert "join patient" not in _count_sql(corpus.index, by_modality)[1]
    by_patient = parse_query(Level.STUDY, [("PatientID", "N-*"), ("limit", "1")])
    total, sql = _count_sql(corpus.index, by_patient)
    assert total == N_STUDIES and "join patient" in sql
    series = parse_query(Level.SERIES, [("PatientBirthDate", "19000101-"), ("limit", "1")])
    assert "join patient" in _count_sql(corpus.index, series)[1]


def test_scale_indexes_exist_after_migration(corpus: Corpus) -> None:
    """Schema v9: ModalitiesInStudy from (modality, study_fk); on PostgreSQL, prefix
    (LIKE 'abc%') indexes for the keys OHIF's study list searches by."""
    from sqlalchemy import inspect

    with corpus.index.read_engine.connect() as conn:
        inspector = inspect(conn)
        series = {i["name"] for i in inspector.get_indexes("series")}
        study = {i["name"] for i in inspector.get_indexes("study")}
        patient = {i["name"] for i in inspector.get_indexes("patient")}
    assert "ix_series_modality_study" in series
    if corpus.index.dialect == "postgresql":
        assert {"ix_study_patient_name_norm_prefix", "ix_study_accession_number_prefix"} <= study
        assert "ix_patient_patient_id_prefix" in patient
