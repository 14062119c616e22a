"""QIDO-RS parameter parsing and matching rules (PS3.18 8.3.4, PS3.4 C.2.2.2), pure.

No database and no server: conditions, paging, includefield and the SQL pattern
helpers are checked as values. The SQL behaviour is in test_storage_search.py and the
whole transaction in test_web_qido.py.
"""

from __future__ import annotations

import pytest

from dicomweb_server.dicom.attributes import Level
from dicomweb_server.dicom.matching import (
    MODALITIES_IN_STUDY,
    SERIES_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    Condition,
    Kind,
    QueryRequest,
    combine_date_time,
    parse_condition,
    parse_query,
)
from dicomweb_server.errors import InvalidRequest
from dicomweb_server.services.query import QueryService
from dicomweb_server.storage.sql.query import _glob_pattern, _like_pattern, fold_name

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
STUDY_DATE = 0x00080020
STUDY_TIME = 0x00080030
STUDY_DESCRIPTION = 0x00081030
MODALITY = 0x00080060
SERIES_NUMBER = 0x00200011
INSTANCE_NUMBER = 0x00200013
SOP_CLASS_UID = 0x00080016


def q(level: Level, query: str, **kwargs: object) -> QueryRequest:
    """parse_query over an already-decoded query string 'a=b&c=d'."""
    pairs = [tuple(p.split("=", 1)) if "=" in p else (p, "") for p in query.split("&") if p]
    return parse_query(level, pairs, **kwargs)  # type: ignore[arg-type]


# -- single conditions (PS3.4 C.2.2.2) ---------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "raw", "expected"),
    [
        # Universal matching: empty, or '*' alone (C.2.2.2.3, C.2.2.2.4 note 1).
        (PATIENT_ID, "", None),
        (PATIENT_ID, "*", None),
        (STUDY_DATE, "", None),
        (STUDY_INSTANCE_UID, "", None),
        # Single value, case kept (C.2.2.2.1).
        (PATIENT_ID, "qa-Doe", Condition(PATIENT_ID, Kind.SINGLE, ("qa-Doe",))),
        (PATIENT_ID, "A+B", Condition(PATIENT_ID, Kind.SINGLE, ("A+B",))),
        # List of UIDs: comma (PS3.18 8.3.4.1) or backslash (OHIF).
        (STUDY_INSTANCE_UID, "1.2.3", Condition(STUDY_INSTANCE_UID, Kind.SINGLE, ("1.2.3",))),
        (
            STUDY_INSTANCE_UID,
            "1.2.3,1.2.4",
            Condition(STUDY_INSTANCE_UID, Kind.LIST, ("1.2.3", "1.2.4")),
        ),
        (
            STUDY_INSTANCE_UID,
            "1.2.3\\1.2.4\\1.2.5",
            Condition(STUDY_INSTANCE_UID, Kind.LIST, ("1.2.3", "1.2.4", "1.2.5")),
        ),
        (SOP_CLASS_UID, "1.2.840.10008.5.1.4.1.1.2", Condition(SOP_CLASS_UID, Kind.SINGLE,
                                                                ("1.2.840.10008.5.1.4.1.1.2",))),
        # Wildcards (C.2.2.2.4).
        (STUDY_DESCRIPTION, "Chest*", Condition(STUDY_DESCRIPTION, Kind.WILDCARD, ("Chest*",))),
        (PATIENT_ID, "QA-?OE", Condition(PATIENT_ID, Kind.WILDCARD, ("QA-?OE",))),
        (PATIENT_NAME, "*doe*", Condition(PATIENT_NAME, Kind.WILDCARD, ("*doe*",))),
        (PATIENT_NAME, "Doe^John", Condition(PATIENT_NAME, Kind.SINGLE, ("Doe^John",))),
        (PATIENT_NAME, "^", None),
        # DA: single and the three range forms (C.2.2.2.5.1).
        (STUDY_DATE, "20240102", Condition(STUDY_DATE, Kind.SINGLE, ("20240102",))),
        (STUDY_DATE, "20240101-20240131", Condition(STUDY_DATE, Kind.RANGE,
                                                    ("20240101", "20240131"))),
        (STUDY_DATE, "-20240131", Condition(STUDY_DATE, Kind.RANGE, ("", "20240131"))),
        (STUDY_DATE, "20240101-", Condition(STUDY_DATE, Kind.RANGE, ("20240101", ""))),
        (STUDY_DATE, "20240101-20240101", Condition(STUDY_DATE, Kind.RANGE,
                                                    ("20240101", "20240101"))),
        # TM by meaning (C.2.2.2.1.3 note 1: "2230" matches "223000"), single and range.
        (STUDY_TIME, "2230", Condition(STUDY_TIME, Kind.SINGLE, ("223000.000000",))),
        (STUDY_TIME, "22", Condition(STUDY_TIME, Kind.SINGLE, ("220000.000000",))),
        (STUDY_TIME, "223000.5", Condition(STUDY_TIME, Kind.SINGLE, ("223000.500000",))),
        (STUDY_TIME, "22:30", Condition(STUDY_TIME, Kind.SINGLE, ("223000.000000",))),
        (STUDY_TIME, "1000-1800", Condition(STUDY_TIME, Kind.RANGE,
                                            ("100000.000000", "180000.000000"))),
        (STUDY_TIME, "-0830", Condition(STUDY_TIME, Kind.RANGE, ("", "083000.000000"))),
        (STUDY_TIME, "235960-", Condition(STUDY_TIME, Kind.RANGE, ("235960.000000", ""))),
        # IS by value (C.2.2.2.1, "any other VR").
        (SERIES_NUMBER, "2", Condition(SERIES_NUMBER, Kind.SINGLE, ("2",))),
        (SERIES_NUMBER, "+02", Condition(SERIES_NUMBER, Kind.SINGLE, ("2",))),
        (INSTANCE_NUMBER, "-3", Condition(INSTANCE_NUMBER, Kind.SINGLE, ("-3",))),
        # Multi-valued keys: any value may match (C.2.2.3).
        (MODALITIES_IN_STUDY, "CT", Condition(MODALITIES_IN_STUDY, Kind.SINGLE, ("CT",))),
        (MODALITIES_IN_STUDY, "CT\\MR", Condition(MODALITIES_IN_STUDY, Kind.LIST, ("CT", "MR"))),
        (MODALITIES_IN_STUDY, "CT,MR", Condition(MODALITIES_IN_STUDY, Kind.LIST, ("CT", "MR"))),
        (MODALITY, "C?", Condition(MODALITY, Kind.WILDCARD, ("C?",))),
    ],
)  # fmt: skip
def test_parse_condition(tag: int, raw: str, expected: Condition | None) -> None:
    assert parse_condition(tag, raw, fuzzy=False) == expected


@pytest.mark.parametrize(
    ("tag", "raw"),
    [
        (STUDY_DATE, "2024-01-01"),  # ISO dates are not DA; two '-' is not a range
        (STUDY_DATE, "20241301"),
        (STUDY_DATE, "20240230"),
        (STUDY_DATE, "2024010"),
        (STUDY_DATE, "yesterday"),
        (STUDY_DATE, "-"),
        (STUDY_DATE, "20240105-20240101"),  # reversed range
        (STUDY_TIME, "2500"),
        (STUDY_TIME, "1260"),
        (STUDY_TIME, "106161"),
        (STUDY_TIME, "10am"),
        (STUDY_TIME, "1800-1000"),  # crossing midnight is not supported (C.2.2.2.5.2)
        (STUDY_TIME, "1000-1000-1200"),
        (SERIES_NUMBER, "abc"),
        (SERIES_NUMBER, "1.5"),
        (SERIES_NUMBER, "1,2"),
        (SERIES_NUMBER, "99999999999"),  # outside IS (32-bit)
        (SERIES_NUMBER, "٣"),  # a digit, but not an ASCII one
        (STUDY_INSTANCE_UID, "1.2.abc"),
        (STUDY_INSTANCE_UID, "1.2.*"),  # UIDs have no wildcard matching
        (STUDY_INSTANCE_UID, "1.02.3"),
        (STUDY_INSTANCE_UID, "1.2.3,bad"),
        (MODALITIES_IN_STUDY, "CT\\M*"),
    ],
)
def test_parse_condition_rejects(tag: int, raw: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_condition(tag, raw, fuzzy=False)


def test_fuzzy_person_name_is_folded_words() -> None:
    assert parse_condition(PATIENT_NAME, "jo", fuzzy=True) == Condition(
        PATIENT_NAME, Kind.FUZZY, ("JO",)
    )
    assert parse_condition(PATIENT_NAME, "Müller^jü", fuzzy=True) == Condition(
        PATIENT_NAME, Kind.FUZZY, ("MULLER", "JU")
    )
    # A wildcard wins over fuzzy matching; non-PN attributes are never fuzzy.
    assert parse_condition(PATIENT_NAME, "jo*", fuzzy=True).kind is Kind.WILDCARD  # type: ignore[union-attr]
    assert parse_condition(PATIENT_ID, "jo", fuzzy=True).kind is Kind.SINGLE  # type: ignore[union-attr]


# -- the whole query -----------------------------------------------------------------


def test_keyword_and_tag_are_the_same_attribute() -> None:
    by_keyword = q(Level.STUDY, "PatientID=P1")
    by_tag = q(Level.STUDY, "00100020=P1")
    assert (
        by_keyword.conditions == by_tag.conditions == [Condition(PATIENT_ID, Kind.SINGLE, ("P1",))]
    )
    assert PATIENT_ID in by_tag.includefields  # a matching key is also returned


@pytest.mark.parametrize(
    ("level", "query"),
    [
        (Level.STUDY, "Foo=1"),  # not a keyword
        (Level.STUDY, "patientid=1"),  # keywords are case-sensitive (PS3.18 8.3.1)
        (Level.STUDY, "includefield=NotAKeyword"),
        (Level.STUDY, "includefield=RequestAttributesSequence.Nope"),
        (Level.STUDY, "RequestAttributesSequence.Nope=1"),
        (Level.STUDY, "fuzzymatching=maybe"),
        (Level.STUDY, "fuzzymatching=1"),
        (Level.STUDY, "limit=-1"),
        (Level.STUDY, "limit=abc"),
        (Level.STUDY, "limit=1.5"),
        (Level.STUDY, "limit="),
        (Level.STUDY, "offset=-5"),
        (Level.STUDY, "offset=x"),
        # Series and instance attributes are not keys of a study search (10.6.1.2.1).
        (Level.STUDY, "Modality=CT"),
        (Level.STUDY, "SeriesNumber=1"),
        (Level.STUDY, "Manufacturer=ACME"),
        (Level.STUDY, "SOPClassUID=1.2.3"),
        (Level.STUDY, "NumberOfSeriesRelatedInstances=1"),
        (Level.SERIES, "InstanceNumber=1"),
        (Level.SERIES, "SOPInstanceUID=1.2.3"),
        # Each attribute at most once (PS3.18 8.3.4.1).
        (Level.STUDY, "PatientID=a&00100020=b"),
        # No NULs in query values (PS3.18 Table 8.3.1-1).
        (Level.STUDY, "PatientID=a\x00b"),
    ],
)
def test_parse_query_rejects(level: Level, query: str) -> None:
    with pytest.raises(InvalidRequest):
        q(level, query)


def test_unindexed_attribute_is_ignored_with_a_warning_and_returned() -> None:
    query = q(Level.STUDY, "PatientComments=vip&PatientID=P1")
    assert query.conditions == [Condition(PATIENT_ID, Kind.SINGLE, ("P1",))]
    assert len(query.warnings) == 1 and "PatientComments" in query.warnings[0]
    assert 0x00104000 in query.includefields
    series = q(Level.SERIES, "Manufacturer=ACME")
    assert series.conditions == [] and "Manufacturer" in series.warnings[0]


def test_sequence_matching_is_ignored_with_a_warning() -> None:
    query = q(Level.SERIES, "RequestAttributesSequence.ScheduledProcedureStepID=S1")
    assert query.conditions == []
    assert 0x00400275 in query.includefields
    assert "RequestAttributesSequence.ScheduledProcedureStepID" in query.warnings[0]


def test_transaction_parameters_are_not_attributes() -> None:
    query = q(Level.STUDY, "accept=application/dicom+json&charset=utf-8&PatientID=P")
    assert query.conditions == [Condition(PATIENT_ID, Kind.SINGLE, ("P",))]
    assert query.warnings == []


@pytest.mark.parametrize(
    ("query", "fuzzy"),
    [
        ("", False),
        ("fuzzymatching=false", False),
        ("fuzzymatching=true", True),
        ("fuzzymatching=TRUE", True),
    ],
)
def test_fuzzymatching(query: str, fuzzy: bool) -> None:
    assert q(Level.STUDY, query).fuzzy is fuzzy


def test_fuzzymatching_applies_to_names_given_before_it() -> None:
    query = q(Level.STUDY, "PatientName=jo&fuzzymatching=true")
    assert query.conditions == [Condition(PATIENT_NAME, Kind.FUZZY, ("JO",))]


@pytest.mark.parametrize(
    ("query", "limit", "offset", "warned"),
    [
        ("", 100, 0, False),
        ("limit=5&offset=10", 5, 10, False),
        ("limit=0", 0, 0, False),
        ("limit=1000", 1000, 0, False),
        ("limit=1001", 1000, 0, True),
        ("offset=99999999999999999999999", 100, 2**62, False),
    ],
)
def test_paging(query: str, limit: int, offset: int, warned: bool) -> None:
    parsed = q(Level.STUDY, query, default_limit=100, max_limit=1000)
    assert (parsed.limit, parsed.offset) == (limit, offset)
    assert bool(parsed.warnings) is warned
    if warned:
        assert parsed.warnings == [
            "The limit 1001 exceeds the maximum of 1000; at most 1000 results are returned"
        ]


@pytest.mark.parametrize(
    ("query", "fields", "include_all"),
    [
        ("includefield=StudyDescription", {STUDY_DESCRIPTION}, False),
        ("includefield=00081030", {STUDY_DESCRIPTION}, False),
        ("includefield=00081030,00080060", {STUDY_DESCRIPTION, MODALITY}, False),
        ("includefield=00081030&includefield=Modality", {STUDY_DESCRIPTION, MODALITY}, False),
        ("includefield=all", set(), True),
        ("includefield=RequestAttributesSequence.RequestedProcedureID", {0x00400275}, False),
        ("PatientID=", {PATIENT_ID}, False),  # universal matching asks for the value
    ],
)
def test_includefield(query: str, fields: set[int], include_all: bool) -> None:
    parsed = q(Level.STUDY, query)
    assert parsed.includefields == fields
    assert parsed.include_all is include_all
    assert parsed.conditions == []


def test_scope_comes_from_the_path_conditions() -> None:
    study = Condition(STUDY_INSTANCE_UID, Kind.SINGLE, ("1.2.3",))
    series = Condition(SERIES_INSTANCE_UID, Kind.SINGLE, ("1.2.4",))
    assert q(Level.SERIES, "").scope is None
    assert q(Level.SERIES, "", scope=[study]).scope is Level.STUDY
    assert q(Level.INSTANCE, "", scope=[study, series]).scope is Level.SERIES
    # A matching key for the scoped attribute is applied as well, not an error.
    both = q(Level.SERIES, "StudyInstanceUID=1.2.5", scope=[study])
    assert both.conditions == [study, Condition(STUDY_INSTANCE_UID, Kind.SINGLE, ("1.2.5",))]


# -- combined date-time (PS3.4 C.2.2.2.5.4, PS3.18 8.3.4.1.1) -------------------------


def test_combined_date_time_range_is_one_span() -> None:
    query = q(Level.STUDY, "StudyDate=20060705-20060707&StudyTime=1000-1800")
    assert query.conditions == [
        Condition(
            STUDY_DATE,
            Kind.DATETIME_RANGE,
            ("20060705", "100000.000000", "20060707", "180000.000000"),
            STUDY_TIME,
        )
    ]


@pytest.mark.parametrize(
    ("date", "time", "combined"),
    [
        ("-20060707", "-1800", ("", "", "20060707", "180000.000000")),
        ("20060705-", "1000-", ("20060705", "100000.000000", "", "")),
    ],
)
def test_combined_open_ranges_of_the_same_form(
    date: str, time: str, combined: tuple[str, ...]
) -> None:
    query = q(Level.STUDY, f"StudyDate={date}&StudyTime={time}")
    assert query.conditions == [Condition(STUDY_DATE, Kind.DATETIME_RANGE, combined, STUDY_TIME)]


@pytest.mark.parametrize(
    "query",
    [
        "StudyDate=20060705&StudyTime=1000-1800",  # single date: matched separately
        "StudyDate=20060705-20060707&StudyTime=1000",  # single time
        "StudyDate=20060705-20060707&StudyTime=1000-",  # different range forms
        "StudyDate=-20060707&StudyTime=1000-1800",
    ],
)
def test_date_and_time_of_different_forms_stay_separate(query: str) -> None:
    kinds = sorted(c.kind.value for c in q(Level.STUDY, query).conditions)
    assert Kind.DATETIME_RANGE.value not in kinds
    assert len(kinds) == 2


def test_combination_also_pairs_the_pps_start_date_and_time() -> None:
    conditions = combine_date_time(
        [
            Condition(0x00400244, Kind.RANGE, ("20240101", "20240102")),
            Condition(0x00400245, Kind.RANGE, ("120000.000000", "110000.000000")),
        ]
    )
    assert [c.kind for c in conditions] == [Kind.DATETIME_RANGE]
    assert conditions[0].partner == 0x00400245


# -- SQL pattern helpers (pure string functions) ---------------------------------------


@pytest.mark.parametrize(
    ("dicom", "like", "glob"),
    [
        ("Chest*", "Chest%", "Chest*"),
        ("C?est", "C_est", "C?est"),
        ("50%_off\\", "50\\%\\_off\\\\", "50%_off\\"),
        ("[x]*", "[x]%", "[[]x]*"),
    ],
)
def test_wildcard_patterns(dicom: str, like: str, glob: str) -> None:
    assert _like_pattern(dicom) == like
    assert _glob_pattern(dicom) == glob


@pytest.mark.parametrize(
    ("name", "folded"),
    [
        ("Doe^John", " DOE JOHN "),
        ("müller^JÜRGEN", " MULLER JURGEN "),
        ("Ωmega^Ñandú", " ΩMEGA NANDU "),
        ("*doe*", " *DOE* "),
        ("山田^太郎", " 山田 太郎 "),
        ("Wang^XiaoDong=王^小東", " WANG XIAODONG 王 小東 "),
    ],
)
def test_fold_name(name: str, folded: str) -> None:
    assert fold_name(name) == folded


# -- which attributes each resource returns (PS3.18 10.6.3.3) --------------------------


def test_return_attributes_follow_the_resource() -> None:
    study_scope = [Condition(STUDY_INSTANCE_UID, Kind.SINGLE, ("1.2.3",))]
    series_scope = [*study_scope, Condition(SERIES_INSTANCE_UID, Kind.SINGLE, ("1.2.4",))]
    studies = QueryService.wanted(q(Level.STUDY, "includefield=Modality"))
    all_series = QueryService.wanted(q(Level.SERIES, ""))
    study_series = QueryService.wanted(q(Level.SERIES, "", scope=study_scope))
    all_instances = QueryService.wanted(q(Level.INSTANCE, ""))
    study_instances = QueryService.wanted(q(Level.INSTANCE, "", scope=study_scope))
    series_instances = QueryService.wanted(q(Level.INSTANCE, "", scope=series_scope))
    # Series attributes never in study results, even when asked for.
    assert MODALITY not in studies
    # All Series adds the Study table; a Study's Series does not.
    assert {PATIENT_NAME, MODALITIES_IN_STUDY, 0x00201206} <= all_series
    assert PATIENT_NAME not in study_series and 0x0020000D in study_series
    # All Instances adds Study and Series; a Study's Instances adds Series only.
    assert {PATIENT_NAME, MODALITY, 0x00201209} <= all_instances
    assert MODALITY in study_instances and PATIENT_NAME not in study_instances
    assert MODALITY not in series_instances and SOP_CLASS_UID in series_instances
