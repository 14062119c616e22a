"""Command line: serve, import, migrate, check."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomweb_server import __version__
from dicomweb_server.config import Settings, env_name, load_settings, to_environ
from dicomweb_server.errors import DicomWebError
from dicomweb_server.workers import run_workers

if TYPE_CHECKING:
    from dicomweb_server.bootstrap import Services
    from dicomweb_server.dimse.scp import Listener as DimseListener
    from dicomweb_server.hl7v2.service import HL7Service

# bootstrap (SQLAlchemy, pydicom) is imported by the commands that need it, so that
# --help, --version and settings errors answer at once.

log = logging.getLogger("dicomweb_server")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help=f"TOML settings file [env {env_name('config')}]"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"folder for blobs and the SQLite index (default ./data) [env {env_name('data_dir')}]",
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the index, e.g. postgresql+psycopg://user@/db?host=/var/run/"
        f"postgresql (default: SQLite in the data folder) [env {env_name('database_url')}]",
    )


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    overrides: dict[str, object] = {
        "data_dir": args.data_dir,
        "database_url": args.database_url,
        **extra,
    }
    return load_settings(args.config, None, **overrides)


def _serve(args: argparse.Namespace) -> int:
    from dicomweb_server.bootstrap import prepare

    settings = _settings(
        args,
        host=args.host,
        port=args.port,
        workers=args.workers,
        public_base_url=args.public_base_url,
        trusted_proxies=args.trusted_proxies,
        insecure=True if args.insecure else None,
        log_level=args.log_level,
        viewer_enabled=False if args.no_viewer else None,
        viewer_dir=args.viewer_dir,
        viewer_app_config=args.viewer_app_config,
        viewer_allowed_origins=args.viewer_allowed_origins,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        cors_origins=args.cors_origins,
        **_dimse_overrides(args),
        **_hl7_loop_overrides(args),
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.is_loopback_bind() and not settings.auth_enabled:
        if not settings.insecure:
            log.error(
                "refusing to serve on %s: only loopback addresses may be served without "
                "authentication; configure auth_jwks_url/auth_jwks_file, auth_api_keys or "
                "auth_basic_users, or pass --insecure to override (not for patient data)",
                settings.host,
            )
            return 2
        log.warning("SERVING WITHOUT AUTHENTICATION ON %s (--insecure)", settings.host)
    if not settings.auth_enabled:
        log.warning(
            "authentication is off: anyone who can reach %s may read and change data", settings.host
        )
    _check_dimse(settings)
    prepare(settings)
    os.environ.update(to_environ(settings))
    log.info(
        "dicomweb-server %s on %s://%s:%d%s (data %s, index %s, %d worker(s))",
        __version__,
        "https" if settings.tls_enabled else "http",
        settings.host,
        settings.port,
        settings.dicomweb_root,
        settings.data_dir.resolve(),
        settings.database_url_for_display,
        settings.workers,
    )
    listener = _start_dimse(settings)
    try:
        hl7_listener = _start_hl7(settings)
    except BaseException:
        if listener is not None:
            listener.stop()
            listener.services.close()
        raise
    try:
        return _run_uvicorn(settings, args)
    finally:
        if hl7_listener is not None:
            hl7_listener.stop()
        if listener is not None:
            listener.stop()
            listener.services.close()


def _run_uvicorn(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    app = "dicomweb_server.web.asgi:app_from_environment"
    options: dict[str, Any] = {
        "factory": True,
        "proxy_headers": False,
        "server_header": False,
        "access_log": args.access_log,
        "log_level": settings.log_level,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        # httptools with a header size limit (web/limits.py) and single frames
        # answered before the ASGI stack (web/protocol.py).
        "http": "dicomweb_server.web.protocol:DicomWebHttpProtocol",
        "ssl_certfile": settings.tls_cert,
        "ssl_keyfile": settings.tls_key,
    }
    if settings.workers > 1:
        return run_workers(app, settings.host, settings.port, settings.workers, **options)
    uvicorn.run(app, host=settings.host, port=settings.port, **options)
    return 0


# --- dimse ---
def _dimse_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "dimse_enabled": False if args.no_dimse else None,
        "dimse_aet": args.dimse_aet,
        "dimse_port": args.dimse_port,
        "dimse_max_associations": args.dimse_max_associations,
        "dimse_timeout": args.dimse_timeout,
        "dimse_max_pdu": args.dimse_max_pdu,
        "dimse_reject_unknown": True if args.dimse_reject_unknown else None,
        "dimse_tls_cert": args.dimse_tls_cert,
        "dimse_tls_key": args.dimse_tls_key,
        "dimse_tls_ca": args.dimse_tls_ca,
    }


def _check_dimse(settings: Settings) -> None:
    """Bad DIMSE settings stop `serve` at once (exit 2), not later in a worker."""
    from dicomweb_server.services.modalities import parse_modality

    for spec in settings.dimse_modalities:
        parse_modality(spec)
    for name in ("dimse_tls_cert", "dimse_tls_key", "dimse_tls_ca"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ValueError(f"{name}: {path} is not a file")


def _start_dimse(settings: Settings) -> DimseListener | None:
    """Exactly one DIMSE listener per `serve`, in this (parent) process: uvicorn's
    worker processes are spawned, so they never inherit it."""
    if not settings.dimse_enabled:
        return None
    from dicomweb_server.bootstrap import build_services
    from dicomweb_server.dimse import scp

    services = build_services(settings)
    try:
        return scp.start(services)
    except ssl.SSLError as exc:
        services.close()
        raise ValueError(f"DIMSE TLS: cannot use the certificate or key: {exc}") from exc
    except OSError as exc:
        services.close()
        raise OSError(
            exc.errno,
            f"DIMSE port {settings.dimse_port}: {exc.strerror or exc} "
            "(address already in use?); choose another with --dimse-port or --no-dimse",
        ) from exc


def _add_dimse_flags(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("DIMSE gateway")
    group.add_argument(
        "--no-dimse",
        action="store_true",
        help=f"do not start the DIMSE listener [env {env_name('dimse_enabled')}=false]",
    )
    group.add_argument(
        "--dimse-aet", help=f"our AE title (default DICOMWEB) [env {env_name('dimse_aet')}]"
    )
    group.add_argument(
        "--dimse-port",
        type=int,
        help=f"DIMSE port, on the same host as HTTP (default 11112) [env {env_name('dimse_port')}]",
    )
    group.add_argument(
        "--dimse-max-associations",
        type=int,
        help=f"concurrent associations (default 10) [env {env_name('dimse_max_associations')}]",
    )
    group.add_argument(
        "--dimse-timeout",
        type=int,
        help="ACSE/DIMSE/network timeout in seconds (default 60) "
        f"[env {env_name('dimse_timeout')}]",
    )
    group.add_argument(
        "--dimse-max-pdu",
        type=int,
        help=f"maximum PDU size we receive, 0 = unlimited (default 116794) "
        f"[env {env_name('dimse_max_pdu')}]",
    )
    group.add_argument(
        "--dimse-reject-unknown",
        action="store_true",
        help="refuse associations from AE titles that are not known modalities "
        f"[env {env_name('dimse_reject_unknown')}]",
    )
    for name, what in (
        ("cert", "PEM certificate: DIMSE over TLS"),
        ("key", "PEM private key of the certificate"),
        ("ca", "PEM CA file: callers must present a certificate it signed"),
    ):
        group.add_argument(
            f"--dimse-tls-{name}", type=Path, help=f"{what} [env {env_name('dimse_tls_' + name)}]"
        )


# --- hl7-loop ---
def _hl7_loop_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "hl7_enabled": True if args.hl7 else None,
        "hl7_port": args.hl7_port,
        "hl7_max_connections": args.hl7_max_connections,
        "hl7_max_message_bytes": args.hl7_max_message_bytes,
        "hl7_idle_timeout": args.hl7_idle_timeout,
        "hl7_allowed_peers": args.hl7_allowed_peers,
        "worklist_link_on_store": False if args.no_worklist_link else None,
        "worklist_complete_on_store": args.worklist_complete_on_store,
    }


def _start_hl7(settings: Settings) -> HL7Service | None:
    """The one MLLP listener per `serve`, in this (parent) process, like DIMSE."""
    if not settings.hl7_enabled:
        return None
    from dicomweb_server.hl7v2.service import start

    if not settings.is_loopback_bind() and not settings.hl7_allowed_peers:
        log.warning(
            "HL7 orders are accepted from any address on %s:%d (MLLP has no "
            "authentication); set hl7_allowed_peers to your HIS/RIS",
            settings.host,
            settings.hl7_port,
        )
    try:
        return start(settings)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"HL7 port {settings.hl7_port}: {exc.strerror or exc} "
            "(address already in use?); choose another with --hl7-port",
        ) from exc


def _add_hl7_loop_flags(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("HL7 orders and the order-to-image loop")
    group.add_argument(
        "--hl7",
        action="store_true",
        help="accept HL7 v2 orders (ORM^O01, OMI^O23) over MLLP "
        f"[env {env_name('hl7_enabled')}=true]",
    )
    group.add_argument(
        "--hl7-port",
        type=int,
        help=f"MLLP port, on the same host as HTTP (default 2575) [env {env_name('hl7_port')}]",
    )
    group.add_argument(
        "--hl7-max-connections",
        type=int,
        help=f"concurrent MLLP connections (default 10) [env {env_name('hl7_max_connections')}]",
    )
    group.add_argument(
        "--hl7-max-message-bytes",
        type=int,
        help="largest HL7 message taken; a larger one is rejected (default 1048576) "
        f"[env {env_name('hl7_max_message_bytes')}]",
    )
    group.add_argument(
        "--hl7-idle-timeout",
        type=int,
        help="close an MLLP connection idle this many seconds (default 600) "
        f"[env {env_name('hl7_idle_timeout')}]",
    )
    group.add_argument(
        "--hl7-allowed-peers",
        help="comma-separated addresses/networks that may send HL7 orders (default: any; "
        f"MLLP has no authentication) [env {env_name('hl7_allowed_peers')}]",
    )
    group.add_argument(
        "--no-worklist-link",
        action="store_true",
        help="do not link stored instances to workitems by Accession Number / Study "
        f"Instance UID [env {env_name('worklist_link_on_store')}=false]",
    )
    group.add_argument(
        "--worklist-complete-on-store",
        choices=["never", "first-instance"],
        help="complete a workitem when its first instance is stored, or never (MPPS or "
        f"UPS-RS complete it; default) [env {env_name('worklist_complete_on_store')}]",
    )


def _files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
        elif path.is_dir():
            for root, dirs, names in os.walk(path):
                # Hidden folders (.git, .Trash, ...) are skipped like hidden files.
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if not name.startswith(".") and name.upper() != "DICOMDIR":
                        yield Path(root) / name


_worker_services: Services | None = None


def _init_worker(settings: Settings) -> None:
    from dicomweb_server.bootstrap import build_services

    global _worker_services
    _worker_services = build_services(settings)


def _import_one(path: Path) -> tuple[str, str, str]:
    assert _worker_services is not None
    try:
        outcome = _worker_services.store.store_copy(path)
    except Exception as exc:  # report, never stop a bulk import on one file
        return str(path), "rejected", f"{type(exc).__name__}: {exc}"
    if not outcome.stored:
        return str(path), "rejected", f"0x{outcome.failure_reason or 0:04X} {outcome.message}"
    if outcome.duplicate:
        return str(path), "duplicate", outcome.message
    return str(path), "stored", ""


def _import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicomweb_server.bootstrap import prepare

    settings = _settings(args)
    logging.basicConfig(level=logging.WARNING)
    prepare(settings)
    files = list(_files(args.paths))
    missing = [p for p in args.paths if not p.exists()]
    for path in missing:
        print(f"not found: {path}", file=sys.stderr)
    counts: Counter[str] = Counter()
    rejected: list[tuple[str, str]] = []
    workers = args.jobs or os.cpu_count() or 1
    with (
        ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(settings,)) as pool,
        tqdm(total=len(files), unit="file", disable=args.quiet, file=sys.stderr) as bar,
    ):
        for name, result, detail in pool.map(_import_one, files, chunksize=16):
            counts[result] += 1
            if result == "rejected":
                rejected.append((name, detail))
            bar.update()
    for name, detail in rejected[:50]:
        print(f"rejected {name}: {detail}", file=sys.stderr)
    if len(rejected) > 50:
        print(f"... and {len(rejected) - 50} more rejected", file=sys.stderr)
    print(
        f"{counts['stored']} stored, {counts['duplicate']} duplicate, "
        f"{counts['rejected']} rejected, {len(files)} file(s) read"
    )
    return 1 if rejected or missing else 0


def _migrate(args: argparse.Namespace) -> int:
    from dicomweb_server.bootstrap import prepare

    settings = _settings(args)
    prepare(settings)
    print("index schema is up to date")
    return 0


def _check(args: argparse.Namespace) -> int:
    from dicomweb_server.bootstrap import build_services, prepare

    settings = _settings(args)
    prepare(settings)
    services = build_services(settings)
    try:
        report = services.check.run(repair=args.repair, min_age=args.min_age)
    finally:
        services.close()
    print(f"{report.blobs} blob(s), {report.instances} indexed instance(s)")
    for info in report.orphans:
        print(f"unreferenced blob: {info.key} ({info.size} bytes)")
    if report.orphan_count:
        verb = "removed" if args.repair else "found (remove with --repair)"
        print(f"{report.orphan_count} unreferenced blob(s), {report.orphan_bytes} bytes, {verb}")
    if report.recent_unreferenced:
        print(
            f"{report.recent_unreferenced} unreferenced blob(s) newer than {args.min_age:g} s "
            "left alone (possibly being stored)"
        )
    for study, series, sop in report.missing:
        print(f"missing blob: study {study} series {series} instance {sop}")
    if report.missing_count:
        print(
            f"{report.missing_count} indexed instance(s) whose blob is missing: "
            "send them again, or DELETE them"
        )
    if report.clean:
        print("ok")
    return 0 if report.clean else 1


# --- security: hash-password, audit search ---


def _hash_password(args: argparse.Namespace) -> int:
    import getpass

    from dicomweb_server.services.credentials import hash_secret

    if args.generate_key:
        import secrets

        secret = "dwk_" + secrets.token_urlsafe(32)
        print(f"key (give to the client, shown once): {secret}", file=sys.stderr)
    elif sys.stdin.isatty():
        secret = getpass.getpass("password: ")
        if secret != getpass.getpass("again: "):
            print("dicomweb-server: the two entries differ", file=sys.stderr)
            return 2
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        print("dicomweb-server: empty secret", file=sys.stderr)
        return 2
    print(hash_secret(secret, fast=args.generate_key or args.fast))
    return 0


def _audit_search(args: argparse.Namespace) -> int:
    import orjson

    from dicomweb_server.bootstrap import build_services, prepare
    from dicomweb_server.services.audit import search_params

    settings = _settings(args, audit_file=args.audit_file)
    logging.basicConfig(level=logging.WARNING)
    prepare(settings)
    services = build_services(settings)
    try:
        params = {
            "patient": args.patient or "",
            "user": args.user or "",
            "since": args.since or "",
            "until": args.until or "",
            "limit": str(args.limit),
        }
        for record in search_params(services.query, settings.audit_path, params):
            sys.stdout.write(orjson.dumps(record).decode() + "\n")
    finally:
        services.close()
    return 0


def _security_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hp = sub.add_parser(
        "hash-password",
        help="hash a password (read from the terminal or stdin) or make a new API key, for "
        "auth_basic_users / auth_api_keys entries name:role:HASH",
    )
    hp.add_argument("--generate-key", action="store_true", help="make a random API key")
    hp.add_argument("--fast", action="store_true", help="sha256 instead of scrypt (long keys)")
    hp.set_defaults(func=_hash_password)

    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    search = audit_sub.add_parser("search", help="print matching audit records as JSON lines")
    _common(search)
    search.add_argument("--audit-file", help=f"audit file [env {env_name('audit_file')}]")
    search.add_argument("--patient", help="Patient ID (exact)")
    search.add_argument("--user", help="user, API key or AE title name")
    search.add_argument("--since", help="ISO 8601 time or date, UTC (inclusive)")
    search.add_argument("--until", help="ISO 8601 time or date, UTC (records before it)")
    search.add_argument("--limit", type=int, default=100, help="newest N records (default 100)")
    search.set_defaults(func=_audit_search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomweb-server", description="A DICOMweb-first medical imaging archive."
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    _common(serve)
    serve.add_argument(
        "--host", help=f"address to bind (default 127.0.0.1) [env {env_name('host')}]"
    )
    serve.add_argument("--port", type=int, help=f"port (default 8042) [env {env_name('port')}]")
    serve.add_argument(
        "--workers", type=int, help=f"HTTP worker processes (default 1) [env {env_name('workers')}]"
    )
    serve.add_argument(
        "--public-base-url",
        help="external URL of the DICOMweb root, used in RetrieveURL and BulkDataURI "
        f"[env {env_name('public_base_url')}]",
    )
    serve.add_argument(
        "--trusted-proxies",
        help="comma-separated addresses/networks whose X-Forwarded-* headers are trusted "
        f"[env {env_name('trusted_proxies')}]",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow serving a non-loopback address without authentication "
        f"[env {env_name('insecure')}]",
    )
    serve.add_argument(
        "--viewer-dir",
        type=Path,
        help="folder of the OHIF build served at / (default: viewer_static/dist of this "
        f"checkout, filled by `make viewer`) [env {env_name('viewer_dir')}]",
    )
    serve.add_argument(
        "--viewer-app-config",
        type=Path,
        help="OHIF app-config.js served in place of the build's (default: "
        f"viewer_static/app-config.js) [env {env_name('viewer_app_config')}]",
    )
    serve.add_argument(
        "--viewer-allowed-origins",
        help="comma-separated origins the viewer may also reach, e.g. your OpenID Connect "
        "provider (added to its Content-Security-Policy) "
        f"[env {env_name('viewer_allowed_origins')}]",
    )
    serve.add_argument(
        "--no-viewer",
        action="store_true",
        help=f"serve the API only, nothing at / [env {env_name('viewer_enabled')}=false]",
    )
    serve.add_argument(
        "--tls-cert", help=f"PEM certificate (chain) for HTTPS [env {env_name('tls_cert')}]"
    )
    serve.add_argument("--tls-key", help=f"PEM private key for HTTPS [env {env_name('tls_key')}]")
    serve.add_argument(
        "--cors-origins",
        help="comma-separated origins allowed by CORS, e.g. https://viewer.example.org "
        f"(default: none, CORS off) [env {env_name('cors_origins')}]",
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    _add_dimse_flags(serve)
    _add_hl7_loop_flags(serve)
    serve.set_defaults(func=_serve)

    imp = sub.add_parser("import", help="bulk-load DICOM files and folders")
    _common(imp)
    imp.add_argument("paths", nargs="+", type=Path, help="files or folders (searched recursively)")
    imp.add_argument("--jobs", "-j", type=int, help="parallel processes (default: CPU count)")
    imp.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    imp.set_defaults(func=_import)

    mig = sub.add_parser("migrate", help="create or upgrade the index schema")
    _common(mig)
    mig.set_defaults(func=_migrate)

    chk = sub.add_parser(
        "check", help="find blobs left by a crash and indexed instances whose blob is missing"
    )
    _common(chk)
    chk.add_argument("--repair", action="store_true", help="remove the unreferenced blobs found")
    chk.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        help="only judge blobs older than this many seconds (default 3600): a younger "
        "one may be a store in flight",
    )
    chk.set_defaults(func=_check)
    _security_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:  # bad settings
        print(f"dicomweb-server: {exc}", file=sys.stderr)
        return 2
    except DicomWebError as exc:  # the index or the data folder cannot be used
        print(f"dicomweb-server: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"dicomweb-server:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
