"""The pure parts of security: hashes, token checks against a JWKS file, audit search,
the policy table and the settings that configure them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dicomweb_server.config import load_settings
from dicomweb_server.services.audit import (
    QUERY,
    AuditEvent,
    AuditQuery,
    AuditTrail,
    JsonlFileSink,
    search,
)
from dicomweb_server.services.credentials import StaticCredentials, hash_secret, verify_secret
from dicomweb_server.services.tokens import Jwks, TokenRejected, TokenVerifier
from dicomweb_server.web import policy
from tests import authgen


def test_hashes_verify_and_reject() -> None:
    for fast in (True, False):
        stored = hash_secret("pässword", fast=fast)
        assert verify_secret("pässword", stored)
        assert not verify_secret("password", stored)
    assert hash_secret("x") != hash_secret("x")  # salted
    for broken in ("", "sha256", "scrypt$1$2", "md5$abc", "scrypt$x$8$1$AA==$AA=="):
        assert not verify_secret("x", broken)


def test_static_credentials() -> None:
    creds = StaticCredentials(
        [f"ci:writer:{hash_secret('key-1', fast=True)}"], [f"bob:reader:{hash_secret('pw')}"]
    )
    principal = creds.check_api_key("key-1")
    assert principal is not None and principal.name == "ci" and principal.roles == {"writer"}
    assert creds.check_api_key("key-2") is None
    assert creds.check_basic("bob", "pw") is not None
    assert creds.check_basic("bob", "pw") is not None  # from the cache
    assert creds.check_basic("bob", "PW") is None
    assert creds.check_basic("eve", "pw") is None


def _verifier(path: Path, leeway: float = 30, claim: str = "realm_access.roles") -> TokenVerifier:
    return TokenVerifier(
        Jwks(path=str(path), min_refresh=0),
        issuer=authgen.ISSUER,
        audience=authgen.AUDIENCE,
        roles_claim=claim,
        role_map=["imaging-staff=reader"],
        leeway=leeway,
    )


def test_tokens_from_a_jwks_file_and_its_rotation(tmp_path: Path) -> None:
    k1, k2 = authgen.rsa_key("k1"), authgen.ec_key("k2")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [k1.jwk()]}))
    verifier = _verifier(path)
    principal = verifier.verify(authgen.token(k1, roles=["imaging-staff", "other"], user="amy"))
    assert principal.name == "amy" and principal.roles == {"reader"} and principal.kind == "jwt"
    with pytest.raises(TokenRejected):
        verifier.verify(authgen.token(k2))
    path.write_text(json.dumps({"keys": [k1.jwk(), k2.jwk()]}))
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new mtime even on coarse clocks
    assert verifier.verify(authgen.token(k2, roles=["admin"])).roles == {"admin"}
    # A key may only be used with the algorithm it declares.
    other = authgen.SigningKey("k1", k1.private, "RS512")
    with pytest.raises(TokenRejected, match="RS256"):
        verifier.verify(authgen.token(other))


def test_leeway_and_roles_as_a_string(tmp_path: Path) -> None:
    k1 = authgen.rsa_key("k1")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [k1.jwk()]}))
    verifier = _verifier(path, leeway=60, claim="scope")
    just_expired = authgen.token(k1, exp=int(time.time()) - 10, scope="openid writer")
    assert verifier.verify(just_expired).roles == {"writer"}
    strict = _verifier(path, leeway=0)
    with pytest.raises(TokenRejected, match="Expired"):
        strict.verify(just_expired)


def test_audit_search_filters_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    trail = AuditTrail([JsonlFileSink(path)])
    for i in range(5):
        event = AuditEvent(QUERY, "E", 0, user=f"u{i % 2}", query={"PatientID": f"P{i}"})
        event.time = f"2026-01-0{i + 1}T00:00:00+00:00"
        trail.record(event)
    path.rename(path.with_name("audit.jsonl.1"))
    trail.record(AuditEvent(QUERY, "E", 0, user="u0", study_uids=["1.2.3"]))
    with open(path, "ab") as fh:
        fh.write(b'{"torn": ')  # a crash mid-line is skipped, not fatal
    assert len(search(path, AuditQuery(limit=100))) == 6
    assert [r["user"] for r in search(path, AuditQuery(user="u1"))] == ["u1", "u1"]
    assert len(search(path, AuditQuery(since="2026-01-02", until="2026-01-04"))) == 2
    assert len(search(path, AuditQuery(patient="P3"))) == 1
    by_study = search(path, AuditQuery(patient="X", patient_studies=frozenset({"1.2.3"})))
    assert [r["study_uids"] for r in by_study] == [["1.2.3"]]
    newest = search(path, AuditQuery(limit=2))
    assert len(newest) == 2 and newest[-1].get("study_uids") == ["1.2.3"]
    assert (path.stat().st_mode & 0o777) == 0o600


def test_audit_file_stays_open_and_follows_rotation(tmp_path: Path) -> None:
    """Kept open between records (a viewer's every frame is one); a rename or removal is
    seen at the next record, which starts a new file; nothing is written after close."""
    path = tmp_path / "audit" / "audit.jsonl"
    sink = JsonlFileSink(path)
    fds = len(os.listdir("/proc/self/fd"))
    sink.write(b"a")
    sink.write(b"b")
    assert len(os.listdir("/proc/self/fd")) == fds + 1  # one file, kept open
    path.rename(path.with_name("audit.jsonl.1"))  # what logrotate does
    sink.write(b"c")
    assert path.with_name("audit.jsonl.1").read_bytes() == b"a\nb\n"
    assert path.read_bytes() == b"c\n"
    assert (path.stat().st_mode & 0o777) == 0o600
    path.unlink()  # removed by hand
    sink.write(b"d")
    assert path.read_bytes() == b"d\n"
    assert len(os.listdir("/proc/self/fd")) == fds + 1
    sink.close()
    sink.write(b"e")  # a straggler at shutdown: appended, no file left open
    assert path.read_bytes() == b"d\ne\n"
    assert len(os.listdir("/proc/self/fd")) == fds


def test_policy_table() -> None:
    rules = policy.default_rules("/dicom-web")

    def need(method: str, path: str) -> str:
        return policy.required_role(rules, method, path)

    assert need("GET", "/health") == policy.ANONYMOUS
    assert need("POST", "/health") == policy.DENY
    assert need("GET", "/dicom-web/studies/1/frames/1") == policy.READER
    assert need("PUT", "/dicom-web/workitems/1/state") == policy.WRITER
    assert need("DELETE", "/dicom-web/studies/1") == policy.ADMIN
    assert need("GET", "/admin/modalities") == policy.ADMIN
    # Anonymous; the handler looks studies up only for a reader (tests/test_web_auth.py).
    assert need("GET", "/open") == policy.ANONYMOUS
    assert need("POST", "/open") == policy.DENY
    assert need("GET", "/viewer") == policy.DENY  # no viewer: default deny
    with_viewer = policy.default_rules("/dicom-web", viewer=True)
    assert policy.required_role(with_viewer, "GET", "/viewer") == policy.ANONYMOUS
    assert policy.required_role(with_viewer, "GET", "/assets/app.js") == policy.ANONYMOUS
    assert policy.required_role(with_viewer, "POST", "/viewer") == policy.DENY
    assert policy.required_role(with_viewer, "GET", "/dicom-web/studies") == policy.READER
    assert policy.required_role(with_viewer, "GET", "/admin/audit") == policy.ADMIN
    assert policy.required_role(with_viewer, "GET", "/open") == policy.ANONYMOUS
    assert need("GET", "/wado") == policy.READER
    assert need("GET", "/dicom-webx/studies") == policy.DENY
    assert need("GET", "/") == policy.DENY
    assert policy.allows(frozenset({"admin"}), policy.READER)
    assert not policy.allows(frozenset({"reader"}), policy.WRITER)
    assert not policy.allows(frozenset({"admin"}), policy.DENY)


@pytest.mark.parametrize(
    "env",
    [
        {"DICOMWEB_AUTH_API_KEYS": "nohash"},
        {"DICOMWEB_AUTH_BASIC_USERS": "bob:root:scrypt$1"},
        {"DICOMWEB_AUTH_JWKS_URL": "ftp://x"},
        {"DICOMWEB_AUTH_JWKS_URL": "https://a", "DICOMWEB_AUTH_JWKS_FILE": "/b"},
        {"DICOMWEB_AUTH_ROLE_MAP": "staff=superuser"},
        {"DICOMWEB_TLS_CERT": "/c.pem"},
        {"DICOMWEB_AUDIT_SYSLOG": "syslog.example:514"},
        {"DICOMWEB_MAX_HEADER_BYTES": "0"},
    ],
)
def test_bad_security_settings(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        load_settings(environ=env)


def test_security_settings_from_toml(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(
        '[server]\nauth_jwks_url = "https://idp/certs"\nauth_roles_claim = "realm_access.roles"\n'
        'cors_origins = ["https://ohif.example"]\naudit_syslog = "tcp://audit.example:601"\n'
    )
    settings = load_settings(tmp_path / "c.toml", environ={})
    assert settings.auth_enabled and settings.cors_origins == ("https://ohif.example",)
    assert settings.audit_path == Path("data/audit/audit.jsonl")
    assert not load_settings(environ={}).auth_enabled


def test_websockets_pass_the_same_gate(tmp_path: Path) -> None:
    import anyio
    from starlette.types import Message, Receive, Scope, Send

    from dicomweb_server.web.guard import SecurityMiddleware

    reached: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["state"]["principal"].name)

    key = "dwk_ws-0123456789"
    settings = load_settings(
        environ={"DICOMWEB_AUTH_API_KEYS": f"v:reader:{hash_secret(key, fast=True)}"},
        data_dir=tmp_path,
    )
    gate = SecurityMiddleware(inner, settings)
    audit_path = tmp_path / "audit.jsonl"
    services = SimpleNamespace(audit=AuditTrail([JsonlFileSink(audit_path)]))
    app = SimpleNamespace(state=SimpleNamespace(services=services))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    def connect(headers: list[tuple[bytes, bytes]]) -> None:
        scope = {"type": "websocket", "path": "/dicom-web/events", "headers": headers,
                 "app": app, "client": ("127.0.0.1", 5000), "query_string": b""}  # fmt: skip
        anyio.run(gate, scope, receive, send)

    connect([])
    assert sent == [{"type": "websocket.close", "code": 1008}] and reached == []
    assert b"websocket needs reader" in audit_path.read_bytes()
    connect([(b"x-api-key", key.encode())])
    assert reached == ["v"] and len(sent) == 1


def test_verified_tokens_are_remembered_until_they_expire(tmp_path: Path) -> None:
    k1 = authgen.rsa_key("k1")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [k1.jwk()]}))
    verifier = _verifier(path, leeway=0)
    fresh, ending = authgen.token(k1), authgen.token(k1, exp=int(time.time()) + 1)
    assert verifier.cached(fresh) is None
    verifier.verify(fresh)
    verifier.verify(ending)
    cached = verifier.cached(fresh)
    assert cached is not None and cached.name == "alice"
    time.sleep(1.2)
    assert verifier.cached(ending) is None and verifier.cached(fresh) is not None
