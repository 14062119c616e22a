"""MPPS attribute lists as a modality sends them (PS3.4 F.7.2): the N-CREATE when the
exam starts, the N-SET that ends it."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from tests.dicomgen import uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def started(
    accession: str,
    study: str = "",
    step_id: str = "",
    *,
    requested_procedure_id: str = "RP-1",
    **changes: object,
) -> Dataset:
    """The N-CREATE attribute list (Table F.7.2-1); ``changes`` set top-level attributes
    (``...`` removes one)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    item = Dataset()
    item.StudyInstanceUID = study or uid()
    item.AccessionNumber = accession
    item.ScheduledProcedureStepID = step_id
    item.RequestedProcedureID = requested_procedure_id
    ds.ScheduledStepAttributesSequence = [item]
    ds.PatientName, ds.PatientID = "Doe^John", "PID-1"
    ds.PerformedProcedureStepID = "PPS-" + accession[-6:]
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedStationName = "CT room 1"
    ds.PerformedProcedureStepStartDate = "20261125"
    ds.PerformedProcedureStepStartTime = "093500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT head"
    ds.Modality = "CT"
    ds.PerformedProcedureStepEndDate = None
    ds.PerformedProcedureStepEndTime = None
    ds.PerformedSeriesSequence = []
    for keyword, value in changes.items():
        if value is ...:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def ended(status: str, images: int | Sequence[Dataset] = 2) -> Dataset:
    """The N-SET modification list that ends the exam: one performed series naming
    ``images`` (stored datasets, or that many made-up CT references)."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261125"
    ds.PerformedProcedureStepEndTime = "094500"
    series = Dataset()
    series.SeriesInstanceUID = uid()
    series.PerformingPhysicianName = ""
    series.ProtocolName = "Head"
    series.OperatorsName = ""
    series.SeriesDescription = "Axial"
    series.RetrieveAETitle = ""
    refs = []
    made = [None] * images if isinstance(images, int) else list(images)
    for image in made:
        ref = Dataset()
        ref.ReferencedSOPClassUID = image.SOPClassUID if image else CT_IMAGE_STORAGE
        ref.ReferencedSOPInstanceUID = image.SOPInstanceUID if image else uid()
        refs.append(ref)
        if image:
            series.SeriesInstanceUID = image.SeriesInstanceUID
    series.ReferencedImageSequence = refs
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    ds.PerformedSeriesSequence = [series]
    if status == "DISCONTINUED":
        reason = Dataset()
        reason.CodeValue, reason.CodingSchemeDesignator = "110514", "DCM"
        reason.CodeMeaning = "Incorrect worklist entry selected"
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [reason]
    return ds
