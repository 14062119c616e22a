"""MPPS rules (PS3.4 F.7), pure: N-CREATE and N-SET checks, links, what a step performed."""

from __future__ import annotations

from pydicom.dataset import Dataset

from dicomweb_server.dicom import mpps
from tests.mppsgen import started

STUDY = "1.2.826.0.1.3680043.8.498.10"


def created(**changes: object) -> Dataset:
    """An N-CREATE attribute list as a modality sends it (Table F.7.2-1)."""
    return started(
        "ACC-9",
        STUDY,
        "SPS-9",
        requested_procedure_id="RP-9",
        PatientName="Doe^Jane",
        PatientID="P9",
        PerformedProcedureStepID="PPS-1",
        **changes,
    )


def final(status: str = "COMPLETED") -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261125"
    ds.PerformedProcedureStepEndTime = "094500"
    series = Dataset()
    series.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.11"
    image = Dataset()
    image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    image.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.12"
    series.ReferencedImageSequence = [image]
    ds.PerformedSeriesSequence = [series]
    return ds


def test_a_complete_n_create_is_accepted() -> None:
    assert mpps.check_create(created()) is None


def test_n_create_refusals_carry_the_standard_status() -> None:
    missing = mpps.check_create(created(Modality=...))
    assert missing is not None and missing.status == mpps.MISSING_ATTRIBUTE
    assert "Modality" in missing.comment
    empty = mpps.check_create(created(PerformedStationAETitle=""))
    assert empty is not None and empty.status == mpps.MISSING_ATTRIBUTE_VALUE
    wrong = mpps.check_create(created(PerformedProcedureStepStatus="COMPLETED"))
    assert wrong is not None and wrong.status == mpps.INVALID_ATTRIBUTE_VALUE
    no_study = created()
    del no_study.ScheduledStepAttributesSequence[0].StudyInstanceUID
    refused = mpps.check_create(no_study)
    assert refused is not None and refused.status == mpps.MISSING_ATTRIBUTE
    assert mpps.check_create(None) is not None


def test_n_set_rules() -> None:
    assert mpps.check_set(mpps.IN_PROGRESS, final()) is None
    done = mpps.check_set(mpps.COMPLETED, final())
    assert done is not None and (done.status, done.error_id) == (0x0110, 0xA710)
    assert done.comment == "Performed Procedure Step Object may no longer be updated"
    fixed = Dataset()
    fixed.PatientID = "OTHER"
    refused = mpps.check_set(mpps.IN_PROGRESS, fixed)
    assert refused is not None and refused.status == mpps.INVALID_ATTRIBUTE_VALUE
    assert "PatientID" in refused.comment
    bad = Dataset()
    bad.PerformedProcedureStepStatus = "PAUSED"
    bad_status = mpps.check_set(mpps.IN_PROGRESS, bad)
    assert bad_status is not None and bad_status.status == mpps.INVALID_ATTRIBUTE_VALUE


def test_final_state_requirements() -> None:
    merged = Dataset.from_json(mpps.merged(mpps.json_of(created()), final()))
    assert mpps.check_final(merged) is None
    incomplete = Dataset()
    incomplete.PerformedProcedureStepStatus = "COMPLETED"
    merged = Dataset.from_json(mpps.merged(mpps.json_of(created()), incomplete))
    refusal = mpps.check_final(merged)
    assert refusal is not None and refusal.status == mpps.MISSING_ATTRIBUTE_VALUE
    assert "PerformedProcedureStepEndDate" in refusal.comment


def test_references_outputs_and_performed_information() -> None:
    ref = mpps.references(created())[0]
    assert (ref.accession_number, ref.study_uid, ref.step_id) == ("ACC-9", STUDY, "SPS-9")
    merged = Dataset.from_json(mpps.merged(mpps.json_of(created()), final()))
    assert mpps.outputs(merged) == [
        (
            STUDY,
            "1.2.826.0.1.3680043.8.498.11",
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.826.0.1.3680043.8.498.12",
        )
    ]
    done = Dataset.from_json(mpps.performed(merged))
    item = done.UnifiedProcedureStepPerformedProcedureSequence[0]
    assert item.PerformedProcedureStepStartDateTime == "20261125093500"
    assert item.PerformedProcedureStepEndDateTime == "20261125094500"
    assert item.PerformedStationNameCodeSequence[0].CodeValue == "CT01"
    assert item.PerformedProcedureStepDescription == "CT head"
    assert "ProcedureStepProgressInformationSequence" not in done


def test_a_discontinued_step_says_why() -> None:
    stop = final("DISCONTINUED")
    reason = Dataset()
    reason.CodeValue, reason.CodingSchemeDesignator = "110514", "DCM"
    reason.CodeMeaning = "Incorrect worklist entry selected"
    stop.PerformedProcedureStepDiscontinuationReasonCodeSequence = [reason]
    merged = Dataset.from_json(mpps.merged(mpps.json_of(created()), stop))
    progress = Dataset.from_json(mpps.performed(merged)).ProcedureStepProgressInformationSequence
    assert progress[0].ReasonForCancellation == "Incorrect worklist entry selected"
    assert progress[0].ProcedureStepDiscontinuationReasonCodeSequence[0].CodeValue == "110514"
    assert progress[0].ProcedureStepCancellationDateTime == "20261125094500"
