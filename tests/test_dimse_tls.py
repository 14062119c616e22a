"""DIMSE over TLS with a throwaway CA made here: mutual authentication required."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pynetdicom import AE

from tests.conftest import Server, run_cli, start_server

VERIFICATION = "1.2.840.10008.1.1"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    folder: Path,
    stem: str,
    subject: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("tls")
    ca = _issue(tmp, "ca", "Test CA", None)
    _issue(tmp, "server", "archive", ca)
    _issue(tmp, "client", "modality", ca)
    server = start_server(
        tmp / "data",
        f"sqlite:///{tmp / 'i.sqlite3'}",
        "--dimse-tls-cert",
        str(tmp / "server.pem"),
        "--dimse-tls-key",
        str(tmp / "server.key"),
        "--dimse-tls-ca",
        str(tmp / "ca.pem"),
    )
    yield server, tmp
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-3000:]


def _echo(server: Server, context: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="TLSSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(VERIFICATION)
    tls_args = (context, "127.0.0.1") if context else None
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMWEB", tls_args=tls_args)
    if not assoc.is_established:
        return False
    try:
        return bool(assoc.send_c_echo().Status == 0x0000)
    finally:
        assoc.release()


_CLIENT = """
import ssl, sys
from pynetdicom import AE
port, folder, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ae = AE(ae_title="TLSSCU")
ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
ae.add_requested_context("1.2.840.10008.1.1")
tls = None
if mode != "plain":
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=folder + "/ca.pem")
    if mode == "cert":
        ctx.load_cert_chain(folder + "/client.pem", folder + "/client.key")
    tls = (ctx, "127.0.0.1")
assoc = ae.associate("127.0.0.1", port, ae_title="DICOMWEB", tls_args=tls)
ok = assoc.is_established and assoc.send_c_echo().Status == 0
if assoc.is_established:
    assoc.release()
print("ok" if ok else "refused")
"""


def _refused(server: Server, folder: Path, mode: str) -> bool:
    """In a child process: pynetdicom leaves the socket of a refused TLS handshake
    to the garbage collector, and its ResourceWarning must not fail this run."""
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _CLIENT, str(server.dimse_port), str(folder), mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.stdout.strip().endswith("refused")


def _client(folder: Path, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(folder / "ca.pem"))
    if with_cert:
        context.load_cert_chain(folder / "client.pem", folder / "client.key")
    return context


def test_echo_over_tls_with_a_client_certificate(tls: tuple[Server, Path]) -> None:
    server, folder = tls
    assert _echo(server, _client(folder, with_cert=True))


def test_no_client_certificate_or_no_tls_is_refused(tls: tuple[Server, Path]) -> None:
    server, folder = tls
    assert _refused(server, folder, "no-cert")
    assert _refused(server, folder, "plain")
    assert not _refused(server, folder, "cert")
    assert _echo(server, _client(folder, with_cert=True))  # still serving


def test_tls_settings_are_checked_at_start(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        "--data-dir",
        str(tmp_path / "d"),
        "--dimse-tls-cert",
        str(tmp_path / "x.pem"),
        timeout=60,
    )
    assert result.returncode == 2
    assert "dimse_tls_cert and dimse_tls_key" in result.stderr
    result = run_cli(
        "serve",
        "--data-dir",
        str(tmp_path / "d"),
        "--dimse-tls-cert",
        str(tmp_path / "x.pem"),
        "--dimse-tls-key",
        str(tmp_path / "x.key"),
        timeout=60,
    )
    assert result.returncode == 2
    assert "is not a file" in result.stderr
