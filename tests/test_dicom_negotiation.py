"""Accept negotiation (PS3.18 8.7.5-8.7.8) with the header shapes real viewers send."""

from __future__ import annotations

import pytest

from dicomweb_server.dicom.negotiation import (
    Choice,
    Form,
    choose_bulkdata,
    choose_dataset_form,
    choose_instances,
    parse_accept,
)
from dicomweb_server.dicom.transcode import output_syntax
from dicomweb_server.errors import NotAcceptable

EVRLE = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K = "1.2.840.10008.1.2.4.91"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
MPEG2 = "1.2.840.10008.1.2.4.100"  # no encoder writes it


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        # No Accept at all (curl, some scripts): treated as */* (RFC 9110 12.5.1).
        (None, Choice(Form.MULTIPART, EVRLE, (EVRLE,))),
        ("", Choice(Form.MULTIPART, EVRLE, (EVRLE,))),
        ("*/*", Choice(Form.MULTIPART, EVRLE, (EVRLE,))),
        ("multipart/*", Choice(Form.MULTIPART, EVRLE, (EVRLE,))),
        # dicomweb-client's default.
        ('multipart/related; type="application/dicom"', Choice(Form.MULTIPART, EVRLE, (EVRLE,))),
        # Unquoted type, as OHIF and several Java clients send it.
        ("multipart/related; type=application/dicom", Choice(Form.MULTIPART, EVRLE, (EVRLE,))),
        (
            'Multipart/Related; Type="Application/DICOM"',
            Choice(Form.MULTIPART, EVRLE, (EVRLE,)),
        ),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=*',
            Choice(Form.MULTIPART, "*", ("*",)),
        ),
        (
            'multipart/related; type="application/dicom"; transfer-syntax="*"',
            Choice(Form.MULTIPART, "*", ("*",)),
        ),
        (
            "multipart/related;type=application/dicom;transfer-syntax=*",
            Choice(Form.MULTIPART, "*", ("*",)),
        ),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax={J2K}',
            Choice(Form.MULTIPART, J2K, (J2K,)),
        ),
        ("application/zip", Choice(Form.ZIP, "*", ("*",))),
        ('multipart/related; type="application/*"', Choice(Form.MULTIPART, EVRLE, (EVRLE,))),
    ],
)
def test_study_retrieve_accept_variants(accept: str | None, expected: Choice) -> None:
    assert choose_instances(accept, single_allowed=False) == expected


def test_single_part_only_for_an_instance() -> None:
    single = choose_instances("application/dicom", single_allowed=True)
    assert single == Choice(Form.SINGLE, EVRLE, (EVRLE,))
    with pytest.raises(NotAcceptable) as err:
        choose_instances("application/dicom", single_allowed=False)
    assert "multipart/related" in err.value.message
    star = choose_instances("application/dicom; transfer-syntax=*", single_allowed=True)
    assert star == Choice(Form.SINGLE, "*", ("*",))


def test_q_values_order_the_choice() -> None:
    accept = 'multipart/related; type="application/dicom"; q=0.5, application/zip; q=0.9'
    assert choose_instances(accept, single_allowed=False).form is Form.ZIP
    accept = 'application/zip; q=0.2, multipart/related; type="application/dicom"'
    assert choose_instances(accept, single_allowed=False).form is Form.MULTIPART
    # q=0 means "not acceptable" (RFC 9110 12.4.2).
    with pytest.raises(NotAcceptable):
        choose_instances("application/zip; q=0", single_allowed=False)
    # Ties keep the order sent.
    ranges = parse_accept("a/b;q=0.5, c/d, e/f;q=0.5, g/h")
    assert [r.media_type for r in ranges] == ["c/d", "g/h", "a/b", "e/f"]


def test_every_transfer_syntax_of_the_chosen_form_is_an_alternative() -> None:
    accept = (
        f'multipart/related; type="application/dicom"; transfer-syntax={MPEG2}, '
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5, '
        "application/zip; q=0.4"
    )
    choice = choose_instances(accept, single_allowed=False)
    assert choice == Choice(Form.MULTIPART, MPEG2, (MPEG2, "*"))
    # Per instance, the first possible alternative wins (PS3.18 8.7.8.2).
    assert output_syntax(EVRLE, choice.alternatives) == EVRLE  # via "*"
    assert output_syntax(MPEG2, choice.alternatives) == MPEG2


def test_invalid_ranges_and_parameters_are_ignored() -> None:
    # PS3.18 8.7.7: invalid Accept values "shall be ignored".
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.abc, application/zip'
    assert choose_instances(accept, single_allowed=False).form is Form.ZIP
    # A bad q is ignored: the range keeps q=1 and wins over the q=0.5 one.
    accept = 'multipart/related; type="application/dicom"; q=0.5, application/zip; q=high'
    assert choose_instances(accept, single_allowed=False).form is Form.ZIP
    assert parse_accept("a/b; q=1.5")[0].q == 1.0
    with pytest.raises(NotAcceptable):
        choose_instances(
            'multipart/related; type="application/dicom"; transfer-syntax=JPEG',
            single_allowed=False,
        )
    # An unknown parameter does not matter.
    choice = choose_instances(
        'multipart/related; type="application/dicom"; charset=utf-8; foo="a,b;c"',
        single_allowed=False,
    )
    assert choice.form is Form.MULTIPART
    assert [r.media_type for r in parse_accept('a/b; foo="x,y", c/d')] == ["a/b", "c/d"]
    assert [r.media_type for r in parse_accept("garbage, , a/b")] == ["a/b"]


@pytest.mark.parametrize(
    "accept",
    [
        "application/dicom+json",
        "image/jpeg",
        # OHIF's frame/bulkdata Accept is not a representation of an instance.
        "multipart/related; type=application/octet-stream; transfer-syntax=*",
    ],
)
def test_unsupported_types_are_406(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        choose_instances(accept, single_allowed=True)


@pytest.mark.parametrize(
    ("accept", "form"),
    [
        (None, Form.JSON),
        ("application/dicom+json", Form.JSON),
        ("application/dicom+json, application/json", Form.JSON),  # dicomweb-client
        ("application/json", Form.JSON),
        ("*/*", Form.JSON),
        ("application/*", Form.JSON),
        ('multipart/related; type="application/dicom+xml"', Form.XML),
        ("multipart/related; type=application/dicom+xml", Form.XML),
        (
            'application/dicom+json; q=0.1, multipart/related; type="application/dicom+xml"',
            Form.XML,
        ),
        ("text/html, */*; q=0.8", Form.JSON),
    ],
)
def test_metadata_accept_variants(accept: str | None, form: Form) -> None:
    assert choose_dataset_form(accept).form is form


def test_metadata_unsupported_is_406() -> None:
    with pytest.raises(NotAcceptable) as err:
        choose_dataset_form("image/png")
    assert "application/dicom+json" in err.value.message


@pytest.mark.parametrize(
    ("accept", "form"),
    [
        (None, Form.MULTIPART),
        ("*/*", Form.MULTIPART),
        ('multipart/related; type="application/octet-stream"', Form.MULTIPART),
        ("multipart/related; type=application/octet-stream; transfer-syntax=*", Form.MULTIPART),
        ("application/octet-stream", Form.SINGLE),
        ('multipart/related; type="*/*"', Form.MULTIPART),  # dicomweb-client's bulk data
        ("application/*", Form.SINGLE),
        (
            'application/octet-stream; q=0.5, multipart/related; type="application/octet-stream"',
            Form.MULTIPART,
        ),
    ],
)
def test_bulkdata_accept_variants(accept: str | None, form: Form) -> None:
    assert choose_bulkdata(accept).form is form


def test_bulkdata_unsupported_is_406() -> None:
    with pytest.raises(NotAcceptable):
        choose_bulkdata('multipart/related; type="image/jls"')


@pytest.mark.parametrize(
    ("stored", "requested", "sent"),
    [
        (EVRLE, EVRLE, EVRLE),
        (EVRLE, "*", EVRLE),
        (J2K, "*", J2K),
        (J2K, EVRLE, EVRLE),
        (RLE, EVRLE, EVRLE),
        # Never Implicit VR or Big Endian on the wire, not even for "*" (PS3.18 8.7.3).
        (IMPLICIT, "*", EVRLE),
        (IMPLICIT, EVRLE, EVRLE),
        (BIG_ENDIAN, "*", EVRLE),
        # Re-encoded where an encoder is installed (pyjpegls, openjpeg, RLE).
        (EVRLE, JPEG_LS, JPEG_LS),
        (J2K, J2K_LOSSLESS, J2K_LOSSLESS),
        (JPEG_LS, RLE, RLE),
    ],
)
def test_output_syntax(stored: str, requested: str, sent: str) -> None:
    assert output_syntax(stored, requested) == sent


@pytest.mark.parametrize(
    ("stored", "requested"),
    [(EVRLE, MPEG2), (J2K, MPEG2), (IMPLICIT, IMPLICIT), (EVRLE, BIG_ENDIAN)],
)
def test_impossible_output_syntax_is_406(stored: str, requested: str) -> None:
    with pytest.raises(NotAcceptable) as err:
        output_syntax(stored, requested)
    assert requested in err.value.message
