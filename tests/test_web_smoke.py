"""The walking skeleton: store, find and retrieve through dicomweb-client on a real server."""

from __future__ import annotations

from dicomweb_client.api import DICOMwebClient

from tests.conftest import Server
from tests.dicomgen import make_dataset


def test_store_search_retrieve_round_trip(server: Server) -> None:
    client = DICOMwebClient(server.url)
    ds = make_dataset(patient_name="Round^Trip")
    response = client.store_instances([ds])
    assert len(response.ReferencedSOPSequence) == 1
    studies = client.search_for_studies(search_filters={"PatientName": "Round^Trip"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [ds.StudyInstanceUID]
    got = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert got.PixelData == ds.PixelData
    assert str(got.PatientName) == "Round^Trip"
