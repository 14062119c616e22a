"""Authentication and authorization on a real server: JWTs against a JWKS the test
serves, API keys, Basic users, and every route of the app refusing strangers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from dicomweb_server.config import load_settings
from dicomweb_server.services.credentials import hash_secret
from dicomweb_server.web.app import create_app
from tests import authgen
from tests.authgen import AUDIENCE, ISSUER, JwksServer, SigningKey, token
from tests.conftest import Server, run_cli, start_server
from tests.dicomgen import make_dataset, multipart, to_part10

API_KEY = "dwk_test-key-for-the-pipeline-0123456789"
ADMIN_KEY = "dwk_admin-key-0123456789abcdef"
PASSWORD = "correct horse battery staple"


@dataclass
class AuthServer:
    server: Server
    jwks: JwksServer
    k1: SigningKey
    k2: SigningKey  # not served at first: for key rotation
    stranger: SigningKey  # never served


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    tmp = tmp_path_factory.mktemp("auth")
    k1, k2, stranger = authgen.rsa_key("k1"), authgen.ec_key("k2"), authgen.rsa_key("k1x")
    for jwks in authgen.serving([k1]):
        env = {
            "DICOMWEB_AUTH_JWKS_URL": jwks.url,
            "DICOMWEB_AUTH_ISSUER": ISSUER,
            "DICOMWEB_AUTH_AUDIENCE": AUDIENCE,
            "DICOMWEB_AUTH_ROLES_CLAIM": "realm_access.roles",
            "DICOMWEB_AUTH_ROLE_MAP": "pacs-readers=reader,pacs-admins=admin",
            "DICOMWEB_AUTH_JWKS_REFRESH_SECONDS": "1",
            "DICOMWEB_AUTH_API_KEYS": f"pipeline:writer:{hash_secret(API_KEY, fast=True)},"
            f"ops:admin:{hash_secret(ADMIN_KEY)}",
            "DICOMWEB_AUTH_BASIC_USERS": f"bob:reader:{hash_secret(PASSWORD)}",
        }
        server = start_server(tmp / "data", f"sqlite:///{tmp / 'i.sqlite3'}", env=env)
        try:
            yield AuthServer(server, jwks, k1, k2, stranger)
        finally:
            server.stop()
        assert "Traceback" not in server.log(), server.log()


def _get(auth: AuthServer, path: str = "/dicom-web/studies", **headers: str) -> httpx.Response:
    return httpx.get(auth.server.root + path, headers=headers, timeout=30)


def _bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_anonymous_gets_401_with_challenges(auth: AuthServer) -> None:
    response = _get(auth)
    assert response.status_code == 401
    challenges = response.headers.get_list("www-authenticate")
    assert 'Bearer realm="dicomweb"' in challenges
    assert any(c.startswith('Basic realm="dicomweb"') for c in challenges)
    assert "error=" not in challenges[0]  # RFC 6750 3.1: no error code without a token


def test_health_stays_anonymous(auth: AuthServer) -> None:
    response = _get(auth, "/health")
    assert response.status_code == 200
    assert set(response.json()) == {"status", "version", "instances"}


def test_a_valid_token_reads(auth: AuthServer) -> None:
    response = _get(auth, **_bearer(token(auth.k1)))
    assert response.status_code in (200, 204), response.text


def test_mapped_role_names_are_understood(auth: AuthServer) -> None:
    reader = token(auth.k1, roles=["pacs-readers"])
    assert _get(auth, **_bearer(reader)).status_code in (200, 204)
    admin = token(auth.k1, roles=["pacs-admins"])
    response = _get(auth, "/admin/audit?limit=1", **_bearer(admin))
    assert response.status_code == 200


BAD_TOKENS: dict[str, Callable[[AuthServer], str]] = {
    "expired": lambda a: token(a.k1, exp=int(time.time()) - 600, iat=int(time.time()) - 900),
    "not yet valid": lambda a: token(a.k1, nbf=int(time.time()) + 600),
    "wrong audience": lambda a: token(a.k1, aud="someone-else"),
    "wrong issuer": lambda a: token(a.k1, iss="https://evil.test/"),
    "no expiry": lambda a: token(a.k1, exp=None),
    "unknown key": lambda a: token(a.stranger, kid="k-unknown"),
    "known kid, other key": lambda a: token(a.stranger, kid="k1"),
    "tampered": lambda a: _tamper(token(a.k1, roles=["reader"])),
    "alg none": lambda a: _handmade("none", lambda signing_input: b""),
    "HS256 with the public key": lambda a: _handmade(
        "HS256", lambda signing_input: hmac.new(_pem(a.k1), signing_input, hashlib.sha256).digest()
    ),
    "garbage": lambda a: "a.b.c",
}


def _tamper(value: str) -> str:
    head, payload, sig = value.split(".")
    claims = jwt.utils.base64url_decode(payload.encode()).replace(b'"reader"', b'"admin"')
    return ".".join([head, jwt.utils.base64url_encode(claims).decode(), sig])


def _pem(key: SigningKey) -> bytes:
    return bytes(
        key.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _handmade(alg: str, sign: Callable[[bytes], bytes]) -> str:
    """A token signed by hand, for algorithms the server must refuse (none, HMAC with the
    public key as the secret: the classic algorithm confusion attack)."""
    b64 = jwt.utils.base64url_encode
    header = b64(f'{{"alg":"{alg}","typ":"JWT","kid":"k1"}}'.encode())
    claims = f'{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{int(time.time()) + 60},'
    body = b64((claims + '"realm_access":{"roles":["admin"]}}').encode())
    signing_input = header + b"." + body
    return (signing_input + b"." + b64(sign(signing_input))).decode()


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_tokens_get_the_same_401(auth: AuthServer, case: str) -> None:
    response = _get(auth, **_bearer(BAD_TOKENS[case](auth)))
    assert response.status_code == 401, (case, response.text)
    assert 'Bearer realm="dicomweb", error="invalid_token"' in response.headers.get_list(
        "www-authenticate"
    )
    # Never which part failed.
    assert response.json() == {"status": 401, "message": "authentication required"}


def test_wrong_role_gets_403(auth: AuthServer) -> None:
    reader = token(auth.k1, roles=["reader"])
    response = httpx.post(
        auth.server.root + "/dicom-web/studies",
        headers={**_bearer(reader), "Content-Type": "multipart/related; boundary=x"},
        content=b"--x--",
        timeout=30,
    )
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    nobody = token(auth.k1, roles=[])
    assert _get(auth, **_bearer(nobody)).status_code == 403


def test_key_rotation_new_kid_is_fetched(auth: AuthServer) -> None:
    assert _get(auth, **_bearer(token(auth.k2))).status_code == 401  # not published yet
    auth.jwks.keys.append(auth.k2)
    time.sleep(1.5)  # the refetch rate limit of this server is 1 s
    assert _get(auth, **_bearer(token(auth.k2))).status_code in (200, 204)
    # A burst of unknown kids does not hammer the provider.
    hits = auth.jwks.hits
    for i in range(10):
        assert _get(auth, **_bearer(token(auth.stranger, kid=f"nope{i}"))).status_code == 401
    assert auth.jwks.hits - hits <= 2


def test_api_keys(auth: AuthServer) -> None:
    assert _get(auth, **{"X-API-Key": API_KEY}).status_code in (200, 204)
    assert _get(auth, **_bearer(API_KEY)).status_code in (200, 204)
    assert _get(auth, **{"X-API-Key": API_KEY + "x"}).status_code == 401
    assert _get(auth, **{"X-API-Key": ""}).status_code == 401
    # Writer, not admin.
    assert _get(auth, "/admin/audit", **{"X-API-Key": API_KEY}).status_code == 403
    assert _get(auth, "/admin/audit", **{"X-API-Key": ADMIN_KEY}).status_code == 200


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_users(auth: AuthServer) -> None:
    assert _get(auth, **_basic("bob", PASSWORD)).status_code in (200, 204)
    assert _get(auth, **_basic("bob", PASSWORD)).status_code in (200, 204)  # cached path
    wrong = _get(auth, **_basic("bob", "wrong"))
    unknown = _get(auth, **_basic("mallory", PASSWORD))
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.content == unknown.content
    assert _get(auth, **{"Authorization": "Basic !!!"}).status_code == 401
    assert _get(auth, **{"Authorization": "Digest x"}).status_code == 401


# -- every route ---------------------------------------------------------------------

UID = "1.2.826.0.1.3680043.8.498.1"


def _walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        if isinstance(route, Mount):
            yield from _walk(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            path = re.sub(r"\{[^}]+\}", UID, prefix + route.path)
            for method in sorted(route.methods or {"GET"}):
                yield method, path
        elif isinstance(route, WebSocketRoute):
            continue  # the UPS event channel: tests/test_ups_subscriptions_ws.py
        else:
            raise AssertionError(f"unknown route type {route!r}: teach this test about it")


VIEWER_CATCH_ALL = "/" + UID  # the viewer's "/{path:path}" as _walk fills it in


def _expected_role(method: str, path: str) -> str | None:
    if path in ("/health", VIEWER_CATCH_ALL, "/open"):
        return None
    if method == "DELETE" and "/subscribers/" in path:
        return "writer"  # UPS-RS Unsubscribe, like Subscribe
    if path.startswith("/admin") or method == "DELETE":
        return "admin"
    return "writer" if method in ("POST", "PUT") else "reader"


BELOW = {"reader": [], "writer": ["reader"], "admin": ["reader", "writer"]}


def test_every_route_refuses_anonymous_and_wrong_roles(auth: AuthServer, tmp_path: Path) -> None:
    settings = load_settings(environ={}, data_dir=tmp_path)
    routes = list(_walk(create_app(settings).routes))
    assert len(routes) >= 30, routes  # HEAD comes with every GET
    assert ("GET", "/admin/audit") in routes
    client = httpx.Client(base_url=auth.server.root, timeout=30)
    with client:
        for method, path in routes:
            role = _expected_role(method, path)
            anonymous = client.request(method, path)
            if role is None:
                # Anonymous; the viewer answers this made-up file name with 404.
                # /open without a parameter is a bad link (400), for anyone.
                expected = {VIEWER_CATCH_ALL: (200, 404), "/open": (400,)}.get(path, (200,))
                assert anonymous.status_code in expected, (method, path)
                continue
            assert anonymous.status_code == 401, (method, path, anonymous.status_code)
            for weaker in [[], *([r] for r in BELOW[role])]:
                response = client.request(
                    method, path, headers=_bearer(token(auth.k1, roles=weaker))
                )
                assert response.status_code == 403, (method, path, weaker, response.status_code)
            allowed = client.request(method, path, headers=_bearer(token(auth.k1, roles=[role])))
            assert allowed.status_code not in (401, 403), (method, path, role)


def test_unknown_paths_are_denied_by_default(auth: AuthServer) -> None:
    admin = _bearer(token(auth.k1, roles=["admin"]))
    with httpx.Client(base_url=auth.server.root, timeout=30) as client:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert client.request(method, "/secret-new-route").status_code == 401
        assert client.request("PATCH", "/secret-new-route", headers=admin).status_code == 403
    assert _get(auth, "/dicom-web/../admin/audit").status_code == 401
    # GET of any other path is the viewer's (OHIF's shell, its client-side routes).
    assert _get(auth, "/secret-new-route").status_code == 200


def test_open_links_tell_nothing_without_the_reader_role(auth: AuthServer) -> None:
    """An HIS link opened in a browser carries no token (OIDC): it is sent to the study
    list filtered by the link's key, the same answer whether the study exists or not;
    a reader is sent straight to the study."""
    study = make_dataset(accession="OPEN-AUTH-1")
    body, content_type = multipart([to_part10(study)])
    stored = httpx.post(
        f"{auth.server.url}/studies",
        content=body,
        headers={"Content-Type": content_type, "X-API-Key": API_KEY},
        timeout=60,
    )
    assert stored.status_code == 200, stored.text
    answers = []
    for accession in ("OPEN-AUTH-1", "OPEN-AUTH-NONE"):
        response = _get(auth, f"/open?AccessionNumber={accession}")
        assert response.status_code == 302, response.text
        assert response.headers["location"] == f"/?accession={accession}"
        answers.append((response.status_code, response.content))
    assert answers[0] == answers[1]
    uid_link = _get(auth, f"/open?StudyInstanceUID={study.StudyInstanceUID}")
    assert uid_link.headers["location"] == f"/viewer?StudyInstanceUIDs={study.StudyInstanceUID}"
    reader = _bearer(token(auth.k1, roles=["reader"]))
    found = _get(auth, "/open?AccessionNumber=OPEN-AUTH-1", **reader)
    assert found.status_code == 302
    assert found.headers["location"] == f"/viewer?StudyInstanceUIDs={study.StudyInstanceUID}"
    assert _get(auth, "/open?AccessionNumber=OPEN-AUTH-NONE", **reader).status_code == 404
    wrong = _bearer(_tamper(token(auth.k1, roles=["reader"])))
    assert _get(auth, "/open?AccessionNumber=OPEN-AUTH-1", **wrong).status_code == 401


# -- safe defaults -------------------------------------------------------------------


def test_public_bind_with_auth_configured_is_not_refused(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is never ours: the start gets past the check, then the
    # bind fails; nothing listens on a public address.
    env = {"DICOMWEB_AUTH_API_KEYS": f"k:reader:{hash_secret('k' * 32, fast=True)}"}
    result = run_cli(
        "serve", "--host", "192.0.2.1", "--port", "8999", "--data-dir", str(tmp_path / "d"),
        env=env, timeout=60,
    )  # fmt: skip
    assert "refusing to serve" not in result.stderr
    assert result.returncode != 0


def test_public_bind_without_auth_is_refused(tmp_path: Path) -> None:
    result = run_cli("serve", "--host", "192.0.2.1", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "refusing to serve on 192.0.2.1" in result.stderr


def test_bad_auth_settings_are_refused(tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--data-dir", str(tmp_path), env={"DICOMWEB_AUTH_API_KEYS": "k:superuser:x$y"}
    )
    assert result.returncode == 2 and "auth_api_keys" in result.stderr


def test_hash_password_cli() -> None:
    from dicomweb_server.services.credentials import verify_secret

    result = run_cli("hash-password", "--help")
    assert result.returncode == 0
    import subprocess
    import sys

    made = subprocess.run(
        [sys.executable, "-m", "dicomweb_server.cli", "hash-password"],
        input="s3cret\n", capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    hashed = made.stdout.strip()
    assert hashed.startswith("scrypt$")
    assert verify_secret("s3cret", hashed) and not verify_secret("s3cret ", hashed)
    key = run_cli("hash-password", "--generate-key")
    secret = key.stderr.split(": ", 1)[1].strip()
    assert verify_secret(secret, key.stdout.strip()) and key.stdout.startswith("sha256$")
