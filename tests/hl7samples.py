"""HL7 v2 order messages for the tests, built the way a RIS/HIS sends them."""

from __future__ import annotations


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment from its numbered fields (``name``-1 is the first after the name)."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join([name, *values])


def omi(
    accession: str = "ACC0001",
    *,
    control: str = "NW",
    control_id: str = "MSG00001",
    patient_id: str = "PAT001",
    modality: str = "CT",
    station_ae: str = "CT01",
    study_uid: str = "1.2.826.0.1.3680043.10.1000.1",
    start: str = "202611250930",
    priority: str = "R",
    rp_id: str = "RP0001",
    sps_id: str = "SPS0001",
) -> str:
    """An OMI^O23 (HL7 v2.5) as in IHE RAD-4, one requested procedure, one step."""
    segments = [
        f"MSH|^~\\&|RIS|HOSP|DICOMWEB|HOSP|20261125083000||OMI^O23^OMI_O23|{control_id}|P|2.5",
        f"PID|1||{patient_id}^^^HOSP^MR||Doe^John^Q^Jr^Dr||19700102|M",
        seg("PV1", {1: "1", 2: "O", 8: "0815^Smith^Anna^^^Dr"}),
        f"ORC|{control}|PL{accession}|FL{accession}||SC||||20261125083000|||4711^Jones^Peter^^^Dr",
        f"TQ1|1||||||{start}||{priority}",
        seg(
            "OBR",
            {
                1: "1",
                2: f"PL{accession}",
                3: f"FL{accession}",
                4: "CT-HEAD^CT Head without contrast^LOCAL",
                18: accession,
                19: rp_id,
                24: modality,
            },
        ),
        f"IPC|{accession}|{rp_id}|{study_uid}|{sps_id}|{modality}||Room 1||{station_ae}",
    ]
    return "\r".join(segments) + "\r"


def orm(
    accession: str = "ACC1001",
    *,
    control: str = "NW",
    control_id: str = "ORM00001",
    patient_id: str = "PAT002",
    modality: str = "MR",
    station_ae: str = "MR01",
    start: str = "20261125101500",
) -> str:
    """An ORM^O01 (HL7 v2.3.1) as in IHE RAD-4: accession in OBR-18, modality OBR-24,
    scheduled start OBR-27.4, station AE OBR-21, Study Instance UID in ZDS-1."""
    segments = [
        f"MSH|^~\\&|HIS|HOSP|PACS|HOSP|20261125090000||ORM^O01|{control_id}|P|2.3.1",
        f"PID|1||{patient_id}^^^HOSP||Roe^Jane||19851224|F",
        "PV1|1|I",
        f"ORC|{control}|P{accession}|F{accession}||SC",
        seg(
            "OBR",
            {
                1: "1",
                2: f"P{accession}",
                3: f"F{accession}",
                4: "MR-KNEE^MR Knee left",
                18: accession,
                19: f"RP{accession}",
                20: f"SPS{accession}",
                21: station_ae,
                24: modality,
                27: f"^^^{start}^^S",
            },
        ),
        "ZDS|1.2.826.0.1.3680043.10.1000.2^100^Application^DICOM",
    ]
    return "\r".join(segments) + "\r"
